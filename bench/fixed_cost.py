"""`python -m bench fixed-cost`: what a small run costs as a user sees it, whole process, against a bare Pool.

Each row is one process started from the shell's point of view (interpreter start, imports,
Ray's start and shutdown, the work), timed from outside by this script:
- `shards preprocess SRC DEST` (the CLI at default options, `--size 224`), on 10 ImageNet-sized
  JPEGs and on 400 camera photos (3000-4000 px), with the time its own summary prints beside the
  wall time measured here (they should agree: the summary counts the whole process);
- `python -m bench.peers pool SRC DEST full`: a bare `multiprocessing.Pool` of full Pillow
  decodes and a bilinear fit into a .npy memmap, the floor a hand-written script reaches.

The ratio is shards' wall time over the pool's: below 1 is faster. Each row is the median of
`--rounds` runs, interleaved.

Then a first run as a fresh install makes it: numba's cache of the resampler removed (what a new
install or a new node has), against the run that follows it (the cache in place), on the small
set, `--rounds` pairs.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import time

from bench.corpus import cpu_device_line, ensure_corpus

SHARDS = [sys.executable, "-m", "shards.cli"]
SUMMARY_TIME = re.compile(r"^time\s+([\d.]+) s, the whole process", re.MULTILINE)


def wall(command: list[str]) -> tuple[float, str]:
    """Seconds the command's process took, from outside, and its output."""
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    begun = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    seconds = time.perf_counter() - begun
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed: {result.stderr.strip().splitlines()[-1:]}")
    return seconds, result.stdout


def measure(src: str, work: str, rounds: int) -> dict:
    """Median wall seconds of shards and of the bare pool on `src`, and shards' own figure."""
    shards_walls, summaries, pool_walls = [], [], []
    for _ in range(rounds):
        dest = os.path.join(work, "fixed-cost-out")
        shutil.rmtree(dest, ignore_errors=True)
        seconds, output = wall([*SHARDS, "preprocess", src, dest, "--size", "224"])
        shards_walls.append(seconds)
        found = SUMMARY_TIME.search(output)
        summaries.append(float(found.group(1)) if found else float("nan"))
        pool_dest = os.path.join(work, "fixed-cost-pool")
        seconds, _ = wall([sys.executable, "-m", "bench.peers", "pool", src, pool_dest, "full"])
        pool_walls.append(seconds)
    shards_wall, pool_wall = statistics.median(shards_walls), statistics.median(pool_walls)
    return {
        "shards_wall_seconds": shards_wall,
        "shards_summary_seconds": statistics.median(summaries),
        "bare_pool_wall_seconds": pool_wall,
        "ratio_shards_vs_bare_pool": shards_wall / pool_wall,
        "rounds": {"shards": shards_walls, "summary": summaries, "pool": pool_walls},
    }


def numba_cache_files() -> list[str]:
    """The files numba caches the resampler's compiled loops in, beside its module."""
    from shards.write import resample_kernels

    folder = os.path.join(os.path.dirname(resample_kernels.__file__), "__pycache__")
    if not os.path.isdir(folder):
        return []
    return [
        os.path.join(folder, name)
        for name in os.listdir(folder)
        if name.startswith("resample_kernels.") and name.endswith((".nbi", ".nbc"))
    ]


def first_run(src: str, work: str, rounds: int) -> dict:
    """Median wall seconds of a run without numba's cache and of the run after it."""
    firsts, seconds_ = [], []
    dest = os.path.join(work, "fixed-cost-first")
    for _ in range(rounds):
        for path in numba_cache_files():
            os.remove(path)
        for walls in (firsts, seconds_):
            shutil.rmtree(dest, ignore_errors=True)
            walls.append(wall([*SHARDS, "preprocess", src, dest, "--size", "224"])[0])
    first, second = statistics.median(firsts), statistics.median(seconds_)
    return {"first": first, "second": second, "ratio": first / second, "rounds": {"first": firsts, "second": seconds_}}


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench fixed-cost", description=__doc__.splitlines()[0])
    parser.add_argument("--small", type=int, default=10, help="ImageNet-sized JPEGs of the small run (default 10)")
    parser.add_argument("--camera", type=int, default=400, help="camera photos of the large run (default 400)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--work", default="/tmp/shards-bench")
    args = parser.parse_args(argv)
    print(cpu_device_line())
    small = ensure_corpus(os.path.join(args.work, f"imagenet-{args.small}"), args.small, sizes=(300, 640))
    camera = ensure_corpus(os.path.join(args.work, f"camera-{args.camera}"), args.camera, sizes=(3000, 4000), classes=2)
    print("| images | shards wall | its summary says | bare Pool, full decode | shards / Pool |")
    print("|---|---|---|---|---|")
    for label, src in ((f"{args.small} ImageNet-sized", small), (f"{args.camera} camera (3000-4000 px)", camera)):
        row = measure(src, args.work, args.rounds)
        print(
            f"| {label} | {row['shards_wall_seconds']:.2f} s | {row['shards_summary_seconds']:.2f} s | "
            f"{row['bare_pool_wall_seconds']:.2f} s | {row['ratio_shards_vs_bare_pool']:.2f}x |",
            flush=True,
        )
    row = first_run(small, args.work, args.rounds)
    print(
        f"\nfirst run of a fresh install (numba's cache removed) {row['first']:.2f} s, the run after it "
        f"{row['second']:.2f} s: {row['ratio']:.2f}x (runs: {row['rounds']})",
        flush=True,
    )
    return 0
