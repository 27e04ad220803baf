"""How much memory this process can still use: the machine's, or its cgroup's if less."""

from __future__ import annotations

import os

#: Share of the memory available that prediction batches or an in-memory dataset take when
#: no budget is given.
BUDGET_SHARE = 0.5


def default_budget() -> int:
    """Bytes a memory-hungry feature may take when the user set no budget."""
    return int(available_memory() * BUDGET_SHARE)


def available_memory() -> int:
    """What the machine has available, or what this process's cgroup still allows if less."""
    available = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    try:
        with open("/proc/meminfo", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    available = int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        with open("/sys/fs/cgroup/memory.max", encoding="ascii") as limit_file:
            limit = limit_file.read().strip()
        with open("/sys/fs/cgroup/memory.current", encoding="ascii") as current_file:
            current = int(current_file.read().strip())
        if limit != "max":
            available = min(available, int(limit) - current)
    except (OSError, ValueError):
        pass
    return max(available, 1)
