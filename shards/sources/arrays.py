"""Images already in memory as NumPy arrays: what Keras' `ImageDataGenerator.flow(x, y)` takes.

`x` is one array [N, H, W, C] (or [N, H, W] greyscale) or a list of arrays of varied sizes;
uint8 is taken as it is, floats as 0..255 (Keras' `img_to_array`) or, when the whole of `x` lies
within 0..1, as 0..1. `y` is None, or the targets as Keras' `fit(x, y)` takes them: integer
labels or class names [N] (class), a multi-hot [N, K] of 0s and 1s (multi-label, classes
"0".."K-1"), floats [N] or [N, K] (regression), or a dict of these (several targets). Shards take
consecutive samples, so each task is handed just its own slice: it travels in the task's
arguments through Ray's object store, only while that task is in flight, never all at once.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import xxhash

from shards.errors import DecodeError, SourceError
from shards.sources.inputs import Input
from shards.sources.listing import Listing
from shards.sources.targets import ListingTargets, TargetColumn, targets_from_columns, typed_values

_DIGEST_BLOCK = 64 * 2**20


def is_arrays(src: Any) -> bool:
    """Whether SRC is in-memory arrays: an array, a list of arrays, or an (x, y) pair of them."""
    if isinstance(src, np.ndarray):
        return True
    return (
        isinstance(src, (tuple, list))
        and len(src) > 0
        and not isinstance(src, str)
        and _is_images(src[0] if isinstance(src, tuple) else src)
    )


def _is_images(x: Any) -> bool:
    return isinstance(x, np.ndarray) or (isinstance(x, (list, tuple)) and len(x) > 0 and isinstance(x[0], np.ndarray))


def describe(src: Any) -> str:
    """How arrays are named in messages and in the manifest's `source`."""
    x = src[0] if isinstance(src, tuple) else src
    if isinstance(x, np.ndarray):
        return f"<array {x.dtype} {list(x.shape)}>"
    return f"<{len(x)} arrays>"


def list_arrays(src: Any) -> Listing:
    """List in-memory images; `src` is `x` or `(x, y)`.

    Raises:
        SourceError: shapes, dtypes or label counts that cannot be images and their labels.
    """
    x, y = (src[0], src[1] if len(src) > 1 else None) if isinstance(src, tuple) else (src, None)
    where = describe(src)
    images = list(x) if not isinstance(x, np.ndarray) else x
    if isinstance(images, np.ndarray) and images.ndim not in (3, 4):
        raise SourceError(f"{where}: images must be [N, H, W] or [N, H, W, C], got shape {list(images.shape)}")
    for image in images if isinstance(images, list) else images[:1]:
        _check_image(where, image)
    count = len(images)
    scale = _float_scale(images)
    kind = ArrayKind(images, scale)
    sources = pc.binary_join_element_wise(
        pa.scalar("array[", pa.large_string()),
        pc.cast(pa.array(np.arange(count)), pa.large_string()),
        pa.scalar("]", pa.large_string()),
        pa.scalar("", pa.large_string()),  # the separator
    )
    identity = _digest(images)
    if y is None:
        return Listing(sources, ListingTargets.unlabeled(count), kind=kind, keeps_order=True, identity=identity)
    named = [(str(k), v) for k, v in y.items()] if isinstance(y, dict) else [("label", y)]
    columns = [(name, _target_column(where, values, name)) for name, values in named]
    for name, column in columns:
        if len(column) != count:
            raise SourceError(f"{where}: {count} images but {len(column)} values of {name!r}")
    targets, missing = targets_from_columns(where, columns)
    targets = _full_width(targets, dict(named))
    return Listing(sources, targets, kind=kind, problems=missing, keeps_order=True, identity=identity)


def _full_width(targets: ListingTargets, given: dict[Any, Any]) -> ListingTargets:
    """A multi-hot [N, K] has K classes even where its last columns are never set."""
    columns = []
    for column in targets.columns:
        y, target = given[column.target.name], column.target
        if target.kind == "multilabel" and isinstance(y, np.ndarray) and y.ndim == 2 and y.shape[1] > target.width:
            classes = tuple(str(i) for i in range(y.shape[1]))
            column = TargetColumn(dataclasses.replace(target, classes=classes, width=len(classes)), column.values)
        columns.append(column)
    return ListingTargets(tuple(columns))


