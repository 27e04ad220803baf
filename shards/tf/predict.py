"""Prediction that never runs out of memory: stream shards through a model into Parquet.

Batches are read in dataset order and written as they come (one Parquet row group per batch),
so memory holds one batch, never the dataset. With `batch_size="auto"` the batch starts large and
halves whenever the device (TensorFlow's ResourceExhaustedError) or the host (MemoryError, or a
host memory budget) runs out, retrying the same samples, so no row is lost or written twice.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Callable
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from shards.cluster import check_workers, cluster_resource, connect_ray
from shards.errors import ShardsError
from shards.io.fileio import check_output, temporary_path
from shards.io.memory import default_budget
from shards.keras.options import PredictOptions
from shards.read.dataset import RunReader
from shards.targets import Target, Targets, arrow_values

logger = logging.getLogger(__name__)

AUTO_START = 1024


def _out_of_memory_errors() -> tuple[type[BaseException], ...]:
    errors: tuple[type[BaseException], ...] = (MemoryError,)
    try:
        from shards.frameworks import import_tensorflow

        errors += (import_tensorflow(quiet=True).errors.ResourceExhaustedError,)
    except ImportError:  # pragma: no cover - TensorFlow is a dependency
        pass
    return errors


@dataclasses.dataclass(frozen=True)
class Predictor:
    """A batch predictor and what its scores are.

    Attributes:
        predict: images [B, H, W, C] -> scores [B, classes].
        scores: how the scores were made, recorded in the Parquet file's metadata
            (`shards.scores`), e.g. "probabilities: softmax applied to the model's logits".
    """

    predict: Callable[[np.ndarray], np.ndarray]
    scores: str = "scores as the predictor returned them"


def predict_to_parquet(
    dataset: RunReader,
    predictor: Predictor | Callable[[np.ndarray], np.ndarray],
    out: str,
    options: PredictOptions,
    *,
    positions: np.ndarray | None = None,
    sources: pa.Array | None = None,
) -> dict[str, Any]:
    """Predict every sample (or those at `positions`), in order, writing one row each to `out`.

    Columns for one class target: `row` (the dataset position, index.parquet's row), `label`
    and `label_name`, `prediction` and `prediction_name`, `score` (the prediction's), `top_k` /
    `top_k_names` / `top_k_scores` (best first), and `source` (the input file) when known.
    Other targets (see `_target_columns`): a multi-label target's true and predicted class
    names and its score per class; a regression target's true and predicted values; several
    targets, each's columns prefixed with its name.

    Args:
        dataset: the shards to predict.
        predictor: a `Predictor` (or a bare callable images -> scores [batch, classes]).
        out: the Parquet file to write (atomically).
        options: batch size ("auto": sized from a probe batch's measured memory and the
            budget), top k, host memory budget.
        positions: the dataset positions to predict (default: all, in order).
        sources: index.parquet's source column, to record each row's input file.

    Returns: rows written and the batch size finally used.

    Raises:
        ShardsError: out of memory at a fixed batch size, or at batch size 1.
    """
    predictor = predictor if isinstance(predictor, Predictor) else Predictor(predictor)
    positions = np.arange(len(dataset)) if positions is None else np.asarray(positions)
    if options.batch_size == "auto":
        batch = auto_batch_size(dataset, predictor, positions, options.host_memory)
    else:
        batch = int(options.batch_size)
    oom = _out_of_memory_errors()
    written = 0
    metadata = {b"shards.scores": predictor.scores.encode()}
    with temporary_path(out) as temp:
        writer: pq.ParquetWriter | None = None
        begin = 0
        while begin < len(positions):
            chunk = positions[begin : begin + batch]
            try:
                images, labels = dataset.read(chunk)  # ascending; chunk is ascending too
                scores = predictor.predict(images)
            except oom as exc:
                if options.batch_size != "auto" or batch == 1:
                    raise ShardsError(f"out of memory at batch size {batch}: {type(exc).__name__}") from exc
                batch //= 2
                logger.warning("out of memory (%s); retrying with batch size %d", type(exc).__name__, batch)
                continue
            table = _table(dataset.targets, np.sort(chunk), labels, scores, options, sources)
            if writer is None:
                writer = pq.ParquetWriter(temp, table.schema.with_metadata(metadata), compression="zstd")
            writer.write_table(table.replace_schema_metadata(metadata))
            written += len(chunk)
            begin += len(chunk)
        if writer is None:
            labels = dataset.targets.output(dataset.targets.empty(0))
            scores = _empty_scores(dataset.targets)
            empty = _table(dataset.targets, np.empty(0, np.int64), labels, scores, options, sources)
            writer = pq.ParquetWriter(temp, empty.schema.with_metadata(metadata))
        writer.close()
    return {"rows": written, "batch_size": batch, "scores": predictor.scores}


PROBE_SAMPLES = 16


def auto_batch_size(dataset: RunReader, predictor: Predictor, positions: np.ndarray, budget: int | None) -> int:
    """The largest batch (up to AUTO_START) whose host memory fits `budget` (default: half of what
    the machine or its cgroup has available), measured on a probe batch rather than guessed
    from the input size: a model's activations can be many times its input (a batch of 1024 took
    3.3 GB on the demo CNN, 1.8 GB at 64). A device's own limit is met by halving on
    ResourceExhaustedError."""
    if not len(positions):
        return 1
    probe = positions[: min(PROBE_SAMPLES, len(positions))]
    sample_bytes = int(np.prod(dataset.shape)) * dataset.dtype.itemsize
    before = _rss_bytes()
    _reset_peak_rss()
    images, _ = dataset.read(probe)
    try:
        predictor.predict(images)
    except _out_of_memory_errors():
        return max(1, len(probe) // 2)  # the device cannot even take the probe: start below it
    per_sample = max(2 * sample_bytes, (_peak_rss_bytes() - before) / len(probe))
    available = budget if budget is not None else default_budget()
    batch = int(max(1, min(AUTO_START, len(positions), available // per_sample)))
    logger.info(
        "auto batch size %d: %.1f MB per sample measured, budget %.0f MB", batch, per_sample / 1e6, available / 1e6
    )
    return batch


def _proc_status(field: str) -> int:
    """A `VmRSS`-style figure of this process from /proc, in bytes (0 where there is no /proc)."""
    try:
        with open("/proc/self/status", encoding="ascii") as handle:
            for line in handle:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _rss_bytes() -> int:
    return _proc_status("VmRSS")


def _peak_rss_bytes() -> int:
    return _proc_status("VmHWM")


def _reset_peak_rss() -> None:
    """Start VmHWM again from the current RSS (Linux: writing 5 to clear_refs)."""
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as handle:
            handle.write("5")
    except OSError:
        pass


def _table(
    targets: Targets, positions: np.ndarray, labels: Any, scores: Any, options: PredictOptions, sources: pa.Array | None
) -> pa.Table:
    """One batch's rows: the class columns of `_rows` for one class target; with other or
    several targets, each target's columns (prefixed by its name when there are several)."""
    (first, *_) = targets.items
    if not targets.multi and first.kind == "class":
        return _rows(positions, labels, np.asarray(scores, np.float32), options.top_k, sources, list(first.classes))
    columns: dict[str, pa.Array] = {"row": pa.array(positions.astype(np.int64))}
    for target in targets.items:
        prefix = f"{target.name}_" if targets.multi else ""
        mine = np.asarray(scores[target.name] if targets.multi else scores, np.float32)
        truth = labels[target.name] if targets.multi else labels
        columns.update(
            {prefix + name: values for name, values in _target_columns(target, truth, mine, options).items()}
        )
    if sources is not None:
        columns["source"] = sources.take(pa.array(positions.astype(np.int64)))
    return pa.table(columns)


def _target_columns(target: Target, truth: np.ndarray, scores: np.ndarray, options: PredictOptions) -> dict[str, Any]:
    """A class target: the columns of `_rows` (label, prediction, score, top k). Multi-label:
    `label_names`, `prediction_names` (classes scoring at least `options.threshold`) and
    `scores` per class. Regression: `label` and `prediction` values."""
    if target.kind == "class":
        table = _rows(np.empty(len(truth), np.int64), truth, scores, options.top_k, None, list(target.classes))
        return {name: table.column(name) for name in table.column_names if name != "row"}
    if target.kind == "regression":
        return {
            "label": arrow_values(truth),
            "prediction": arrow_values(scores.reshape(len(scores), *target.sample_shape)),
        }
    names = np.array(target.classes, dtype=object)
    scores = scores.reshape(len(scores), -1)
    return {
        "label_names": pa.array([names[row > 0].tolist() for row in truth], pa.list_(pa.string())),
        "prediction_names": pa.array(
            [names[row >= options.threshold].tolist() for row in scores], pa.list_(pa.string())
        ),
        "scores": pa.array(list(scores), pa.list_(pa.float32())),
    }


def _empty_scores(targets: Targets) -> Any:
    def empty(target: Target) -> np.ndarray:
        return np.empty((0, max(target.width, len(target.classes), 1)), np.float32)

    return {t.name: empty(t) for t in targets.items} if targets.multi else empty(targets.items[0])


def _rows(
    positions: np.ndarray,
    labels: np.ndarray,
    scores: np.ndarray,
    top_k: int,
    sources: pa.Array | None,
    classes: list[str],
) -> pa.Table:
    scores = scores.reshape(len(scores), -1)
    k = min(top_k, scores.shape[1])
    top = np.argsort(-scores, axis=1, kind="stable")[:, :k].astype(np.int32)
    names = np.array([*classes, ""], dtype=object)  # -1 (unlabelled) and ids past the classes name ""
    known = np.where((top >= 0) & (top < len(classes)), top, len(classes))
    label_known = np.where((labels >= 0) & (labels < len(classes)), labels, len(classes))
    prediction = top[:, 0] if len(top) else np.empty(0, np.int32)
    columns = {
        "row": pa.array(positions.astype(np.int64)),
        "label": pa.array(labels.astype(np.int32)),
        "label_name": pa.array(names[label_known].tolist(), pa.string()),
        "prediction": pa.array(prediction),
        "prediction_name": pa.array(names[known[:, 0]].tolist() if len(top) else [], pa.string()),
        "score": pa.array(scores[np.arange(len(scores)), prediction] if len(top) else np.empty(0, np.float32)),
        "top_k": pa.array(list(top), pa.list_(pa.int32())),
        "top_k_names": pa.array([names[row].tolist() for row in known], pa.list_(pa.string())),
        "top_k_scores": pa.array(list(np.take_along_axis(scores, top, axis=1)), pa.list_(pa.float32())),
    }
    if sources is not None:
        columns["source"] = sources.take(pa.array(positions.astype(np.int64)))
    return pa.table(columns)


def keras_predictor(model_path: str, *, targets: Targets | None = None, mixed_precision: bool = False) -> Predictor:
    """Probabilities (or regression values) from a saved Keras model (mixed precision only
    where a GPU is).

    For one class target (the default), a model that ends in softmax or sigmoid already gives
    probabilities; one that ends in logits (a linear layer, as the default CNN does) gets
    softmax over its classes, or sigmoid for a single output. Other targets: each output whose
    layer is linear gets sigmoid (multi-label) or nothing (regression); several targets are
    matched to the model's outputs by name. Which of these happened is what
    `Predictor.scores` says.
    """
    from shards.frameworks import import_tensorflow

    tf = import_tensorflow(quiet=True, needed_for="prediction")  # without its C++ start-up notices
    import keras

    if mixed_precision and tf.config.list_physical_devices("GPU"):
        keras.mixed_precision.set_global_policy("mixed_float16")
    model = keras.models.load_model(model_path, compile=False)
    if targets is not None and (targets.multi or targets.items[0].kind != "class"):
        return _target_predictor(model, targets, tf)
    activation = getattr(getattr(model.layers[-1], "activation", None), "__name__", "linear")
    if activation in ("softmax", "sigmoid"):
        return Predictor(lambda images: model.predict_on_batch(images), f"probabilities: the model's own {activation}")
    outputs = int(model.outputs[0].shape[-1] or 1)
    if outputs == 1:
        return Predictor(
            lambda images: tf.math.sigmoid(model.predict_on_batch(images)).numpy(),
            "probabilities: sigmoid applied to the model's logit",
        )
    return Predictor(
        lambda images: tf.nn.softmax(model.predict_on_batch(images), axis=-1).numpy(),
        "probabilities: softmax applied to the model's logits",
    )


def _target_predictor(model: Any, targets: Targets, tf: Any) -> Predictor:
    linear = {name: _is_linear(model, name) for name in [*model.output_names, "logits", "values"]}

    def finish(target: Target, values: Any, name: str) -> np.ndarray:
        if target.kind == "multilabel" and linear.get(name, True):
            return tf.math.sigmoid(values).numpy()
        if target.kind == "class" and linear.get(name, True):
            return tf.nn.softmax(values, axis=-1).numpy()
        return np.asarray(values)

    def predict(images: np.ndarray) -> Any:
        outputs = model.predict_on_batch(images)
        if not targets.multi:
            return finish(targets.items[0], outputs, model.output_names[0])
        if not isinstance(outputs, dict):
            outputs = dict(zip(model.output_names, outputs))
        return {t.name: finish(t, outputs[t.name], t.name) for t in targets.items}

    kinds = ", ".join(f"{t.name}: {'values' if t.kind == 'regression' else 'probabilities'}" for t in targets.items)
    return Predictor(predict, f"{kinds} (sigmoid or softmax applied to linear outputs)")


def _is_linear(model: Any, name: str) -> bool:
    try:
        layer = model.get_layer(name)
    except ValueError:
        return True
    return getattr(getattr(layer, "activation", None), "__name__", "linear") == "linear"


def index_sources(dataset: RunReader) -> pa.Array | None:
    """The source of every sample of the opened run, from index.parquet (None if it is missing)."""
    from shards.layout.index import read_run_index

    try:
        table = read_run_index(dataset.dest, dataset.manifest, ["source"])
    except FileNotFoundError:
        return None
    return table.column("source").combine_chunks()


def _predict_part(
    dest: str, model_path: str, out: str, options: PredictOptions, positions: np.ndarray, mixed_precision: bool
) -> dict[str, Any]:
    dataset = RunReader(dest)
    return predict_to_parquet(
        dataset,
        keras_predictor(model_path, targets=dataset.targets, mixed_precision=mixed_precision),
        out,
        options,
        positions=positions,
        sources=index_sources(dataset),
    )


def predict_dataset(
    dest: str,
    model_path: str,
    out: str,
    options: PredictOptions,
    *,
    workers: int = 1,
    mixed_precision: bool = False,
    address: str | None = None,
    worker_logs: bool = True,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Predict DEST into `out`: in this process, or as `workers` Ray tasks over groups of shards
    (whose output stays off this terminal with `worker_logs=False`).

    Parts are written by the tasks (one GPU each where the cluster has them) and joined in
    dataset order, so the output is the same whatever the number of workers. An `out` that
    exists is refused unless `overwrite`; it is replaced only once the new one is whole.
    """
    check_workers(workers)
    check_output(out, "--out", overwrite=overwrite)
    dataset = RunReader(dest)
    if workers == 1:
        return _predict_part(dest, model_path, out, options, np.arange(len(dataset)), mixed_precision)
    import ray

    connect_ray(address, worker_logs=worker_logs)
    gpus = 1.0 if cluster_resource("GPU") >= workers else 0.0
    task = ray.remote(_predict_part).options(num_cpus=1, num_gpus=gpus)
    bounds = np.linspace(0, len(dataset), workers + 1).astype(np.int64)
    parts = [f"{out}.part-{i:04d}" for i in range(workers)]
    refs = [
        task.remote(dest, model_path, part, options, np.arange(bounds[i], bounds[i + 1]), mixed_precision)
        for i, part in enumerate(parts)
    ]
    results = ray.get(refs)
    with temporary_path(out) as temp:
        writer = None
        for part in parts:
            table = pq.read_table(part)
            writer = writer or pq.ParquetWriter(temp, table.schema, compression="zstd")  # keeps the metadata
            writer.write_table(table)
            os.remove(part)
        if writer is not None:
            writer.close()
    return {
        "rows": sum(r["rows"] for r in results),
        "batch_size": min(r["batch_size"] for r in results),
        "scores": results[0]["scores"],
    }
