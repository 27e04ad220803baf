"""The `shards train` and `shards predict` commands: argument parsing and reports.

They share the CLI's parsing, exit codes (2 for bad arguments, 1 for a failed run) and error
lines with the other commands; `jobs/train.py` and `jobs/predict.py` are thin entry points over
them for `ray job submit`. Defaults come from `shards.keras.options`, so they live in one place and
`--help` answers without loading TensorFlow.
"""

from __future__ import annotations

import argparse
import json

from shards.keras.options import PredictOptions, TrainOptions, default


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    def train_default(name: str) -> object:
        return default(TrainOptions, name)

    parser.add_argument("dest", help="a finished shards run (folder or s3:// / gs:// prefix)")
    parser.add_argument("--epochs", type=int, default=train_default("epochs"), help="default %(default)s")
    parser.add_argument("--batch-size", type=int, default=train_default("batch_size"), help="default %(default)s")
    parser.add_argument(
        "--learning-rate", type=float, default=train_default("learning_rate"), help="default %(default)s"
    )
    parser.add_argument("--workers", type=int, default=1, help="1: a trainer actor; N: Ray Train workers")
    parser.add_argument("--gpus-per-worker", type=float, default=None, help="default: 1 if the cluster has GPUs")
    parser.add_argument(
        "--mixed-precision", action="store_true", help="float16 compute on GPUs (bfloat16 on CPUs); float32 weights"
    )
    parser.add_argument("--jit", action="store_true", help="compile the training step with XLA")
    parser.add_argument(
        "--in-memory",
        choices=("host", "device"),
        default=None,
        help="load the dataset once into host memory, or onto the GPU, and batch there (refused over --memory-budget)",
    )
    parser.add_argument(
        "--memory-budget", default=None, help="most bytes --in-memory may take (default: half the available memory)"
    )
    parser.add_argument("--model", default=None, help="a saved .keras model to train instead of the default CNN")
    parser.add_argument("--output", default=train_default("output"), help="where the model goes (%(default)s)")
    parser.add_argument("--overwrite", action="store_true", help="replace an --output model that exists")
    parser.add_argument("--augment", default="", help="comma-separated: flip,rotation,shift,zoom,brightness")
    parser.add_argument(
        "--validation-split", type=float, default=train_default("validation_split"), help="default %(default)s"
    )
    parser.add_argument("--seed", type=int, default=train_default("seed"), help="shuffle and split seed")
    parser.add_argument("--checkpoint-dir", default=None, help="weights + reader state, for --resume")
    parser.add_argument(
        "--checkpoint-every", type=int, default=train_default("checkpoint_every"), help="batches between checkpoints"
    )
    parser.add_argument("--resume", action="store_true", help="continue from --checkpoint-dir")
    parser.add_argument("--stop-after-batches", type=int, default=None, help="stop (and checkpoint) after N batches")
    parser.add_argument("--audit-dir", default=None, help="record the sample positions each rank trained on")
    parser.add_argument(
        "--cache-limit", default=None, help="for an s3:// or gs:// DEST: local shard cache per worker (default 8GiB)"
    )
    parser.add_argument("--address", default=None, help="Ray cluster to join (default: RAY_ADDRESS or a local one)")
    parser.add_argument(
        "--storage-path", default=None, help="Ray Train storage for multi-worker runs (shared path or s3://)"
    )
    parser.add_argument("--report", default=None, help="write the final report as JSON to this file")


def run_train(args: argparse.Namespace) -> int:
    options = TrainOptions(
        epochs=args.epochs,
        batch_size=args.batch_size,
        learning_rate=args.learning_rate,
        seed=args.seed,
        model_path=args.model,
        output=args.output,
        augment=tuple(a.strip() for a in args.augment.split(",") if a.strip()),
        validation_split=args.validation_split,
        mixed_precision=args.mixed_precision,
        jit=args.jit,
        in_memory=args.in_memory,
        memory_budget=args.memory_budget,
        checkpoint_dir=args.checkpoint_dir,
        checkpoint_every=args.checkpoint_every,
        resume=args.resume,
        stop_after_batches=args.stop_after_batches,
        audit_dir=args.audit_dir,
        cache_limit=args.cache_limit,
        overwrite=args.overwrite,
    )
    from shards.trainer import run_training  # refuses a bad request before TensorFlow loads

    report = run_training(
        args.dest,
        options,
        workers=args.workers,
        gpus_per_worker=args.gpus_per_worker,
        address=args.address,
        storage_path=args.storage_path,
        worker_logs=args.verbose,
    )
    for epoch in report["epochs"]:
        metrics = ", ".join(
            f"{k} {v:.4f}" for k, v in epoch.items() if k not in ("epoch", "batches", "seconds", "images_per_second")
        )
        print(f"epoch {epoch['epoch'] + 1}: {metrics}, {epoch['images_per_second']:,.0f} images/s per worker")
    if report.get("stopped_early"):
        print(f"stopped after {report['batches']} batches; continue with --resume")
    else:
        print(f"model written to {args.output}")
    if args.report:
        with open(args.report, "w", encoding="utf-8") as handle:
            json.dump(report, handle, indent=1)
    return 0


def add_predict_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("dest", help="a finished shards run (folder or s3:// / gs:// prefix)")
    parser.add_argument("--model", required=True, help="a saved .keras model")
    parser.add_argument("--out", required=True, help="the Parquet file to write")
    parser.add_argument("--overwrite", action="store_true", help="replace an --out file that exists")
    parser.add_argument(
        "--batch-size", default=default(PredictOptions, "batch_size"), help="N, or auto (halves on out-of-memory)"
    )
    parser.add_argument("--top-k", type=int, default=default(PredictOptions, "top_k"), help="default %(default)s")
    parser.add_argument(
        "--threshold",
        type=float,
        default=default(PredictOptions, "threshold"),
        help="multi-label targets: the score from which a class counts as predicted (default %(default)s)",
    )
    parser.add_argument(
        "--host-memory",
        default=None,
        help="memory for batches and their activations (measured on a probe batch), on top of TensorFlow and the "
        "model, e.g. 4GiB; default: half of what is available",
    )
    parser.add_argument("--workers", type=int, default=1, help="Ray tasks over groups of shards")
    parser.add_argument("--mixed-precision", action="store_true", help="float16 compute on GPUs")
    parser.add_argument("--address", default=None, help="Ray cluster to join (default: RAY_ADDRESS or a local one)")


def run_predict(args: argparse.Namespace) -> int:
    from shards.errors import ConfigError
    from shards.options import parse_bytes

    if args.batch_size != "auto" and not str(args.batch_size).isdigit():
        raise ConfigError(f"--batch-size must be a positive integer or 'auto', got {args.batch_size!r}")
    batch = args.batch_size if args.batch_size == "auto" else int(args.batch_size)
    options = PredictOptions(
        batch_size=batch,
        top_k=args.top_k,
        threshold=args.threshold,
        host_memory=parse_bytes(args.host_memory, "--host-memory") if args.host_memory else None,
    )
    from shards.tf.predict import predict_dataset  # checks workers and DEST before TensorFlow loads

    result = predict_dataset(
        args.dest,
        args.model,
        args.out,
        options,
        workers=args.workers,
        mixed_precision=args.mixed_precision,
        address=args.address,
        worker_logs=args.verbose,
        overwrite=args.overwrite,
    )
    rows, batch = result["rows"], result["batch_size"]
    print(f"wrote {rows:,} rows to {args.out} (batch size {batch}); scores are {result['scores']}")
    return 0