def _target_column(where: str, y: Any, name: str) -> pa.Array:
    """`y` as an Arrow column whose type says its kind: a 2-D array of 0s and 1s is multi-hot
    (lists of class numbers), a 2-D float array a regression list."""
    if not isinstance(y, np.ndarray):
        return typed_values(where, list(y), name)
    if y.ndim == 1:
        return pa.array(y)
    if y.ndim != 2:
        raise SourceError(f"{where}: {name!r} must be [N] or [N, K], got shape {list(y.shape)}")
    if np.issubdtype(y.dtype, np.floating):
        return pa.FixedSizeListArray.from_arrays(pa.array(y.astype(np.float32).reshape(-1)), y.shape[1])
    if (y.dtype == bool or np.issubdtype(y.dtype, np.integer)) and np.isin(y, (0, 1)).all():
        rows, classes = np.nonzero(y)
        offsets = np.r_[0, np.cumsum(np.bincount(rows, minlength=len(y)))].astype(np.int64)
        return pa.LargeListArray.from_arrays(pa.array(offsets), pa.array(classes.astype(np.int64)))
    raise SourceError(f"{where}: a 2-D {name!r} must be multi-hot (0s and 1s) or floats, got {y.dtype}")


def _check_image(where: str, image: Any) -> None:
    if not isinstance(image, np.ndarray):
        raise SourceError(f"{where}: every image must be a NumPy array, found {type(image).__name__}")
    shape = image.shape[1:] if image.ndim == 4 else image.shape
    if len(shape) not in (2, 3) or (len(shape) == 3 and shape[2] not in (1, 3, 4)) or 0 in shape:
        raise SourceError(f"{where}: an image must be [H, W] or [H, W, C] with C of 1, 3 or 4, got {list(shape)}")
    if image.dtype != np.uint8 and not np.issubdtype(image.dtype, np.floating):
        raise SourceError(f"{where}: images must be uint8 or float, got {image.dtype}")


def _float_scale(images: np.ndarray | list[np.ndarray]) -> float:
    """255 when float images all lie within 0..1, else 1 (taken as 0..255)."""
    parts = [images] if isinstance(images, np.ndarray) else images
    floats = [part for part in parts if np.issubdtype(part.dtype, np.floating)]
    if not floats:
        return 1.0
    largest = max(float(np.nanmax(part)) if part.size else 0.0 for part in floats)
    return 255.0 if largest <= 1.0 else 1.0


def _digest(images: np.ndarray | list[np.ndarray]) -> str:
    """XXH3-128 of the pixels, shapes and dtypes, so `--resume` knows the same arrays again."""
    digest = xxhash.xxh3_128()
    for part in [images] if isinstance(images, np.ndarray) else images:
        digest.update(f"{part.dtype.str}{part.shape}".encode())
        flat = np.ascontiguousarray(part).reshape(-1).view(np.uint8)
        for start in range(0, flat.size, _DIGEST_BLOCK):
            digest.update(flat[start : start + _DIGEST_BLOCK].data)
    return "xxh3_128:" + digest.hexdigest()


@dataclasses.dataclass(frozen=True)
class ArrayKind:
    """The arrays themselves, on the driver; each task gets its slice."""

    images: np.ndarray | list[np.ndarray]
    scale: float

    @property
    def remote(self) -> bool:
        return False

    def inputs(self, positions: np.ndarray) -> ArrayInputs:
        if isinstance(self.images, np.ndarray):
            contiguous = len(positions) and positions[-1] - positions[0] + 1 == len(positions)
            chunk = self.images[positions[0] : positions[-1] + 1] if contiguous else self.images[positions]
            return ArrayInputs(chunk.copy(), self.scale)  # the slice alone travels, not the whole base
        return ArrayInputs([self.images[i] for i in positions.tolist()], self.scale)


@dataclasses.dataclass(frozen=True)
class ArrayInputs:
    """One shard's images, as uint8 [H, W, 3] arrays once read."""

    images: np.ndarray | Sequence[np.ndarray]
    scale: float

    def read(self, max_bytes: int) -> Iterator[Input]:
        for image in self.images:
            yield to_rgb(image, self.scale)


def to_rgb(image: np.ndarray, scale: float) -> np.ndarray | DecodeError:
    """A uint8 [H, W, 3] array from a uint8 or float image of 1, 3 or 4 channels (alpha
    composited on black, as for decoded files)."""
    if np.issubdtype(image.dtype, np.floating):
        values = image.astype(np.float32) * np.float32(scale)
        if not np.isfinite(values).all():
            return DecodeError("pixel values are not finite (NaN or infinity)")
        if values.min(initial=0.0) < -0.5 or values.max(initial=0.0) > 255.5:
            return DecodeError(f"pixel values outside 0..255 (from {values.min():g} to {values.max():g})")
        image = np.clip(np.rint(values), 0, 255).astype(np.uint8)
    if image.ndim == 2:
        image = image[:, :, None]
    if image.shape[2] == 1:
        return np.repeat(image, 3, axis=2)
    if image.shape[2] == 4:
        alpha = image[:, :, 3:].astype(np.uint16)
        return ((image[:, :, :3].astype(np.uint16) * alpha + 127) // 255).astype(np.uint8)
    return np.ascontiguousarray(image)
