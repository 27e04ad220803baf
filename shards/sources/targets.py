"""Target columns as a listing holds them: the column's type decides the kind.

- integers -> class, classes "0".."K-1"; names -> class, classes sorted; -1 where empty;
- lists of names or integers -> multi-label, classes the sorted union (integers: "0".."max");
- floats, or fixed-length lists of floats -> regression.

In a CSV a list is written as a JSON list in its cell: `["cat", "dog"]` or `[0.5, 1.5]` (quoted as
CSV quotes any cell with commas: `"[""cat"", ""dog""]"`). A list column is held as Arrow lists
of class indices, so ten million samples with a few tags each cost a few bytes a sample, not a
multi-hot row; a task densifies its own shard's rows only.

A regression target that is empty or NaN cannot be trained on: that sample becomes a reject
with the reason, found while listing. Everything else that is wrong with a column (mixed types,
lists of varying length, a cell that does not parse) refuses the run in one line before any work.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from collections.abc import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from shards.errors import ConfigError, SourceError
from shards.targets import Target, Targets, arrow_values, multi_hot

UNLABELED = -1


@dataclasses.dataclass(frozen=True)
class TargetColumn:
    """One target's values for every listed input.

    Attributes:
        target: its name, kind and classes.
        values: class: int32 [N]; regression: float32 [N] or [N, width]; multi-label: Arrow
            lists of int32 class indices.
    """

    target: Target
    values: np.ndarray | pa.Array

    def take(self, positions: np.ndarray) -> np.ndarray:
        """The stored form of the values at `positions` ([n] or [n, width])."""
        if self.target.kind != "multilabel":
            return np.asarray(self.values)[positions]
        return multi_hot(self.values.take(pa.array(positions)), self.target.width)

    def index_column(self, positions: np.ndarray) -> pa.Array:
        """The values at `positions` as index.parquet holds them."""
        if self.target.kind == "multilabel":
            return self.values.take(pa.array(positions))
        values = np.asarray(self.values)[positions]
        return arrow_values(values) if self.target.kind == "regression" else pa.array(values)

    def stats(self, positions: np.ndarray) -> dict[str, list[float] | list[int]]:
        """What `shards inspect` shows of the written samples: counts per class, or the
        minimum, mean and maximum of each regression value."""
        kind = self.target.kind
        if kind == "class":
            labels = np.asarray(self.values)[positions]
            return {"counts": np.bincount(labels[labels >= 0], minlength=len(self.target.classes)).tolist()}
        if kind == "multilabel":
            flat = pc.list_flatten(self.values.take(pa.array(positions))).to_numpy(zero_copy_only=False)
            return {"counts": np.bincount(flat, minlength=self.target.width).tolist()}
        if not len(positions):
            return {"min": [], "mean": [], "max": []}
        values = np.asarray(self.values)[positions].reshape(len(positions), -1).astype(np.float64)
        return {
            "min": values.min(axis=0).tolist(),
            "mean": values.mean(axis=0).tolist(),
            "max": values.max(axis=0).tolist(),
        }


@dataclasses.dataclass(frozen=True)
class ListingTargets:
    """Every target column of a listing, in the order the label columns were named."""

    columns: tuple[TargetColumn, ...]

    @classmethod
    def of_classes(cls, labels: np.ndarray, classes: Sequence[str], name: str = "label") -> ListingTargets:
        """One class target (folders, tar `.cls` members)."""
        target = Target(name, "class", tuple(classes))
        return cls((TargetColumn(target, np.asarray(labels, np.int32)),))

    @classmethod
    def unlabeled(cls, count: int) -> ListingTargets:
        """One class target with no classes: every input unlabeled."""
        return cls.of_classes(np.full(count, UNLABELED, np.int32), [])

    @property
    def targets(self) -> Targets:
        return Targets(tuple(column.target for column in self.columns))

    def rows(self, positions: np.ndarray) -> np.ndarray:
        """The stored targets of the inputs at `positions`, one row each (what a task writes)."""
        out = self.targets.empty(len(positions))
        if len(self.columns) == 1:
            out[...] = self.columns[0].take(positions)
        else:
            for column in self.columns:
                out[column.target.name] = column.take(positions)
        return out

    def index_column(self, positions: np.ndarray) -> pa.Array:
        """index.parquet's `label`: the one target's values, or a struct of them all."""
        if len(self.columns) == 1:
            return self.columns[0].index_column(positions)
        return pa.StructArray.from_arrays(
            [column.index_column(positions) for column in self.columns],
            [column.target.name for column in self.columns],
        )

    def stats(self, positions: np.ndarray) -> list[dict[str, list[float] | list[int]]]:
        return [column.stats(positions) for column in self.columns]

    def into(self, run: Targets, where: str) -> ListingTargets:
        """These targets in the terms of a run's (`--append`): the same target names, kinds and
        widths, class indices renumbered into the run's classes. New class names may follow the
        run's (its sorted classes keep their numbers, its shards stay valid); one that would sort
        among them, or any new class of a multi-label target (whose stored rows have one byte a
        class), is refused.

        Raises:
            ConfigError: the targets do not fit the run's, in one line with the reason.
        """
        ours = [column.target for column in self.columns]
        unlabeled = len(ours) == 1 and ours[0].kind == "class" and not ours[0].classes
        if unlabeled and len(run.items) == 1 and run.items[0].kind == "class":
            return ListingTargets((TargetColumn(run.items[0], self.columns[0].values),))
        if [(t.name, t.kind) for t in ours] != [(t.name, t.kind) for t in run.items]:
            described = ", ".join(f"{t.name} ({t.kind})" for t in run.items)
            found = ", ".join(f"{t.name} ({t.kind})" for t in ours)
            raise ConfigError(f"{where}: its targets are {found}; the run's are {described}")
        columns = []
        for column, target in zip(self.columns, run.items):
            if target.kind == "regression":
                if column.target.width != target.width:
                    raise ConfigError(
                        f"{where}: {target.name!r} has {column.target.width or 1} value(s) a sample, the run "
                        f"{target.width or 1}"
                    )
                columns.append(TargetColumn(target, column.values))
                continue
            new = sorted(set(column.target.classes) - set(target.classes))
            if new and (target.kind == "multilabel" or (target.classes and new[0] < target.classes[-1])):
                why = (
                    "a multi-label run's classes are fixed (one stored byte each)"
                    if target.kind == "multilabel"
                    else f"they would renumber the run's sorted classes ({new[0]!r} sorts before "
                    f"{target.classes[-1]!r})"
                )
                raise ConfigError(f"{where}: new class(es) {', '.join(map(repr, new[:3]))} for {target.name!r}: {why}")
            extended = dataclasses.replace(
                target,
                classes=target.classes + tuple(new),
                width=target.width if target.kind != "multilabel" else len(target.classes),
            )
            lookup = np.array([extended.classes.index(name) for name in column.target.classes], np.int32)
            columns.append(TargetColumn(extended, _renumbered(column.values, lookup)))
        return ListingTargets(tuple(columns))

    def select(self, positions: np.ndarray) -> ListingTargets:
        """The targets of the inputs at `positions`, in that order."""
        return ListingTargets(tuple(TargetColumn(c.target, _taken(c.values, positions)) for c in self.columns))

    @staticmethod
    def concat(parts: Sequence[ListingTargets]) -> ListingTargets:
        """Targets of several listings in the same terms (see `into`), one after the other."""
        columns = []
        for index, column in enumerate(parts[0].columns):
            values = [part.columns[index].values for part in parts]
            if isinstance(column.values, np.ndarray):
                joined: np.ndarray | pa.Array = np.concatenate(values)
            else:
                joined = pa.concat_arrays([v.combine_chunks() if isinstance(v, pa.ChunkedArray) else v for v in values])
            columns.append(TargetColumn(column.target, joined))
        return ListingTargets(tuple(columns))

    def digest(self) -> bytes:
        """A digest of every target's kind, classes and values (part of the run's fingerprint)."""
        digest = hashlib.sha256(json.dumps(self.targets.to_json()).encode())
        for column in self.columns:
            if isinstance(column.values, np.ndarray):
                digest.update(np.ascontiguousarray(column.values).tobytes())
            else:
                lists = column.values
                digest.update(pc.list_value_length(lists).fill_null(0).to_numpy(zero_copy_only=False).tobytes())
                digest.update(pc.list_flatten(lists).to_numpy(zero_copy_only=False).astype("<i4").tobytes())
        return digest.digest()


def _taken(values: np.ndarray | pa.Array, positions: np.ndarray) -> np.ndarray | pa.Array:
    if isinstance(values, np.ndarray):
        return values[positions]
    return values.take(pa.array(positions, pa.int64()))


def _renumbered(values: np.ndarray | pa.Array, lookup: np.ndarray) -> np.ndarray | pa.Array:
    """Class indices (int32 with -1 for unlabeled, or Arrow lists of them) through `lookup`."""
    if isinstance(values, np.ndarray):
        return np.where(values >= 0, lookup[np.maximum(values, 0)] if len(lookup) else -1, values).astype(np.int32)
    lists = values.combine_chunks() if isinstance(values, pa.ChunkedArray) else values
    flat = pc.list_flatten(lists).to_numpy(zero_copy_only=False)
    renumbered = pa.array(lookup[flat] if len(flat) else np.empty(0, np.int32), pa.int32())
    lengths = pc.list_value_length(lists).fill_null(0).to_numpy(zero_copy_only=False)
    offsets = pa.array(np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32))
    return pa.ListArray.from_arrays(offsets, renumbered, mask=lists.is_null())


def targets_from_columns(
    where: str, columns: Sequence[tuple[str, pa.Array | pa.ChunkedArray]]
) -> tuple[ListingTargets, pa.Array | None]:
    """Targets from named label columns, and the reason against each input that has no usable
    regression value (null where there is none; None when every input is usable).

    Raises:
        SourceError: a column of mixed or unsupported types, a cell that does not parse, lists
            of varying length, or integer labels out of range.
    """
    built: list[TargetColumn] = []
    reasons: list[str | None] | None = None
    for name, column in columns:
        target_column, missing = target_from_column(where, column, name)
        built.append(target_column)
        if missing is not None and missing.any():
            reasons = reasons or [None] * len(column)
            label = f"regression target {name!r}"
            for position in np.flatnonzero(missing).tolist():
                reasons[position] = reasons[position] or f"{label} is empty or NaN"
    problems = pa.array(reasons, pa.large_string()) if reasons is not None else None
    return ListingTargets(tuple(built)), problems


def target_from_column(
    where: str, column: pa.Array | pa.ChunkedArray, name: str = "label"
) -> tuple[TargetColumn, np.ndarray | None]:
    """One label column's target, and (regression only) which inputs lack a usable value.

    Raises:
        SourceError: see `targets_from_columns`.
    """
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    kind = column.type
    if pa.types.is_null(kind):
        return TargetColumn(Target(name, "class"), np.full(len(column), UNLABELED, np.int32)), None
    if (pa.types.is_string(kind) or pa.types.is_large_string(kind)) and _holds_json_lists(column):
        return target_from_column(where, _parse_json_lists(where, column, name), name)
    if pa.types.is_integer(kind) or pa.types.is_string(kind) or pa.types.is_large_string(kind):
        labels, classes = _class_labels(where, column, name)
        return TargetColumn(Target(name, "class", tuple(classes)), labels), None
    if pa.types.is_floating(kind) or pa.types.is_decimal(kind):
        values = column.cast(pa.float64()).fill_null(math.nan).to_numpy(zero_copy_only=False).astype(np.float32)
        return TargetColumn(Target(name, "regression"), values), np.isnan(values)
    if pa.types.is_list(kind) or pa.types.is_large_list(kind) or pa.types.is_fixed_size_list(kind):
        element = kind.value_type
        if pa.types.is_floating(element) or pa.types.is_decimal(element):
            return _regression_lists(where, column, name)
        if pa.types.is_integer(element) or pa.types.is_string(element) or pa.types.is_large_string(element):
            return _multilabel(where, column, name), None
        if pa.types.is_null(element):  # every list empty
            return _multilabel(where, column.cast(pa.list_(pa.string())), name), None
    raise SourceError(
        f"{where}: {name!r} must hold integers or class names (class), lists of them (multi-label) "
        f"or floats or lists of floats (regression), found {kind}"
    )


def _class_labels(where: str, column: pa.Array, name: str) -> tuple[np.ndarray, list[str]]:
    if pa.types.is_integer(column.type):
        labels = column.fill_null(UNLABELED).to_numpy().astype(np.int64)
        if (labels < UNLABELED).any():
            raise SourceError(f"{where}: {name!r}: integer labels must be >= 0 (or -1 for none), found {labels.min()}")
        if labels.max(initial=UNLABELED) >= 2**31:
            raise SourceError(f"{where}: {name!r}: integer label {labels.max()} is too large")
        count = int(labels.max(initial=UNLABELED)) + 1
        return labels.astype(np.int32), [str(i) for i in range(count)]
    column = pc.utf8_trim_whitespace(column)
    present = pc.and_(pc.is_valid(column), pc.not_equal(column, ""))
    classes = sorted(pc.unique(pc.filter(column, present)).to_pylist())
    index = pc.index_in(column, value_set=pa.array(classes, column.type))
    return index.fill_null(UNLABELED).to_numpy(zero_copy_only=False).astype(np.int32), classes


def _multilabel(where: str, column: pa.Array, name: str) -> TargetColumn:
    lists = column.cast(pa.large_list(column.type.value_type))
    flat = pc.list_flatten(lists)
    if flat.null_count:
        raise SourceError(f"{where}: {name!r}: a multi-label list holds an empty value")
    if pa.types.is_integer(flat.type):
        values = flat.to_numpy().astype(np.int64)
        if (values < 0).any() or values.max(initial=0) >= 2**31:
            raise SourceError(f"{where}: {name!r}: multi-label integers must be class numbers >= 0")
        classes = [str(i) for i in range(int(values.max(initial=-1)) + 1)]
        indices = pa.array(values.astype(np.int32))
    else:
        flat = pc.utf8_trim_whitespace(flat)
        classes = sorted(pc.unique(flat).to_pylist())
        indices = pc.index_in(flat, value_set=pa.array(classes, flat.type)).cast(pa.int32())
    offsets = pc.subtract(lists.offsets, lists.offsets[0]) if len(lists) else lists.offsets
    values = pa.LargeListArray.from_arrays(offsets, indices, mask=lists.is_null())
    return TargetColumn(Target(name, "multilabel", tuple(classes), len(classes)), values)


def _regression_lists(where: str, column: pa.Array, name: str) -> tuple[TargetColumn, np.ndarray]:
    lengths = pc.list_value_length(column).fill_null(0).to_numpy(zero_copy_only=False)
    present = column.is_valid().to_numpy(zero_copy_only=False)
    widths = np.unique(lengths[present])
    if len(widths) > 1:
        raise SourceError(
            f"{where}: {name!r}: regression lists must all have one length, found lengths "
            f"{', '.join(map(str, widths[:5].tolist()))}"
        )
    width = int(widths[0]) if len(widths) else 1
    if width == 0:
        raise SourceError(f"{where}: {name!r}: regression lists are empty")
    values = np.full((len(column), width), np.nan, np.float32)
    rows = np.flatnonzero(present)
    if len(rows):
        flat = pc.list_flatten(column.filter(pa.array(present))).cast(pa.float64()).fill_null(math.nan)
        values[rows] = flat.to_numpy(zero_copy_only=False).reshape(len(rows), width)
    return TargetColumn(Target(name, "regression", (), width), values), np.asarray(np.isnan(values).any(axis=1))


def _holds_json_lists(column: pa.Array) -> bool:
    """Whether a text column's cells are JSON lists (a CSV's way to write them)."""
    cells = pc.utf8_trim_whitespace(pc.drop_null(column))
    cells = pc.filter(cells, pc.not_equal(cells, ""))
    return len(cells) > 0 and bool(pc.any(pc.starts_with(cells, "[")).as_py())


def _parse_json_lists(where: str, column: pa.Array, name: str) -> pa.Array:
    cells: list[list | None] = []
    for row, text in enumerate(column.to_pylist()):
        text = (text or "").strip()
        if not text:
            cells.append(None)
            continue
        if not text.startswith("["):
            raise SourceError(
                f"{where}: {name!r} mixes lists and single values (row {row + 1}: {text[:40]!r}); "
                "write every cell as a JSON list"
            )
        try:
            cell = json.loads(text)
        except ValueError as exc:
            raise SourceError(
                f"{where}: {name!r} row {row + 1}: cannot parse {text[:40]!r} as a JSON list ({exc})"
            ) from None
        if not isinstance(cell, list) or any(isinstance(v, (list, dict)) for v in cell):
            raise SourceError(f"{where}: {name!r} row {row + 1}: {text[:40]!r} is not a flat JSON list")
        cells.append(cell)
    return typed_values(where, cells, name)


def typed_values(where: str, values: Sequence[object], name: str) -> pa.Array:
    """Python values (JSON cells, tar `.json` fields) as one typed Arrow column.

    Raises:
        SourceError: the values mix types (names and numbers, lists and single values).
    """
    try:
        return pa.array(values)
    except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
        raise SourceError(
            f"{where}: {name!r} mixes types ({str(exc).splitlines()[0]}); use one kind per column"
        ) from None


def merged_targets(where: str, parts: Sequence[Targets]) -> Targets:
    """The targets of a listing made of parts (`shards.sources.parts`), each part's listed on
    its own: the same names and kinds, regression widths equal, and each class target's classes
    those of every part: the longest when the others are its prefixes (integer labels "0".."K-1"
    keep their numeric order), else the sorted union of the names. Every part's classes are then
    among the merged ones, so `ListingTargets.into` renumbers a part without refusing any.

    Raises:
        SourceError: parts whose targets differ in names, kinds or widths.
    """
    first = parts[0]
    if any(len(part.items) != len(first.items) for part in parts):
        raise SourceError(f"{where}: the parts of SRC have different numbers of targets")
    merged = []
    for position, target in enumerate(first.items):
        found = [part.items[position] for part in parts]
        for other in found:
            if (other.name, other.kind) != (target.name, target.kind):
                raise SourceError(
                    f"{where}: target {target.name!r} is {target.kind} in one part of SRC and "
                    f"{other.kind} ({other.name!r}) in another"
                )
        if target.kind == "regression":
            widths = {other.width for other in found}
            if len(widths) > 1:
                raise SourceError(f"{where}: {target.name!r} has {sorted(widths)} values a sample in different parts")
            merged.append(target)
            continue
        longest = max((other.classes for other in found), key=len)
        if all(longest[: len(other.classes)] == other.classes for other in found):
            classes = longest
        else:
            classes = tuple(sorted({name for other in found for name in other.classes}))
        merged.append(
            dataclasses.replace(target, classes=classes, width=len(classes) if target.kind == "multilabel" else 0)
        )
    return Targets(tuple(merged))
