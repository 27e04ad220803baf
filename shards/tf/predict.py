"""Prediction that never runs out of memory: stream shards through a model into Parquet.

Batches are read in dataset order and written as they come (one Parquet row group per batch),
so memory holds one batch, never the dataset. With `batch_size="auto"` the batch starts large and
halves whenever the device (TensorFlow's ResourceExhaustedError) or the host (MemoryError, or a
host memory budget) runs out, retrying the same samples, so no row is lost or written twice.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from shards.cluster import check_workers, cluster_resource, connect_ray
from shards.errors import ShardsError
from shards.io.fileio import temporary_path
from shards.read.dataset import ShardDataset
from shards.tf.options import PredictOptions

logger = logging.getLogger(__name__)

AUTO_START = 1024


def _out_of_memory_errors() -> tuple[type[BaseException], ...]:
    errors: tuple[type[BaseException], ...] = (MemoryError,)
    try:
        from shards.tf.support import import_tensorflow

        errors += (import_tensorflow().errors.ResourceExhaustedError,)
    except ImportError:  # pragma: no cover - TensorFlow is a dependency
        pass
    return errors


def predict_to_parquet(
    dataset: ShardDataset,
    predict_batch: Callable[[np.ndarray], np.ndarray],
    out: str,
    options: PredictOptions,
    *,
    positions: np.ndarray | None = None,
    sources: pa.Array | None = None,
) -> dict[str, Any]:
    """Predict every sample (or those at `positions`), in order, writing one row each to `out`.

    Args:
        dataset: the shards to predict.
        predict_batch: images -> scores (logits or probabilities), shape [batch, classes].
        out: the Parquet file to write (atomically).
        positions: the dataset positions to predict (default: all, in order).
        sources: index.parquet's source column, to record each row's input file.

    Returns: rows written and the batch size finally used.
    """
    positions = np.arange(len(dataset)) if positions is None else np.asarray(positions)
    sample_bytes = int(np.prod(dataset.shape)) * dataset.dtype.itemsize
    batch = min(AUTO_START, max(1, len(positions))) if options.batch_size == "auto" else int(options.batch_size)
    if options.host_memory is not None:
        batch = max(1, min(batch, options.host_memory // (2 * sample_bytes)))
    oom = _out_of_memory_errors()
    written = 0
    with temporary_path(out) as temp:
        writer: pq.ParquetWriter | None = None
        begin = 0
        while begin < len(positions):
            chunk = positions[begin : begin + batch]
            try:
                images, labels = dataset.read(chunk)  # ascending; chunk is ascending too
                scores = np.asarray(predict_batch(images), np.float32)
            except oom as exc:
                if options.batch_size != "auto" or batch == 1:
                    raise ShardsError(f"out of memory at batch size {batch}: {type(exc).__name__}") from exc
                batch //= 2
                logger.warning("out of memory (%s); retrying with batch size %d", type(exc).__name__, batch)
                continue
            table = _rows(np.sort(chunk), labels, scores, options.top_k, sources)
            if writer is None:
                writer = pq.ParquetWriter(temp, table.schema, compression="zstd")
            writer.write_table(table)
            written += len(chunk)
            begin += len(chunk)
        if writer is None:
            writer = pq.ParquetWriter(
                temp,
                _rows(
                    np.empty(0, np.int64), np.empty(0, np.int32), np.empty((0, 1), np.float32), options.top_k, sources
                ).schema,
            )
        writer.close()
    return {"rows": written, "batch_size": batch}


def _rows(
    positions: np.ndarray, labels: np.ndarray, scores: np.ndarray, top_k: int, sources: pa.Array | None
) -> pa.Table:
    scores = scores.reshape(len(scores), -1)
    k = min(top_k, scores.shape[1])
    top = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    columns = {
        "row": pa.array(positions.astype(np.int64)),
        "label": pa.array(labels.astype(np.int32)),
        "prediction": pa.array(top[:, 0].astype(np.int32) if len(top) else np.empty(0, np.int32)),
        "top_k": pa.array(list(top.astype(np.int32)), pa.list_(pa.int32())),
        "top_k_scores": pa.array(list(np.take_along_axis(scores, top, axis=1)), pa.list_(pa.float32())),
    }
    if sources is not None:
        columns["source"] = sources.take(pa.array(positions.astype(np.int64)))
    return pa.table(columns)


def keras_predictor(model_path: str, *, mixed_precision: bool = False) -> Callable[[np.ndarray], np.ndarray]:
    """A batch predictor from a saved Keras model (mixed precision only where a GPU is)."""
    from shards.tf.support import import_tensorflow

    tf = import_tensorflow()
    import keras

    if mixed_precision and tf.config.list_physical_devices("GPU"):
        keras.mixed_precision.set_global_policy("mixed_float16")
    model = keras.models.load_model(model_path, compile=False)
    return lambda images: model.predict_on_batch(images)


def index_sources(dest: str) -> pa.Array | None:
    """The source of every sample, from index.parquet (None if it is missing)."""
    from shards.io.location import location
    from shards.layout.manifest import INDEX

    try:
        table = location(dest).read_table(INDEX, ["source"])
    except FileNotFoundError:
        return None
    return table.column("source").combine_chunks()


def _predict_part(
    dest: str, model_path: str, out: str, options: PredictOptions, positions: np.ndarray, mixed_precision: bool
) -> dict[str, Any]:
    from shards.read.dataset import open_shards

    return predict_to_parquet(
        open_shards(dest),
        keras_predictor(model_path, mixed_precision=mixed_precision),
        out,
        options,
        positions=positions,
        sources=index_sources(dest),
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
) -> dict[str, Any]:
    """Predict DEST into `out`: in this process, or as `workers` Ray tasks over groups of shards.

    Parts are written by the tasks (one GPU each where the cluster has them) and joined in
    dataset order, so the output is the same whatever the number of workers.
    """
    from shards.read.dataset import open_shards

    check_workers(workers)
    dataset = open_shards(dest)
    if workers == 1:
        return _predict_part(dest, model_path, out, options, np.arange(len(dataset)), mixed_precision)
    import ray

    connect_ray(address)
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
            writer = writer or pq.ParquetWriter(temp, table.schema, compression="zstd")
            writer.write_table(table)
            os.remove(part)
        if writer is not None:
            writer.close()
    return {"rows": sum(r["rows"] for r in results), "batch_size": min(r["batch_size"] for r in results)}
