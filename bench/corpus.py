"""Benchmark corpora: ImageNet-like JPEGs (300-640 px, quality 75-95) and camera-sized ones."""

from __future__ import annotations

import concurrent.futures
import os

from shards.synthetic import make_image_folder


def ensure_corpus(
    root: str, count: int, *, sizes: tuple[int, int], classes: int = 10, seed: int = 0, processes: int | None = None
) -> str:
    """Generate `count` JPEGs under root (once; reused while the count matches)."""
    marker = os.path.join(root, f".complete-{count}")
    if os.path.exists(marker):
        return root
    processes = processes or os.cpu_count() or 1
    counts = [count // processes + (i < count % processes) for i in range(processes)]
    firsts = [sum(counts[:i]) for i in range(processes)]
    with concurrent.futures.ProcessPoolExecutor(processes) as pool:
        list(
            pool.map(
                _make,
                [root] * processes,
                counts,
                firsts,
                [seed + i for i in range(processes)],
                [sizes] * processes,
                [classes] * processes,
            )
        )
    open(marker, "w").close()
    return root


def _make(root: str, count: int, first: int, seed: int, sizes: tuple[int, int], classes: int) -> None:
    make_image_folder(root, count, classes=classes, sizes=sizes, seed=seed, first_index=first)


def jpeg_paths(root: str) -> list[str]:
    return sorted(
        os.path.join(folder, name) for folder, _, names in os.walk(root) for name in names if name.endswith(".jpg")
    )
