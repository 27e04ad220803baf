"""PyTorch training across Ray Train workers (`TorchTrainer`), each fed by `to_torch`.

Ray Train starts one process per worker and initialises `torch.distributed` (gloo on CPUs, NCCL
on GPUs), so `to_torch` takes each worker's rank and world size from it: the ranks read
disjoint slices of one global order, every sample once an epoch. A DataLoader's workers split
each rank's batches again. The model is a small CNN whose first step scales the stored uint8
bytes on the device, as the Keras model does; `jobs/train_torch.py` is the entry point for
`ray job submit`.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from typing import Any

from shards.cluster import connect_ray, one_line, report_to_driver, worker_error
from shards.errors import ConfigError, ShardsError
from shards.frameworks import import_torch
from shards.io.fileio import write_bytes_atomically
from shards.read.dataset import RunReader
from shards.torch.dataset import to_torch

torch = import_torch("PyTorch training")
logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class TorchTrainOptions:
    """How `jobs/train_torch.py` trains; validated where the job's arguments are parsed."""

    epochs: int = 3
    batch_size: int = 64
    learning_rate: float = 1e-3
    seed: int = 0
    loader_workers: int = 2
    audit_dir: str | None = None

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 1:
            raise ConfigError(f"--epochs and --batch-size must be at least 1, got {self.epochs}, {self.batch_size}")
        if self.loader_workers < 0:
            raise ConfigError(f"--loader-workers must be >= 0, got {self.loader_workers}")


def small_cnn(classes: int, channels: int = 3) -> Any:
    """Three strided convolutions with GroupNorm, global pooling and a linear head (logits);
    takes uint8 [B, C, H, W] and scales it to [0, 1] itself."""
    layers: list[Any] = []
    width = channels
    for filters in (16, 32, 64):
        layers += [
            torch.nn.Conv2d(width, filters, 3, stride=2, padding=1),
            torch.nn.ReLU(),
            torch.nn.GroupNorm(8, filters),
        ]
        width = filters
    body = torch.nn.Sequential(
        *layers, torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(width, classes)
    )

    class Scaled(torch.nn.Module):  # type: ignore[name-defined]
        def __init__(self) -> None:
            super().__init__()
            self.body = body

        def forward(self, images: Any) -> Any:
            return self.body(images.float() / 255.0)

    return Scaled()


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """One Ray Train worker: its rank's slice of each epoch through a DataLoader, DDP-wrapped."""
    import ray.train
    import ray.train.torch

    options: TorchTrainOptions = config["options"]
    context = ray.train.get_context()
    rank = context.get_world_rank()
    torch.manual_seed(options.seed)
    dataset = RunReader(config["dest"])
    classes = len(dataset.classes)
    audit = options.audit_dir is not None
    feed = to_torch(
        dataset,
        options.batch_size,
        shuffle=True,
        seed=options.seed,
        channels_first=True,
        columns=("source",) if audit else (),
    )
    loader = torch.utils.data.DataLoader(feed, batch_size=None, num_workers=options.loader_workers)
    model = ray.train.torch.prepare_model(small_cnn(classes, dataset.shape[2]))
    device = ray.train.torch.get_device()
    optimizer = torch.optim.Adam(model.parameters(), lr=options.learning_rate)
    loss_of = torch.nn.CrossEntropyLoss()
    epochs, seen = [], {}
    for epoch in range(options.epochs):
        feed.set_epoch(epoch)
        started, samples = time.perf_counter(), 0
        # Summed on the device, detached: float(loss) on a tensor that requires grad warned on
        # every rank, and each float() waits for the device.
        total, correct = torch.zeros((), device=device), torch.zeros((), device=device)
        sources: list[str] = []
        for batch in loader:
            images, labels = batch[0].to(device), batch[1].to(device)
            optimizer.zero_grad()
            logits = model(images)
            loss = loss_of(logits, labels)
            loss.backward()
            optimizer.step()
            total += loss.detach() * len(labels)
            correct += (logits.detach().argmax(dim=1) == labels).sum()
            samples += len(labels)
            if audit:
                sources += batch[2]["source"]
        seconds = time.perf_counter() - started
        epochs.append(
            {
                "epoch": epoch,
                "loss": float(total) / max(samples, 1),
                "accuracy": float(correct) / max(samples, 1),
                "samples": samples,
                "images_per_second": samples / seconds,
            }
        )
        seen[str(epoch)] = sources
    if options.audit_dir is not None:
        os.makedirs(options.audit_dir, exist_ok=True)
        record = json.dumps({"rank": rank, "world_size": context.get_world_size(), "epochs": seen}).encode()
        write_bytes_atomically(os.path.join(options.audit_dir, f"rank-{rank}.json"), record)
    report_to_driver({"rank": rank, "world_size": context.get_world_size(), "epochs": epochs}, rank)


def run_torch_training(
    dest: str,
    options: TorchTrainOptions,
    *,
    workers: int = 2,
    use_gpu: bool = False,
    address: str | None = None,
    storage_path: str | None = None,
    worker_logs: bool = True,
) -> dict[str, Any]:
    """Train the small CNN on DEST with `workers` Ray Train workers; returns rank 0's report.

    Raises:
        ConfigError: bad counts, or a dataset without one class target (before Ray work).
        ManifestError: DEST holds no finished run.
        ShardsError: a worker failed (its own error, in one line).
    """
    from shards.cluster import check_workers
    from shards.layout.manifest import load_manifest

    check_workers(workers)
    targets = load_manifest(dest).targets
    if targets.multi or targets.items[0].kind != "class" or not targets.labelled:
        raise ConfigError(f"{dest}: jobs/train_torch.py trains one class target; this run's targets differ")
    connect_ray(address, worker_logs=worker_logs)
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"dest": os.path.abspath(dest), "options": options},
        scaling_config=ScalingConfig(num_workers=workers, use_gpu=use_gpu),
        run_config=RunConfig(name="shards-train-torch", storage_path=storage_path),
    )
    try:
        result = trainer.fit()
    except Exception as exc:  # Ray Train wraps each worker's own error (TrainingFailedError)
        raise ShardsError(f"training failed: {one_line(worker_error(exc))}") from exc
    report: dict[str, Any] = json.loads((result.metrics or {})["report"])
    return report
