"""Train a PyTorch model on a shards dataset with Ray Train's TorchTrainer, fed by `to_torch`.

    ray job submit --working-dir . -- python jobs/train_torch.py DEST [--workers 2] [--epochs 3] ...

Each Ray Train worker reads its own rank's slice of every epoch (the rank comes from the
torch.distributed process group Ray Train sets up: gloo on CPUs, NCCL on GPUs) through a
DataLoader whose workers split the rank's batches again. Prints one line per epoch. Exit 0 on
success, 2 for bad arguments, 1 for a failed run, each with a one-line reason.
"""

from __future__ import annotations

import argparse
import json
import sys

from shards.errors import ConfigError, ShardsError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="train_torch.py", description=__doc__.splitlines()[0])
    parser.add_argument("dest", help="a finished shards run with one class target")
    parser.add_argument("--workers", type=int, default=2, help="Ray Train workers (default %(default)s)")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=64, help="per worker")
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--loader-workers", type=int, default=2, help="DataLoader workers per Ray Train worker")
    parser.add_argument("--audit-dir", default=None, help="record the sources each rank trained on, per epoch")
    parser.add_argument("--gpu", action="store_true", help="one GPU per worker (NCCL)")
    parser.add_argument("--address", default=None, help="Ray cluster to join (default: RAY_ADDRESS or a local one)")
    parser.add_argument("--storage-path", default=None, help="Ray Train storage (shared path or s3://)")
    parser.add_argument("--report", default=None, help="write rank 0's report as JSON to this file")
    args = parser.parse_args(argv)
    try:
        from shards.torch.training import TorchTrainOptions, run_torch_training

        options = TorchTrainOptions(
            epochs=args.epochs,
            batch_size=args.batch_size,
            learning_rate=args.learning_rate,
            seed=args.seed,
            loader_workers=args.loader_workers,
            audit_dir=args.audit_dir,
        )
        report = run_torch_training(
            args.dest,
            options,
            workers=args.workers,
            use_gpu=args.gpu,
            address=args.address,
            storage_path=args.storage_path,
        )
    except ConfigError as exc:
        print(f"train_torch.py: error: {exc}", file=sys.stderr)
        return 2
    except ShardsError as exc:
        print(f"train_torch.py: error: {exc}", file=sys.stderr)
        return 1
    for epoch in report["epochs"]:
        print(
            f"epoch {epoch['epoch'] + 1}: loss {epoch['loss']:.4f}, accuracy {epoch['accuracy']:.4f}, "
            f"{epoch['images_per_second']:,.0f} images/s on rank 0 of {report['world_size']}"
        )
    if args.report:
        with open(args.report, "w", encoding="utf-8") as handle:
            json.dump(report, handle, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
