"""`python -m bench driver`: driver and reader memory as the number of samples grows (issue 32).

The same WebDataset tar corpus (and the same images as a folder of class folders) at 20k, 200k
and more samples, preprocessed by the `shards` command at `--size 64` with default options, as a
user runs it. The driver reports its own peak (VmHWM, and the peak of RssAnon sampled every
50 ms, from /proc/self/status) when it exits, median of 3 runs; bytes a sample are the growth between two sizes
over the samples added. A reader reports the same for `shards.open` and a whole shuffled epoch
(RssAnon: the shards' memory-mapped pages are the page cache's, not the reader's). `shards
plan` on a generated Parquet list of 100M paths (which need not exist) shows the listing and
planning at a scale this machine cannot preprocess; the 1B row projects from the measured slope.
`--append` in the same run: time to add 20k samples to a 20k run against a fresh run of them.
`--counts 20000,200000,2000000 --kinds tar --runs 1` adds the 2M row (7 GB of archives and 25 GB
of shards under --work); growth is shown between each two sizes.
"""

from __future__ import annotations

import io
import itertools
import json
import os
import subprocess
import sys
import tarfile
import time

import numpy as np

from bench.corpus import cpu_device_line

PER_ARCHIVE = 10_000
RUNS = 3  # driver runs a size; each figure is their median
SIDE = 72  # pixels of the stored JPEGs: small, so the bench measures the driver, not decoding


def _jpeg(seed: int) -> bytes:
    from PIL import Image

    rng = np.random.default_rng(seed)
    base = rng.integers(0, 255, (9, 9, 3), dtype=np.uint8)
    image = Image.fromarray(base).resize((SIDE, SIDE), Image.BILINEAR)
    out = io.BytesIO()
    image.save(out, "JPEG", quality=85)
    return out.getvalue()


def _archive(job: tuple[str, int, int]) -> str:
    path, first, count = job
    if os.path.exists(path):
        return path
    images = [_jpeg(i) for i in range(64)]  # 64 distinct images, repeated: encoding is not the subject
    with tarfile.open(path + ".partial", "w") as archive:
        for i in range(first, first + count):
            for suffix, data in ((".jpg", images[i % 64]), (".cls", str(i % 10).encode())):
                info = tarfile.TarInfo(f"{i:09d}{suffix}")
                info.size = len(data)
                archive.addfile(info, io.BytesIO(data))
    os.replace(path + ".partial", path)
    return path


def ensure_tars(work: str, count: int) -> str:
    """`count` samples as tar archives of PER_ARCHIVE samples; the brace pattern naming them.
    Archives are shared between counts (the 20k corpus is the first two of the 200k one)."""
    import concurrent.futures

    folder = os.path.join(work, "driver-tars")
    os.makedirs(folder, exist_ok=True)
    archives = (count + PER_ARCHIVE - 1) // PER_ARCHIVE
    jobs = [
        (os.path.join(folder, f"data-{i:06d}.tar"), i * PER_ARCHIVE, min(PER_ARCHIVE, count - i * PER_ARCHIVE))
        for i in range(archives)
    ]
    assert count % PER_ARCHIVE == 0, "counts are whole archives"
    with concurrent.futures.ProcessPoolExecutor(os.cpu_count() or 1) as pool:
        list(pool.map(_archive, jobs))
    return os.path.join(folder, f"data-{{000000..{archives - 1:06d}}}.tar")


def ensure_folder(work: str, count: int) -> str:
    """`count` samples as a folder of 10 class folders (64 distinct JPEGs, repeated)."""
    folder = os.path.join(work, f"driver-folder-{count}")
    marker = os.path.join(folder, ".complete")
    if os.path.exists(marker):
        return folder
    images = [_jpeg(i) for i in range(64)]
    for label in range(10):
        os.makedirs(os.path.join(folder, f"class{label}"), exist_ok=True)
    for i in range(count):
        with open(os.path.join(folder, f"class{i % 10}", f"{i:09d}.jpg"), "wb") as handle:
            handle.write(images[i % 64])
    open(marker, "w").close()
    return folder


