"""Train a Keras model on a shards dataset, on Ray.

    python jobs/train.py DEST [--epochs N] [--batch-size N] [--workers N] [--gpus-per-worker G]
                              [--mixed-precision] [--model FILE.keras] [--output FILE.keras]
                              [--augment flip,rotation,shift,zoom,brightness] [--validation-split F]
                              [--checkpoint-dir DIR [--resume]] [--address ADDR]

Works as `ray job submit -- python jobs/train.py ...` (RAY_ADDRESS is set inside a job). One
worker trains in a Ray actor (on a GPU when the cluster has one); several use Ray Train's
TensorflowTrainer. Prints one line per epoch (loss, accuracy, images/s) and writes the model.
"""

from __future__ import annotations

import argparse
import json
import sys


def parse_arguments(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="jobs/train.py", description="Train a Keras model on shards, on Ray.")
    parser.add_argument("dest")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--gpus-per-worker", type=float, default=None, help="default: 1 if the cluster has GPUs")
    parser.add_argument("--mixed-precision", action="store_true", help="float16 compute on GPUs")
    parser.add_argument("--model", default=None, help="a saved .keras model to train instead of the default CNN")
    parser.add_argument("--output", default="model.keras")
    parser.add_argument("--augment", default="", help="comma-separated: flip,rotation,shift,zoom,brightness")
    parser.add_argument("--validation-split", type=float, default=0.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--checkpoint-dir", default=None, help="weights + reader state, for --resume")
    parser.add_argument("--checkpoint-every", type=int, default=50, help="batches between checkpoints")
    parser.add_argument("--resume", action="store_true", help="continue from --checkpoint-dir")
    parser.add_argument("--stop-after-batches", type=int, default=None, help="stop (and checkpoint) after N batches")
    parser.add_argument("--audit-dir", default=None, help="record the sample positions each rank trained on")
    parser.add_argument(
        "--cache-limit",
        default=None,
        help="for an s3:// or gs:// DEST: local shard cache per worker, e.g. 4GiB (default 8GiB)",
    )
    parser.add_argument("--address", default=None)
    parser.add_argument(
        "--storage-path",
        default=None,
        help="Ray Train storage for multi-worker runs (shared path or s3://; default ~/ray_results)",
    )
    parser.add_argument("--report", default=None, help="write the final report as JSON to this file")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_arguments(sys.argv[1:] if argv is None else argv)
    from shards.errors import ShardsError

    try:
        from shards.tf.training import TrainOptions

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
            checkpoint_dir=args.checkpoint_dir,
            checkpoint_every=args.checkpoint_every,
            resume=args.resume,
            stop_after_batches=args.stop_after_batches,
            audit_dir=args.audit_dir,
            cache_limit=args.cache_limit,
        )
        from shards.tf.trainer import run_training

        report = run_training(
            args.dest,
            options,
            workers=args.workers,
            gpus_per_worker=args.gpus_per_worker,
            address=args.address,
            storage_path=args.storage_path,
        )
    except ShardsError as exc:
        print(f"train: error: {exc}", file=sys.stderr)
        return 2
    for epoch in report["epochs"]:
        metrics = ", ".join(
            f"{k} {v:.4f}" for k, v in epoch.items() if k not in ("epoch", "batches", "seconds", "images_per_second")
        )
        print(
            f"epoch {epoch['epoch'] + 1}: {metrics}, {epoch['images_per_second']:,.0f} images/s per worker", flush=True
        )
    if report.get("stopped_early"):
        print(f"stopped after {report['batches']} batches; continue with --resume")
    else:
        print(f"model written to {args.output}")
    if args.report:
        with open(args.report, "w", encoding="utf-8") as handle:
            json.dump(report, handle, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
