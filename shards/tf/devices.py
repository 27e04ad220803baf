"""Which devices a trainer has: what Ray assigned against what TensorFlow can see.

A GPU node whose TensorFlow was installed without CUDA (the `tensorflow-cpu` wheel that a plain
install takes on x86_64) trains on its CPU and exits 0: the user pays for a GPU and gets nothing
said. Every trainer (the actor, each Ray Train worker) therefore logs both sides and refuses, in
one line, to train on the CPU when Ray gave it a GPU.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any

from shards.errors import ConfigError

logger = logging.getLogger(__name__)


def check_devices(tf: Any) -> list[str]:
    """Log the GPUs Ray assigned to this process and the devices TensorFlow sees; returns the
    names of TensorFlow's GPUs.

    Raises:
        ConfigError: Ray assigned a GPU and TensorFlow sees none, with the cause and both fixes.
    """
    import ray

    assigned = [str(i) for i in ray.get_gpu_ids()] if ray.is_initialized() else []
    gpus = [device.name for device in tf.config.list_physical_devices("GPU")]
    logger.info(
        "Ray assigned GPU(s) [%s]; TensorFlow %s sees %s",
        ", ".join(assigned),
        tf.__version__,
        [device.name for device in tf.config.list_physical_devices()],
    )
    if assigned and not gpus:
        cause = (
            "this TensorFlow is built without CUDA"
            if not tf.test.is_built_with_cuda()
            else "CUDA found no usable device (check the driver with nvidia-smi)"
        )
        raise ConfigError(
            f"Ray gave this trainer GPU {', '.join(assigned)} but TensorFlow sees no GPU: {cause}; install "
            "the CUDA build on GPU nodes (README: GPU nodes) or train on the CPU on purpose with --gpus-per-worker 0"
        )
    return gpus


def feeding_scope(tf: Any, device: str | None) -> Any:
    """Where to build a single-process model so Keras feeds `device` ahead of each step: under
    a one-device strategy, `fit` distributes its dataset through the strategy, which copies the
    next batches to the device while the current step runs (cardinality kept). None: as built."""
    return tf.distribute.OneDeviceStrategy(device).scope() if device else contextlib.nullcontext()