def run_driver(src: str, dest: str) -> dict:
    """`shards preprocess SRC DEST --size 64` in a fresh process that reports its own peak."""
    import shutil

    shutil.rmtree(dest, ignore_errors=True)
    code = (
        "import sys, json, atexit\n"
        "from bench.procmem import status\n"
        "from shards.cli import main\n"
        "peak = [0]\n"
        "import threading, time\n"
        "def watch():\n"
        "    while True:\n"
        "        peak[0] = max(peak[0], status().get('RssAnon', 0)); time.sleep(0.05)\n"
        "threading.Thread(target=watch, daemon=True).start()\n"
        "code = main(['-q', 'preprocess', sys.argv[1], sys.argv[2], '--size', '64'])\n"
        "s = status()\n"
        "print('RESULT ' + json.dumps({'code': code, 'peak_rss': s.get('VmHWM', 0), "
        "'peak_rss_anon': max(peak[0], s.get('RssAnon', 0))}), flush=True)\n"
    )
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", code, src, dest], capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - started
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    if done.returncode or not lines:
        raise SystemExit(f"driver run failed ({done.returncode}): {done.stderr.strip().splitlines()[-3:]}")
    result = json.loads(lines[-1][len("RESULT ") :])
    manifest = json.load(open(os.path.join(dest, "manifest.json")))
    result.update(seconds=seconds, count=int(manifest["count"]))
    return result


READER = """
import json, sys, threading, time
from bench.procmem import status
import shards
peak = [0]
def watch():
    while True:
        peak[0] = max(peak[0], status().get("RssAnon", 0)); time.sleep(0.05)
threading.Thread(target=watch, daemon=True).start()
ds = shards.open(sys.argv[1])
seen = 0
for images, labels in ds.batches(256, shuffle=True, seed=0, epoch=1):
    seen += len(images)
s = status()
print("RESULT " + json.dumps({"count": seen, "peak_rss": s.get("VmHWM", 0),
      "peak_rss_anon": max(peak[0], s.get("RssAnon", 0))}), flush=True)
"""


def run_reader(dest: str) -> dict:
    """A whole shuffled epoch of DEST in a fresh process that reports its own peak."""
    done = subprocess.run([sys.executable, "-c", READER, dest], capture_output=True, text=True, check=False)
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    if done.returncode or not lines:
        raise SystemExit(f"reader failed ({done.returncode}): {done.stderr.strip().splitlines()[-3:]}")
    return json.loads(lines[-1][len("RESULT ") :])


