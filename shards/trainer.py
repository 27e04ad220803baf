"""Running training on Ray: one trainer actor, or Ray Train's TensorflowTrainer across workers.

The actor trains on the Keras backend the driver names (`KERAS_BACKEND`: TensorFlow by
default, or JAX or PyTorch, with no TensorFlow installed); several workers train on TensorFlow.
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
from typing import Any

from shards.cluster import cluster_resource, connect_ray, one_line, report_to_driver, task_cause, worker_error
from shards.errors import ConfigError, MissingExtraError, ShardsError
from shards.frameworks import check_installed, keras_backend
from shards.io import storage
from shards.keras.options import TrainOptions, check_training

logger = logging.getLogger(__name__)


class TrainerActor:
    """A Ray actor that trains on the shard stream (see `run_training`)."""

    def fit(self, dest: str, options: TrainOptions, data_node: str) -> dict[str, Any]:
        _log_shards_info()
        if keras_backend() == "tensorflow":
            from shards.tf.training import train_worker

            return train_worker(dest, options, data_node=data_node)
        from shards.keras.training import train_worker as train_on_backend

        return train_on_backend(dest, options, data_node=data_node)


def _log_shards_info() -> None:
    """A trainer process logs shards' INFO lines (its devices, each epoch); the driver shows the
    workers' output with `-v` only."""
    logging.basicConfig(format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("shards").setLevel(logging.INFO)


def _train_loop_per_worker(config: dict[str, Any]) -> None:
    import ray.train

    from shards.frameworks import import_tensorflow
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
    report_to_driver(report, context.get_world_rank())


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
    backend = check_backend(workers, joining=bool(address or os.environ.get("RAY_ADDRESS")))
    import ray

    connect_ray(address, worker_logs=worker_logs)
    gpus = gpus_per_worker if gpus_per_worker is not None else (1.0 if cluster_resource("GPU") >= workers else 0.0)
    data_node = ray.get_runtime_context().get_node_id()
    remote = storage.is_remote(dest)
    dest = dest if remote else os.path.abspath(dest)
    environment = storage.environment() if remote else {}
    logger.info("training on %s with %d worker(s), %.1f GPU each, Keras on %s", dest, workers, gpus, backend)
    if workers == 1:
        settings = {"runtime_env": {"env_vars": {**environment, "KERAS_BACKEND": backend}}}
        actor: Any = ray.remote(TrainerActor).options(num_cpus=1, num_gpus=gpus, **settings).remote()
        try:
            return ray.get(actor.fit.remote(dest, options, data_node))
        except ray.exceptions.RayTaskError as exc:
            cause = task_cause(exc)
            if isinstance(cause, MissingExtraError):  # the trainer's node lacks the framework
                raise MissingExtraError(f"on the trainer's node, {cause}") from exc
            raise ShardsError(f"training failed: {one_line(cause)}") from exc
        finally:
            ray.kill(actor)

    from ray.train import RunConfig, ScalingConfig

    from shards.frameworks import import_tensorflow

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


def check_backend(workers: int, *, joining: bool) -> str:
    """The Keras backend the trainers will use (`KERAS_BACKEND`), refused in one line when it
    cannot train here: several workers on another backend than TensorFlow, or (on a local
    cluster, whose trainers share this machine's install) its framework not installed.

    Raises:
        ConfigError: an unknown backend, or several workers on another backend.
        MissingExtraError: the framework, or Keras, is not installed (local clusters only: a
            cluster's trainer nodes may have what the driver's node lacks).
    """
    backend = keras_backend()
    if workers > 1 and backend != "tensorflow":
        raise ConfigError(
            f"--workers {workers} trains on TensorFlow (MultiWorkerMirroredStrategy); KERAS_BACKEND {backend} "
            "trains with one worker (or use jobs/train_torch.py for PyTorch across workers)"
        )
    if not joining:
        where = "" if backend == "tensorflow" else f" on KERAS_BACKEND {backend}"
        check_installed(backend, f"training{where}")
        check_installed("keras", f"training{where}")
    return backend
