"""Checking shards against what the manifest or a receipt says they are.

Used by `shards verify` over a finished run and by `--resume` to decide which shards to keep.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

from shards.errors import ManifestError
from shards.formats import ShardInfo, get_format
from shards.io.fileio import NotRegularFileError
from shards.io.location import location
from shards.layout.index import run_lineage
from shards.layout.manifest import INDEX, load_manifest
from shards.layout.shard_files import RunFiles
from shards.targets import Targets


@dataclasses.dataclass(frozen=True)
class VerifyReport:
    """The outcome of `verify_dest`: the shards checked and one line per problem found."""

    shards: int
    samples: int
    problems: list[str]

    @property
    def ok(self) -> bool:
        return not self.problems


def shard_problems(
    dest: str,
    info: ShardInfo,
    format_name: str,
    shape: tuple[int, int, int],
    dtype: str,
    targets: Targets,
    *,
    deep: bool = True,
    sizes: Mapping[str, int] | None = None,
) -> list[str]:
    """Everything wrong with one shard in DEST; an empty list when it verifies.

    `deep` also reads every byte for the checksum and, for local files, opens the shard the way a
    reader does (header, dtype, shape); without it only presence and sizes are checked. `sizes`
    (from `Location.sizes()`) saves a lookup per file when many shards are checked.
    """
    place = location(dest)
    problems = []
    for file_name, expected in sorted(info.files.items()):
        try:
            size = sizes.get(file_name) if sizes is not None else place.size(file_name)
        except NotRegularFileError as exc:
            problems.append(f"{info.name}: {file_name} is {exc.strerror}; shards reads only regular files")
            continue
        if size is None:
            problems.append(f"{info.name}: {file_name} is missing")
        elif size != expected.bytes:
            problems.append(f"{info.name}: {file_name} is {size} bytes, expected {expected.bytes}")
        elif deep and place.digest(file_name, expected.algorithm) != expected:
            problems.append(f"{info.name}: {file_name} checksum mismatch ({expected.algorithm} differs)")
    folder = place.local_root  # headers are checked on local files; objects by size and hash
    if not problems and deep and folder is not None:
        try:
            handles = RunFiles(folder, [info]).open(0, info)
            try:
                get_format(format_name).open_reader(handles, info, shape, dtype, targets)
            finally:
                for handle in handles.values():
                    handle.close()
        except ManifestError as exc:
            problems.append(f"{info.name}: {exc}")
    return problems


def verify_dest(dest: str) -> VerifyReport:
    """Check every shard of a finished run against the manifest, and the index against both.

    Raises:
        ManifestError: DEST has no readable manifest (nothing to verify against).
    """
    manifest = load_manifest(dest, allow_incomplete=True)
    problems = [] if manifest.complete else [f"{dest}: the manifest marks the run incomplete"]
    names = [s.name for s in manifest.shards]
    if len(set(names)) != len(names):
        problems.append(f"{dest}: the manifest lists a shard twice")
    for info in manifest.shards:
        problems += shard_problems(dest, info, manifest.format, manifest.shape, manifest.dtype, manifest.targets)
    try:
        opened = location(dest).parquet_file(INDEX)  # one open: its lineage and its rows
        try:
            run_lineage(dest, manifest, opened)
        except ManifestError as exc:
            problems.append(str(exc))
        index = opened.read(columns=["shard", "row"])
        counts = index.column("shard").combine_chunks().dictionary_encode().value_counts().to_pylist()
        by_name = {str(item["values"]): item["counts"] for item in counts}
        for info in manifest.shards:
            if by_name.get(info.name, 0) != info.count:
                problems.append(
                    f"{info.name}: index.parquet lists {by_name.get(info.name, 0)} rows, the manifest {info.count}"
                )
        if index.num_rows != manifest.count:
            problems.append(f"index.parquet: {index.num_rows} rows, the manifest counts {manifest.count}")
    except (OSError, ValueError) as exc:
        problems.append(f"index.parquet: unreadable ({str(exc).splitlines()[0]})")
    return VerifyReport(len(manifest.shards), manifest.count, problems)
