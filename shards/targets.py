"""What a run's targets are: their kinds, how each is stored per sample, and how readers hand
them out.

The label column's type decides the kind (see `shards.sources.targets`):

- `class`: integers or names; stored int32, an index into `classes`, -1 where unlabeled;
  handed out as int32 [N] (Keras' sparse categorical form).
- `multilabel`: lists of names or integers; stored as a uint8 multi-hot row of `len(classes)`
  (one byte a class: a shard of 1,000 classes costs 1 KB a sample next to ~150 KB of pixels);
  handed out as float32 [N, len(classes)], as Keras' binary cross-entropy takes it.
- `regression`: floats, or fixed-length lists of floats; stored and handed out as float32 [N]
  (`width` 0) or [N, width].

Several target columns (Keras' multi-output models) are stored side by side in one structured
array per shard and handed out as a dict of arrays, one per column name. A manifest written
before targets had kinds holds one class target named `label`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import numpy as np

from shards.errors import ManifestError

KINDS = ("class", "multilabel", "regression")
#: The TFRecord feature of a run's only target; with several, `label/<name>` each.
LABEL_FEATURE = "label"


@dataclasses.dataclass(frozen=True)
class Target:
    """One target column.

    Attributes:
        name: the column it came from (`label` by default).
        kind: `class`, `multilabel` or `regression`.
        classes: the class names (`class` and `multilabel`).
        width: values per sample for `regression` (0: one scalar); `len(classes)` for `multilabel`.
    """

    name: str
    kind: str
    classes: tuple[str, ...] = ()
    width: int = 0

    @property
    def sample_shape(self) -> tuple[int, ...]:
        """One sample's target shape as handed out ((), or (width,))."""
        return (self.width,) if self.width else ()

    @property
    def stored_dtype(self) -> np.dtype:
        """The element type on disk."""
        stored: dict[str, np.dtype] = {
            "class": np.dtype("<i4"),
            "multilabel": np.dtype("u1"),
            "regression": np.dtype("<f4"),
        }
        return stored[self.kind]

    @property
    def output_dtype(self) -> np.dtype:
        """The element type readers hand out: int32 class indices, float32 otherwise."""
        return np.dtype(np.int32) if self.kind == "class" else np.dtype(np.float32)

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "kind": self.kind, "classes": list(self.classes), "width": self.width}

    @classmethod
    def from_json(cls, record: Any, where: str) -> Target:
        """Parse and check one manifest entry.

        Raises:
            ManifestError: a field is missing or of the wrong type.
        """
        if not isinstance(record, dict):
            raise ManifestError(f"{where}: each target must be an object, got {type(record).__name__}")
        name, kind, classes, width = (record.get(k) for k in ("name", "kind", "classes", "width"))
        if not isinstance(name, str) or not name:
            raise ManifestError(f"{where}: a target's 'name' must be a non-empty string, got {name!r}")
        if kind not in KINDS:
            raise ManifestError(f"{where}: target {name!r} has unknown kind {kind!r} (one of {', '.join(KINDS)})")
        if not isinstance(classes, list) or not all(isinstance(c, str) for c in classes):
            raise ManifestError(f"{where}: target {name!r}: 'classes' must be a list of names")
        if not isinstance(width, int) or isinstance(width, bool) or not 0 <= width <= 1 << 20:
            raise ManifestError(f"{where}: target {name!r}: 'width' must be a small non-negative integer")
        if kind == "multilabel" and width != len(classes):
            raise ManifestError(
                f"{where}: target {name!r}: multi-label width {width} is not its {len(classes)} classes"
            )
        return cls(name, kind, tuple(classes), width)


