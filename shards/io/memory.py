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


M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter
MMAP_THRESHOLD = 64 * 1024  # bytes: larger blocks are mapped alone, and unmapped when freed
ARROW_POOL = "ARROW_DEFAULT_MEMORY_POOL"  # read by Arrow C++ once, when pyarrow is imported


def release_freed_memory() -> None:
    """Make this process hand freed memory back to the kernel: Arrow allocates from the system
    allocator, and glibc maps every block of MMAP_THRESHOLD bytes or more on its own.

    The driver of a run loads listing parts one after another on several threads (the listing
    thread, the run's, the commit's). Arrow's default mimalloc pool keeps what each thread
    freed, and glibc's per-thread arenas keep freed blocks between live ones: a 200,000-sample
    tar run's driver peaked 17 MB (98 bytes a sample) above a 20,000-sample one with neither
    setting, 4.5 MB (26 bytes) with the first alone, and within 1 MB with both.

    Arrow's C++ code (the Parquet writer of index.parquet among it) takes the pool that
    ARROW_DEFAULT_MEMORY_POOL names when pyarrow is imported; `pa.set_memory_pool` reaches only
    what pyarrow's Python calls allocate. Writing a 21,845-row shard's index kept 22 MB in
    mimalloc's arena after the writer closed, 1 MB with the system pool. So the variable is set
    around pyarrow's import when this process has not imported it yet, and taken away after it:
    Ray's workers, which inherit the driver's environment, keep Arrow's own pool. The driver
    makes few large allocations, so their speed does not matter. Called by the `shards` command
    for its own process only: a program that calls `shards.preprocess` keeps its allocators (or
    starts with ARROW_DEFAULT_MEMORY_POOL=system and MALLOC_MMAP_THRESHOLD_=65536).
    """
    import ctypes
    import ctypes.util
    import sys

    chosen = "pyarrow" not in sys.modules and ARROW_POOL not in os.environ
    if chosen:
        os.environ[ARROW_POOL] = "system"
    try:
        import pyarrow as pa
    finally:
        if chosen:
            del os.environ[ARROW_POOL]
    pa.set_memory_pool(pa.system_memory_pool())
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
        if libc is not None and hasattr(libc, "mallopt"):
            libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)
    except OSError:  # not glibc (musl, macOS): their allocators return memory their own way
        pass
