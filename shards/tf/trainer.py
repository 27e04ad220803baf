"""Running training on Ray: one trainer actor, or Ray Train's TensorflowTrainer across workers.

The actor asks for a GPU when the cluster has one and runs on CPU otherwise. With several
workers, Ray Train sets up MultiWorkerMirroredStrategy (TF_CONFIG) and each worker reads its own
rank's slice of the shards. A worker that cannot see a DEST folder reads it through a streaming
generator on the node that can (`shards.read.remote`); an s3:// or gs:// DEST is read by every worker
through its own bounded local cache.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from typing import Any

from shards.cluster import cluster_resource, connect_ray, one_line, task_cause
from shards.errors import ShardsError
from shards.io import storage
from shards.tf.options import TrainOptions, check_training

logger = logging.getLogger(__name__)


class TrainerActor:
    """A Ray actor that trains on the shard stream (see `run_training`)."""

    def fit(self, dest: str, options: TrainOptions, data_node: str) -> dict[str, Any]:
        from shards.tf.training import train_worker

        _log_shards_info()
        return train_worker(dest, options, data_node=data_node)


def _log_shards_info() -> None:
    """A trainer process logs shards' INFO lines (its devices, each epoch); the driver shows the
    workers' output with `-v` only."""
    logging.basicConfig(format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("shards").setLevel(logging.INFO)


def _train_loop_per_worker(config: dict[str, Any]) -> None:
    import ray.train

    from shards.tf.support import import_tensorflow
    from shards.tf.training import train_worker

    os.environ.update(config["environment"])  # object-storage endpoint and credentials for DEST
    _log_shards_info()
    tf = import_tensorflow()
    context = ray.train.get_context()
    strategy = tf.distribute.MultiWorkerMirroredStrategy()
    report = train_worker(
        config["dest"],
        config["options"],
        rank=context.get_world_rank(),
        world_size=context.get_world_size(),
        strategy=strategy,
        data_node=config["data_node"],
    )
    # Ray Train V2 hands metrics back to the driver only with a checkpoint: rank 0 attaches a
    # small one holding its report; every rank reports once, as Train requires.
    with tempfile.TemporaryDirectory() as folder:
        checkpoint = None
        if context.get_world_rank() == 0:
            with open(os.path.join(folder, "report.json"), "w", encoding="utf-8") as handle:
                json.dump(report, handle)
            checkpoint = ray.train.Checkpoint.from_directory(folder)
        ray.train.report({"report": json.dumps(report)}, checkpoint=checkpoint)


def run_training(
    dest: str,
    options: TrainOptions,
    *,
    workers: int = 1,
    gpus_per_worker: float | None = None,
    address: str | None = None,
    storage_path: str | None = None,
    worker_logs: bool = True,
) -> dict[str, Any]:
    """Train on DEST with `workers` Ray workers; returns rank 0's report.

    `worker_logs=False` keeps the workers' TensorFlow and Ray Train output off this terminal
    (what `shards train` does unless -v).

    Raises:
        ConfigError: bad worker or GPU counts (before Ray work starts).
    """
    check_training(dest, options, workers=workers, gpus_per_worker=gpus_per_worker)
    import ray

    connect_ray(address, worker_logs=worker_logs)
    gpus = gpus_per_worker if gpus_per_worker is not None else (1.0 if cluster_resource("GPU") >= workers else 0.0)
    data_node = ray.get_runtime_context().get_node_id()
    remote = storage.is_remote(dest)
    dest = dest if remote else os.path.abspath(dest)
    environment = storage.environment() if remote else {}
    logger.info("training on %s with %d worker(s), %.1f GPU each", dest, workers, gpus)
    if workers == 1:
        settings: dict[str, Any] = {"runtime_env": {"env_vars": environment}} if environment else {}
        actor: Any = ray.remote(TrainerActor).options(num_cpus=1, num_gpus=gpus, **settings).remote()
        try:
            return ray.get(actor.fit.remote(dest, options, data_node))
        except ray.exceptions.RayTaskError as exc:
            raise ShardsError(f"training failed: {one_line(task_cause(exc))}") from exc
        finally:
            ray.kill(actor)

    from ray.train import RunConfig, ScalingConfig

    from shards.tf.support import import_tensorflow

    import_tensorflow(quiet=not worker_logs)  # Ray Train's TensorflowTrainer imports it here
    from ray.train.tensorflow import TensorflowTrainer

    resources = {"CPU": 1.0, **({"GPU": gpus} if gpus else {})}
    trainer = TensorflowTrainer(
        _train_loop_per_worker,
        train_loop_config={"dest": dest, "options": options, "data_node": data_node, "environment": environment},
        scaling_config=ScalingConfig(num_workers=workers, use_gpu=gpus > 0, resources_per_worker=resources),
        run_config=RunConfig(name="shards-train", storage_path=storage_path),
    )
    try:
        result = trainer.fit()
    except Exception as exc:  # Ray Train wraps each worker's own error (TrainingFailedError)
        raise ShardsError(f"training failed: {one_line(worker_error(exc))}") from exc
    return json.loads((result.metrics or {})["report"])


def worker_error(exc: BaseException) -> BaseException:
    """The error a Ray Train worker raised, out of Train's wrappers: V2's `worker_failures` by
    rank, V1's exception chain, and the RayTaskError around the worker's own exception."""
    failures = getattr(exc, "worker_failures", None)
    if isinstance(failures, dict) and failures:
        exc = failures[min(failures)]
    while exc.__cause__ is not None and getattr(exc, "cause", None) is None:
        exc = exc.__cause__
    return task_cause(exc)
