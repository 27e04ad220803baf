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


def ensure_container_copies(corpus: str, work: str, archives: int = 10) -> tuple[str, str]:
    """The corpus again as `archives` WebDataset tar shards (a brace pattern) and as one
    Parquet file of encoded bytes (row groups of 100, as Hugging Face writes image datasets)."""
    import io
    import tarfile

    import pyarrow as pa
    import pyarrow.parquet as pq

    paths = jpeg_paths(corpus)
    classes = sorted({os.path.basename(os.path.dirname(p)) for p in paths})
    folder = os.path.join(work, f"containers-{len(paths)}")
    pattern = os.path.join(folder, f"data-{{000000..{archives - 1:06d}}}.tar")
    parquet = os.path.join(folder, "images.parquet")
    if os.path.exists(os.path.join(folder, ".complete")):
        return pattern, parquet
    os.makedirs(folder, exist_ok=True)
    for part in range(archives):
        with tarfile.open(os.path.join(folder, f"data-{part:06d}.tar"), "w") as archive:
            for i, path in enumerate(paths[part::archives]):
                key = f"{part:03d}{i:07d}"
                archive.add(path, arcname=f"{key}.jpg")
                label = str(classes.index(os.path.basename(os.path.dirname(path)))).encode()
                info = tarfile.TarInfo(f"{key}.cls")
                info.size = len(label)
                archive.addfile(info, io.BytesIO(label))
    table = pa.table(
        {
            "image": pa.array((open(p, "rb").read() for p in paths), pa.binary()),
            "label": [os.path.basename(os.path.dirname(p)) for p in paths],
        }
    )
    pq.write_table(table, parquet, row_group_size=100)
    open(os.path.join(folder, ".complete"), "w").close()
    return pattern, parquet


def ensure_listing_fixtures(work: str, parquet_rows: int, tar_members: int) -> tuple[str, str]:
    """A Parquet file of `parquet_rows` tiny images and a tar of `tar_members`: for the driver's
    memory while listing, which depends on the count of samples, not their bytes."""
    import tarfile

    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    parquet = os.path.join(work, f"listing-{parquet_rows}.parquet")
    if not os.path.exists(parquet):
        count = parquet_rows
        table = pa.table(
            {
                "image": pa.array(np.full(count, b"\xff\xd8", object), pa.binary()),
                "label": pa.array(np.arange(count) % 1000, pa.int64()),
            }
        )
        pq.write_table(table, parquet, row_group_size=100_000)
    archive_path = os.path.join(work, f"listing-{tar_members}.tar")
    if not os.path.exists(archive_path):
        import io

        with tarfile.open(archive_path + ".partial", "w") as archive:
            for i in range(tar_members):
                info = tarfile.TarInfo(f"{i:09d}.jpg")
                info.size = 2
                archive.addfile(info, io.BytesIO(b"\xff\xd8"))
        os.replace(archive_path + ".partial", archive_path)
    return parquet, archive_path


def cpu_device_line() -> str:
    """What the CPU benchmarks print first: the device they ran on."""
    import platform

    return f"device: CPU only ({os.cpu_count()} cores, {platform.processor() or platform.machine()}); no GPU is used"