def ensure_path_list(work: str, rows: int) -> str:
    """A Parquet list of `rows` ImageNet-like paths with class names, written a row group at a
    time (the paths need not exist: `shards plan` never opens them)."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    path = os.path.join(work, f"paths-{rows}.parquet")
    if os.path.exists(path):
        return path
    group = 1_000_000
    schema = pa.schema([("path", pa.string()), ("label", pa.string())])
    with pq.ParquetWriter(path + ".partial", schema) as writer:
        for begin in range(0, rows, group):
            index = pa.array(np.arange(begin, min(rows, begin + group)))
            cls = pc.cast(pc.bit_wise_and(index, 1023), pa.string())  # 1,024 classes
            names = pc.binary_join_element_wise("/data/train/n", cls, "/img_", pc.cast(index, pa.string()), ".JPEG", "")
            labels = pc.binary_join_element_wise("n", cls, "")
            writer.write_table(pa.table({"path": names, "label": labels}, schema))
    os.replace(path + ".partial", path)
    return path


def run_plan(src: str) -> dict:
    """`shards plan SRC` in a fresh process that reports its own peak."""
    code = (
        "import sys, json\n"
        "from bench.procmem import status\n"
        "from shards.cli import main\n"
        "code = main(['plan', sys.argv[1]])\n"
        "print('RESULT ' + json.dumps({'code': code, 'peak_rss': status().get('VmHWM', 0)}), flush=True)\n"
    )
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", code, src], capture_output=True, text=True, check=False)
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    if done.returncode or not lines:
        raise SystemExit(f"plan failed ({done.returncode}): {done.stderr.strip().splitlines()[-3:]}")
    result = json.loads(lines[-1][len("RESULT ") :])
    result["seconds"] = time.perf_counter() - started
    return result


def append_times(work: str) -> dict:
    """Seconds of `--append` of 20k samples (archives 2-3) to a 20k run (archives 0-1), and of
    a fresh run of the same 20k samples alone; whole processes, as a user waits for them."""
    ensure_tars(work, 4 * PER_ARCHIVE)
    folder = os.path.join(work, "driver-tars")
    base = os.path.join(folder, "data-{000000..000001}.tar")
    more = os.path.join(folder, "data-{000002..000003}.tar")
    dest, fresh = os.path.join(work, "append-out"), os.path.join(work, "fresh-out")
    run_driver(base, dest)
    started = time.perf_counter()
    appended = subprocess.run(
        [sys.executable, "-m", "shards.cli", "-q", "preprocess", more, dest, "--append"],
        capture_output=True,
        text=True,
        check=False,
    )
    append_seconds = time.perf_counter() - started
    if appended.returncode:
        raise SystemExit(f"append failed: {appended.stderr.strip().splitlines()[-1:]}")
    fresh_run = run_driver(more, fresh)
    count = int(json.load(open(os.path.join(dest, "manifest.json")))["count"])
    return {"append_seconds": append_seconds, "fresh_seconds": fresh_run["seconds"], "count_after": count}


def mib(value: float) -> str:
    return f"{value / 2**20:7.1f} MiB"


def main(argv: list[str]) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m bench driver", description=__doc__.splitlines()[0])
    parser.add_argument("--counts", default="20000,200000", help="sample counts (whole archives of 10k)")
    parser.add_argument("--plan-rows", type=int, default=100_000_000, help="rows of the Parquet path list (0: skip)")
    parser.add_argument("--kinds", default="tar,folder", help="sources to run: tar, folder or both")
    parser.add_argument("--runs", type=int, default=RUNS, help="driver runs a size (the median is shown)")
    parser.add_argument("--append", action=argparse.BooleanOptionalAction, default=True, help="time --append")
    parser.add_argument("--work", default="/tmp/shards-bench-driver")
    args = parser.parse_args(argv)
    counts = [int(c) for c in args.counts.split(",")]
    kinds = [kind for kind in args.kinds.split(",") if kind]
    if not set(kinds) <= {"tar", "folder"}:
        parser.error(f"--kinds: tar or folder, got {args.kinds!r}")
    os.makedirs(args.work, exist_ok=True)
    print(cpu_device_line())
    rows: dict[tuple[str, int], dict] = {}
    print(
        f"{'source':<7}{'samples':>11}  {'wall':>8}  {'us/img':>7}  {'driver VmHWM':>13}  {'RssAnon':>11}  "
        f"{'reader VmHWM':>13}  {'RssAnon':>11}"
    )
    for kind in kinds:
        for count in counts:
            src = ensure_tars(args.work, count) if kind == "tar" else ensure_folder(args.work, count)
            dest = os.path.join(args.work, "out")
            # Median of RUNS: Ray's own threads move a driver's peak by a few MB from run to run.
            runs = sorted((run_driver(src, dest) for _ in range(args.runs)), key=lambda r: r["peak_rss_anon"])
            driver = dict(runs[len(runs) // 2], seconds=sorted(r["seconds"] for r in runs)[len(runs) // 2])
            driver["peak_rss"] = sorted(r["peak_rss"] for r in runs)[len(runs) // 2]
            reader = run_reader(dest)
            assert driver["count"] == reader["count"] == count, (driver["count"], reader["count"], count)
            rows[(kind, count)] = {"driver": driver, "reader": reader}
            print(
                f"{kind:<7}{count:>11,}  {driver['seconds']:7.1f}s  {driver['seconds'] / count * 1e6:7.1f}  "
                f"{mib(driver['peak_rss']):>13}  {mib(driver['peak_rss_anon']):>11}  "
                f"{mib(reader['peak_rss']):>13}  {mib(reader['peak_rss_anon']):>11}",
                flush=True,
            )
    slopes = {}
    for low, high in itertools.pairwise(counts):
        print(f"growth a sample, {low:,} -> {high:,} (the budget: 16 bytes):")
        for kind in kinds:
            r_low, r_high = rows[(kind, low)], rows[(kind, high)]
            for side in ("driver", "reader"):
                for key in ("peak_rss", "peak_rss_anon"):
                    slope = (r_high[side][key] - r_low[side][key]) / (high - low)
                    slopes[(kind, side, key)] = slope
                    print(f"  {kind:<7}{side:<7}{key:<14}{slope:7.1f} B")
            ratio = (r_high["driver"]["seconds"] / high) / (r_low["driver"]["seconds"] / low)
            print(f"  {kind:<7}per-image time {high:,} / {low:,}: {ratio:.2f}x")
    if len(counts) > 1:
        high = counts[-1]
        for kind in kinds:
            peak = rows[(kind, high)]["driver"]["peak_rss"]
            slope = max(0.0, slopes[(kind, "driver", "peak_rss")])
            projected = (peak + slope * (10**9 - high)) / 2**30
            print(f"  projected driver VmHWM at 1B ({kind}, the last slope): {projected:.2f} GiB")
    if args.plan_rows:
        listed = ensure_path_list(args.work, args.plan_rows)
        plan = run_plan(listed)
        print(
            f"shards plan on a {args.plan_rows:,}-row Parquet list: {plan['seconds']:.0f} s, "
            f"VmHWM {mib(plan['peak_rss'])}"
        )
    if not args.append:
        return 0
    times = append_times(args.work)
    print(
        f"--append of 20,000 samples to a 20,000-sample run: {times['append_seconds']:.1f} s; a fresh run of them "
        f"alone {times['fresh_seconds']:.1f} s ({times['append_seconds'] / times['fresh_seconds']:.2f}x); "
        f"{times['count_after']:,} samples after"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