@dataclasses.dataclass(frozen=True)
class Targets:
    """All targets of a run, in column order."""

    items: tuple[Target, ...]

    @classmethod
    def single_class(cls, classes: list[str] | tuple[str, ...], name: str = "label") -> Targets:
        """One class target: what every run wrote before targets had kinds."""
        return cls((Target(name, "class", tuple(classes)),))

    @property
    def classes(self) -> list[str]:
        """The class names of the first class or multi-label target ([] when there is none)."""
        return next((list(t.classes) for t in self.items if t.kind != "regression"), [])

    @property
    def labelled(self) -> bool:
        """Whether every class and multi-label target has classes: something to train on."""
        return all(t.kind == "regression" or t.classes for t in self.items)

    @property
    def multi(self) -> bool:
        """Several targets: stored as one structured row, handed out as a dict."""
        return len(self.items) > 1

    @property
    def stored_dtype(self) -> np.dtype:
        """One sample's targets on disk: a plain (sub)array type, or a structured one for several."""
        if not self.multi:
            (target,) = self.items
            return np.dtype((target.stored_dtype, target.sample_shape)) if target.width else target.stored_dtype
        return np.dtype([(t.name, t.stored_dtype, t.sample_shape) for t in self.items])

    def empty(self, count: int) -> np.ndarray:
        """Stored targets for `count` samples, zeroed: [count] or [count, width] (one target),
        or [count] structured (several)."""
        return np.zeros(count, self.stored_dtype)

    def output(self, stored: np.ndarray) -> np.ndarray | dict[str, np.ndarray]:
        """Stored targets as readers hand them out (see the module's kinds)."""
        if not self.multi:
            return _output(self.items[0], stored)
        return {t.name: _output(t, stored[t.name]) for t in self.items}

    def output_specs(self) -> tuple[np.dtype, tuple[int, ...]] | dict[str, tuple[np.dtype, tuple[int, ...]]]:
        """(dtype, per-sample shape) of what `output` hands out, for tf.data signatures."""
        if not self.multi:
            target = self.items[0]
            return target.output_dtype, target.sample_shape
        return {t.name: (t.output_dtype, t.sample_shape) for t in self.items}

    def from_index(self, column: Any) -> np.ndarray:
        """index.parquet's `label` column (Arrow) in the stored form (`empty`)."""
        import pyarrow as pa

        if isinstance(column, pa.ChunkedArray):
            column = column.combine_chunks()
        out = self.empty(len(column))
        if not self.multi:
            out[...] = _from_index(self.items[0], column)
        else:
            for target in self.items:
                out[target.name] = _from_index(target, column.field(target.name))
        return out

    def feature(self, target: Target) -> str:
        """The TFRecord feature that holds `target`: `label`, or `label/<name>` with several."""
        return f"{LABEL_FEATURE}/{target.name}" if self.multi else LABEL_FEATURE

    def to_json(self) -> list[dict[str, Any]]:
        return [t.to_json() for t in self.items]

    @classmethod
    def from_manifest(cls, record: Mapping[str, Any], where: str) -> Targets:
        """The targets a manifest records; one class target from `classes` when it predates them.

        Raises:
            ManifestError: `targets` is malformed.
        """
        entries = record.get("targets")
        if entries is None:
            return cls.single_class(list(record.get("classes", [])))
        if not isinstance(entries, list) or not entries:
            raise ManifestError(f"{where}: 'targets' must be a non-empty list")
        items = tuple(Target.from_json(entry, where) for entry in entries)
        if len({t.name for t in items}) != len(items):
            raise ManifestError(f"{where}: two targets share a name")
        return cls(items)


def arrow_values(values: np.ndarray) -> Any:
    """Regression values [N] or [N, K] as Arrow (float32, or fixed-size lists of K): how
    index.parquet and prediction files hold them."""
    import pyarrow as pa

    values = np.asarray(values, np.float32)
    if values.ndim == 2:
        return pa.FixedSizeListArray.from_arrays(pa.array(values.reshape(-1)), values.shape[1])
    return pa.array(values)


def multi_hot(lists: Any, width: int) -> np.ndarray:
    """Arrow lists of class indices as uint8 multi-hot rows [len(lists), width]."""
    import pyarrow.compute as pc

    dense = np.zeros((len(lists), width), np.uint8)
    lengths = pc.list_value_length(lists).fill_null(0).to_numpy(zero_copy_only=False)
    flat = pc.list_flatten(lists).to_numpy(zero_copy_only=False)
    dense[np.repeat(np.arange(len(lists)), lengths), flat] = 1
    return dense


def _from_index(target: Target, column: Any) -> np.ndarray:
    import pyarrow.compute as pc

    if target.kind == "multilabel":
        return multi_hot(column, target.width)
    if target.width:
        return pc.list_flatten(column).to_numpy(zero_copy_only=False).reshape(len(column), target.width)
    return column.to_numpy(zero_copy_only=False)


def _output(target: Target, stored: np.ndarray) -> np.ndarray:
    return stored.astype(target.output_dtype, copy=target.kind == "multilabel")


def describe(targets: Targets, value: Any) -> str:
    """One sample's targets as a short caption (previews): class names, the classes present in a
    multi-label sample, regression values. `value` is one row as stored or as handed out (a
    dict by name for several targets)."""
    if not targets.multi:
        return _describe(targets.items[0], value)
    return ", ".join(f"{t.name}={_describe(t, value[t.name])}" for t in targets.items)


def _describe(target: Target, value: np.ndarray) -> str:
    if target.kind == "class":
        index = int(value)
        return target.classes[index] if 0 <= index < len(target.classes) else "(unlabeled)"
    if target.kind == "multilabel":
        return "+".join(target.classes[i] for i in np.flatnonzero(value)) or "(none)"
    values = np.atleast_1d(np.asarray(value, np.float32))
    return ",".join(f"{v:.3g}" for v in values.tolist())


def combined_stats(
    first: list[dict[str, Any]], first_count: int, second: list[dict[str, Any]], second_count: int
) -> list[dict[str, Any]]:
    """Each target's stats over two sets of samples (shards of one run, or a run and its append):
    class counts added (the shorter padded), regression minimum, maximum and count-weighted mean.
    A commit folds its shards in one at a time, never holding every sample's targets."""
    merged: list[dict[str, Any]] = []
    for old, new in zip(first, second):
        if "counts" in new:
            counts = np.zeros(max(len(old.get("counts", [])), len(new["counts"])), np.int64)
            counts[: len(old.get("counts", []))] += np.asarray(old.get("counts", []), np.int64)
            counts[: len(new["counts"])] += np.asarray(new["counts"], np.int64)
            merged.append({"counts": counts.tolist()})
        elif not old.get("mean"):
            merged.append(new)
        elif not new["mean"]:
            merged.append(old)
        else:
            total = first_count + second_count
            mean = (np.asarray(old["mean"]) * first_count + np.asarray(new["mean"]) * second_count) / total
            merged.append(
                {
                    "min": np.minimum(old["min"], new["min"]).tolist(),
                    "mean": mean.tolist(),
                    "max": np.maximum(old["max"], new["max"]).tolist(),
                }
            )
    return merged
