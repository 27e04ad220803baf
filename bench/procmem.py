"""Memory as the operating system reports it: /proc/<pid>/status (VmHWM, RssAnon)."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable


def status(pid: int | str = "self") -> dict[str, int]:
    """The kB fields of /proc/<pid>/status, in bytes."""
    values = {}
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as handle:
            for line in handle:
                key, _, rest = line.partition(":")
                parts = rest.split()
                if len(parts) == 2 and parts[1] == "kB":
                    values[key] = int(parts[0]) * 1024
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        pass
    return values


def ray_worker_pids() -> list[int]:
    """Pids of Ray worker processes (their titles start with `ray::`)."""
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as handle:
                    if handle.read(5) == b"ray::":
                        pids.append(int(entry))
            except OSError:
                continue
    return pids


class PeakSampler:
    """Samples RssAnon of some processes every `interval` seconds and keeps the peak of each kind:
    of the largest process, or with `summed` of the group's processes together."""

    def __init__(
        self, groups: dict[str, Callable[[], list[int | str]]], interval: float = 0.1, *, summed: bool = False
    ) -> None:
        self.groups, self.interval, self.summed = groups, interval, summed
        self.peaks = dict.fromkeys(groups, 0)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> PeakSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()

    def _sample(self) -> None:
        for name, pids in self.groups.items():
            sizes = [status(pid).get("RssAnon", 0) for pid in pids()]
            now = sum(sizes) if self.summed else max(sizes, default=0)
            self.peaks[name] = max(self.peaks[name], now)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()


def descendants(pid: int | str = "self") -> list[int]:
    """Pids of a process's children, their children and so on (a DataLoader's workers)."""
    root = os.getpid() if pid == "self" else int(pid)
    found, queue = [], [root]
    while queue:
        current = queue.pop()
        try:
            with open(f"/proc/{current}/task/{current}/children", encoding="ascii") as handle:
                children = [int(child) for child in handle.read().split()]
        except OSError:
            children = []
        found += children
        queue += children
    return found
