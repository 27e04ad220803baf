"""Listings held in parts on local disk (shards.sources.parts): what the driver keeps of a
listing does not grow with it, and nothing is lost or mislabelled on the way through the parts,
the shuffled plan's buckets and the commit's index rows."""

import collections
import gc
import io
import tarfile
import tracemalloc

import numpy as np
import pyarrow as pa
import pytest

from shards.layout.plan import plan_shards
from shards.sources import list_sources, parts
from shards.sources.parts import PART_ROWS, PartedListing

ROWS = 40_000  # three parts of a path list


def _path_list(tmp_path) -> tuple[str, list[str]]:
    """A CSV of ROWS paths (listing never opens them) whose class is in the path; the first
    part holds only classes b and d, so later parts' classes renumber the first's."""
    labels = ["b" if i % 2 else "d" for i in range(PART_ROWS)] + ["abcd"[i % 4] for i in range(ROWS - PART_ROWS)]
    path = tmp_path / "list.csv"
    path.write_text("path,label\n" + "".join(f"/data/{label}/{i:06d}.jpg,{label}\n" for i, label in enumerate(labels)))
    return str(path), labels


@pytest.mark.parametrize("least", [parts.REGROUP_ROWS, 1000])
def test_a_path_list_in_parts_plans_every_input_once_with_its_label(tmp_path, monkeypatch, least):
    """The regroup's budget in groups of buckets: 3 groups at the default least budget, 40 (and
    3 x 40 scattered pieces) at 1,000 inputs."""
    monkeypatch.setattr(parts, "REGROUP_ROWS", least)
    monkeypatch.setattr(parts, "REGROUP_GROWTH", 0)
    src, labels = _path_list(tmp_path)
    listing = list_sources(src)
    assert isinstance(listing, PartedListing) and listing.parts == 3 and len(listing) == ROWS
    assert listing.run_targets.classes == ["a", "b", "c", "d"]
    plan = plan_shards(len(listing), 1000, seed=5, shuffle=not listing.keeps_order)
    planned = listing.planned(plan.order, plan.samples_per_shard)
    seen = []
    for spec in plan:
        rows = planned.shard_rows(spec.positions)
        assert [name.split("/")[2] for name in rows.names] == [listing.run_targets.classes[v] for v in rows.values]
        assert [int(name[-10:-4]) for name in rows.names] == spec.positions.tolist()
        assert planned.index_rows(spec.positions).sources.to_pylist() == rows.names
        seen.extend(rows.names)
    assert len(seen) == len(set(seen)) == ROWS
    counts = planned.stats(np.arange(ROWS))[0]["counts"]
    assert counts == [collections.Counter(labels)[c] for c in "abcd"]
    # The first shard mixes the listing: inputs from every part, not the first part's alone.
    assert (plan[0].positions >= PART_ROWS).mean() > 0.4


def _tar(path, labels: list[int], first: int) -> None:
    with tarfile.open(path, "w") as archive:
        for i, label in enumerate(labels):
            for suffix, data in ((".jpg", f"image {first + i}".encode()), (".cls", str(label).encode())):
                info = tarfile.TarInfo(f"{first + i:06d}{suffix}")
                info.size = len(data)
                archive.addfile(info, io.BytesIO(data))


def test_archives_listed_apart_merge_their_classes_and_a_shard_reads_across_them(tmp_path):
    _tar(tmp_path / "data-000000.tar", [0, 1, 2] * 3, 0)
    _tar(tmp_path / "data-000001.tar", [4, 3, 0] * 3, 9)
    listing = list_sources(str(tmp_path / "data-{000000..000001}.tar"))
    assert listing.parts == 2 and listing.run_targets.classes == ["0", "1", "2", "3", "4"]
    positions = np.arange(5, 14)  # the last 4 of the first archive, the first 5 of the second
    rows = listing.shard_rows(positions)
    assert rows.values.tolist() == [2, 0, 1, 2, 4, 3, 0, 4, 3]
    assert list(rows.inputs.read(2**20)) == [f"image {i}".encode() for i in positions]
    assert rows.names[0].endswith("data-000000.tar#000005.jpg") and rows.names[-1].endswith("#000013.jpg")


def test_a_listing_in_parts_keeps_nothing_a_sample_on_the_driver(tmp_path):
    """12,000 samples in 6 archives. Held in memory they took ~100 bytes each (names, byte
    ranges, labels): over 1 MB. In parts the driver keeps a few numbers an archive."""
    for part in range(6):
        _tar(tmp_path / f"data-{part:06d}.tar", [part % 3] * 2000, part * 2000)
    src = str(tmp_path / "data-{000000..000005}.tar")
    list_sources(src)  # imports and first-use allocations out of the measure
    gc.collect()
    arrow_before = pa.total_allocated_bytes()
    tracemalloc.start()
    listing = list_sources(src)
    gc.collect()
    kept, _ = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    arrow_kept = pa.total_allocated_bytes() - arrow_before
    assert len(listing) == 12_000 and listing.parts == 6
    assert kept + arrow_kept < 150_000, (kept, arrow_kept)


INLINE_LIMIT = 100 * 1024  # Ray's max_direct_call_object_size: larger values go to the object store


def test_what_crosses_ray_for_an_archive_stays_under_the_inline_limit_and_comes_back_whole(tmp_path):
    """An archive's index (10,000 members) and a 3,125-row shard's task cross Ray packed: each
    under the size Ray returns or sends inline, so the driver maps no object-store pages for
    them, and each unpacks to exactly what was packed."""
    from shards.options import PreprocessOptions
    from shards.sources.tar import _unpacked, index_archive, index_archive_packed
    from shards.write.task import PackedTask, ShardTask

    archive = tmp_path / f"{'long-folder-name/' * 4}data-000000.tar"
    archive.parent.mkdir(parents=True)
    _tar(archive, [i % 10 for i in range(10_000)], 0)
    job = (str(archive), ("label",))
    packed = index_archive_packed(job)
    assert len(packed) < INLINE_LIMIT and _unpacked(packed).equals(index_archive(job))

    listing = list_sources(str(archive))
    positions = np.arange(1000, 4125)
    rows = listing.shard_rows(positions)
    task = ShardTask(
        str(tmp_path / "out"), "shard-00000", positions, rows.names, listing.run_targets, rows.values,
        rows.problems, rows.inputs, PreprocessOptions(size=16), "key",
    )  # fmt: skip
    data = PackedTask.of(task).data
    assert len(data) < INLINE_LIMIT
    back = PackedTask(data).unpack()
    assert list(back.names) == list(task.names) and back.positions.tolist() == positions.tolist()
    assert back.values.tolist() == task.values.tolist() and back.options == task.options
    assert list(back.inputs.read(2**20)) == [f"image {i}".encode() for i in positions]
