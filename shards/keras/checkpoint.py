"""Checkpoints of a training run: the weights and the reader's state, saved together.

Reader state (epoch, position, seed) is checkpointed with the weights, so a restarted run
continues the interrupted epoch without repeating or skipping a sample, also with another
number of workers. The callback is plain Keras 3, so it works on every backend and under the
multi-worker loop of `shards.tf.distributed_fit`.
"""

from __future__ import annotations

import json
import logging
import os
import time
from typing import Any

from shards.errors import ConfigError
from shards.frameworks import import_keras
from shards.io.fileio import temporary_path, write_bytes_atomically
from shards.read.sampling import position_after
from shards.read.spec import ReadSpec, ReadState

keras = import_keras("training")
logger = logging.getLogger(__name__)

CHECKPOINT_MODEL = "model.keras"
CHECKPOINT_STATE = "state.json"


def read_checkpoint_state(checkpoint_dir: str | None) -> ReadState | None:
    """The reader state saved with the last checkpoint, or None when there is none.

    Raises:
        ConfigError: the file is not a reader state this version can resume safely.
    """
    if not checkpoint_dir:
        return None
    path = os.path.join(checkpoint_dir, CHECKPOINT_STATE)
    if not os.path.exists(path):
        return None
    try:
        with open(path, encoding="utf-8") as handle:
            return ReadState.from_json(json.load(handle))
    except (OSError, ValueError) as exc:  # ConfigError is a ValueError
        raise ConfigError(f"{path}: {exc}") from None


class ProgressCheckpoint(keras.callbacks.Callback):  # type: ignore[name-defined]
    """Counts trained batches; saves weights + reader state every N batches and at epoch ends.

    The position is measured in the epoch's global order (samples consumed by all ranks), which
    is what makes a resume valid for any world size. Only the chief (rank 0) writes.
    """

    def __init__(
        self,
        *,
        dataset_size: int,
        spec: ReadSpec,
        first_epoch: int,
        first_start: int,
        checkpoint_dir: str | None,
        every: int,
        is_chief: bool,
        stop_after_batches: int | None,
    ) -> None:
        super().__init__()
        self.dataset_size, self.spec = dataset_size, spec
        self.first_epoch, self.first_start = first_epoch, first_start
        self.checkpoint_dir, self.every, self.is_chief = checkpoint_dir, every, is_chief
        self.stop_after_batches = stop_after_batches
        self.epoch = first_epoch
        self.batches_in_epoch = 0
        self.total_batches = 0
        self.epoch_log: list[dict[str, Any]] = []
        self._epoch_started = 0.0

    def position(self) -> int:
        start = self.first_start if self.epoch == self.first_epoch else 0
        return position_after(self.dataset_size, self.spec, self.batches_in_epoch, start=start)

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        self.epoch, self.batches_in_epoch = epoch, 0
        self._epoch_started = time.perf_counter()

    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
        self.batches_in_epoch += 1
        self.total_batches += 1
        if self.total_batches % self.every == 0:
            self.save(self.epoch, self.position())
        if self.stop_after_batches is not None and self.total_batches >= self.stop_after_batches:
            self.model.stop_training = True
            self.save(self.epoch, self.position())

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        if self.model.stop_training and self.position() < self.dataset_size:
            return  # interrupted mid-epoch: the state saved at the stop stands
        seconds = time.perf_counter() - self._epoch_started
        samples = self.batches_in_epoch * self.spec.batch_size
        record = {
            "epoch": epoch,
            "batches": self.batches_in_epoch,
            "seconds": round(seconds, 3),
            "images_per_second": round(samples / seconds, 1) if seconds else None,
        }
        record.update({k: float(v) for k, v in (logs or {}).items()})
        self.epoch_log.append(record)
        logger.info("epoch %d: %s", epoch + 1, record)  # numbered from 1, as the driver prints them
        self.save(epoch + 1, 0)

    def save(self, epoch: int, position: int) -> None:
        if not (self.is_chief and self.checkpoint_dir):
            return
        os.makedirs(self.checkpoint_dir, exist_ok=True)
        with temporary_path(os.path.join(self.checkpoint_dir, CHECKPOINT_MODEL)) as temp:
            self.model.save(temp + ".keras")
            os.replace(temp + ".keras", temp)
        # The whole spec is saved, so a resume can check that it continues the same order.
        state = ReadState(self.spec, epoch, position, self.batches_in_epoch).to_json()
        write_bytes_atomically(os.path.join(self.checkpoint_dir, CHECKPOINT_STATE), json.dumps(state).encode())
