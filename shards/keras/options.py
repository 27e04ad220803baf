"""The options of training and prediction, importable without TensorFlow.

The `shards train` and `shards predict` commands take their defaults from these dataclasses, so
each default lives here and nowhere else, and `--help` answers without loading TensorFlow.
"""

from __future__ import annotations

import dataclasses
import os

from shards.errors import ConfigError
from shards.options import parse_bytes

AUGMENTATIONS = ("flip", "rotation", "shift", "zoom", "brightness")


@dataclasses.dataclass(frozen=True)
class TrainOptions:
    """How to train; validated once where the job's arguments are parsed."""

    epochs: int = 3
    batch_size: int = 64
    learning_rate: float = 1e-3
    seed: int = 0
    model_path: str | None = None
    output: str = "model.keras"
    augment: tuple[str, ...] = ()
    validation_split: float = 0.0
    mixed_precision: bool = False
    jit: bool = False
    in_memory: str | None = None
    memory_budget: str | None = None
    checkpoint_dir: str | None = None
    checkpoint_every: int = 50
    resume: bool = False
    stop_after_batches: int | None = None
    audit_dir: str | None = None
    cache_limit: str | None = None
    overwrite: bool = False

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 1:
            raise ConfigError(f"--epochs and --batch-size must be at least 1, got {self.epochs}, {self.batch_size}")
        unknown = sorted(set(self.augment) - set(AUGMENTATIONS))
        if unknown:
            raise ConfigError(f"--augment takes {', '.join(AUGMENTATIONS)}; unknown: {', '.join(unknown)}")
        if not 0 <= self.validation_split < 1:
            raise ConfigError(f"--validation-split must be in [0, 1), got {self.validation_split}")
        if self.resume and not self.checkpoint_dir:
            raise ConfigError("--resume needs --checkpoint-dir")
        if self.cache_limit is not None:
            parse_bytes(self.cache_limit, "--cache-limit")
        if self.in_memory not in (None, "host", "device"):
            raise ConfigError(f"--in-memory must be host or device, got {self.in_memory!r}")
        if self.memory_budget is not None:
            parse_bytes(self.memory_budget, "--memory-budget")
        if self.checkpoint_every < 1:
            raise ConfigError(f"--checkpoint-every must be at least 1, got {self.checkpoint_every}")


@dataclasses.dataclass(frozen=True)
class PredictOptions:
    """How to predict; `batch_size` is a number or "auto"; `threshold`: the score from which a
    multi-label class counts as predicted."""

    batch_size: int | str = "auto"
    top_k: int = 5
    host_memory: int | None = None
    threshold: float = 0.5

    def __post_init__(self) -> None:
        if self.batch_size != "auto" and (not isinstance(self.batch_size, int) or self.batch_size < 1):
            raise ConfigError(f"--batch-size must be a positive integer or 'auto', got {self.batch_size!r}")
        if self.top_k < 1:
            raise ConfigError(f"--top-k must be at least 1, got {self.top_k}")
        if not 0.0 <= self.threshold <= 1.0:
            raise ConfigError(f"--threshold must be between 0 and 1, got {self.threshold}")


def check_training(dest: str, options: TrainOptions, *, workers: int, gpus_per_worker: float | None) -> None:
    """Refuse a training request that cannot work, before TensorFlow or Ray is loaded.

    Raises:
        ConfigError: bad worker or GPU counts, a `--model` file that does not exist, or an
            `--output` that exists without `overwrite`.
        ManifestError: DEST holds no finished run.
    """
    from shards.cluster import check_workers
    from shards.io.fileio import check_output
    from shards.layout.index import read_run_index
    from shards.layout.manifest import load_manifest

    check_workers(workers)
    if gpus_per_worker is not None and gpus_per_worker < 0:
        raise ConfigError(f"--gpus-per-worker must be >= 0, got {gpus_per_worker}")
    if options.model_path and not os.path.isfile(options.model_path):
        raise ConfigError(f"--model {options.model_path}: no such file")
    check_output(options.output, "--output", overwrite=options.overwrite)
    manifest = load_manifest(dest)
    targets = manifest.targets
    if not targets.labelled:
        raise ConfigError(f"{dest}: the dataset has no labels (no classes); nothing to train on")
    # A sample without a class (-1) would fail deep inside TensorFlow with "Graph execution
    # error"; counted here from index.parquet, it is refused before any work, in one line.
    # (Multi-label samples may have no label at all; regression samples without one were rejects.)
    if not any(target.kind == "class" for target in targets.items):
        return
    stored = targets.from_index(read_run_index(dest, manifest, ["label"]).column("label"))
    classes = [stored[t.name] if targets.multi else stored for t in targets.items if t.kind == "class"]
    unlabeled = int(sum((values < 0).sum() for values in classes))
    if unlabeled:
        raise ConfigError(
            f"{dest}: {unlabeled:,} of {manifest.count:,} samples have no label (-1); training needs every sample "
            "labelled: give them labels in SRC and preprocess again (index.parquet lists them)"
        )


def default(options: type, name: str) -> object:
    """The default of field `name` of an options dataclass (for the CLI's arguments)."""
    return {field.name: field.default for field in dataclasses.fields(options)}[name]
