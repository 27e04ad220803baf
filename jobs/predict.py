"""Predict a shards dataset with a saved Keras model, into Parquet, never running out of memory.

    python jobs/predict.py DEST --model FILE.keras --out predictions.parquet
                           [--batch-size auto|N] [--top-k K] [--host-memory 4GiB]
                           [--workers N] [--mixed-precision] [--address ADDR]

One row per sample, in dataset order: row, label, prediction, top_k, top_k_scores, source.
`--batch-size auto` starts at 1024 and halves on out-of-memory errors, retrying the same samples.
"""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="jobs/predict.py", description="Predict shards with a Keras model.")
    parser.add_argument("dest")
    parser.add_argument("--model", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--batch-size", default="auto")
    parser.add_argument("--top-k", type=int, default=5)
    parser.add_argument("--host-memory", default=None, help="cap batches to fit this host memory, e.g. 4GiB")
    parser.add_argument("--workers", type=int, default=1, help="Ray tasks over groups of shards")
    parser.add_argument("--mixed-precision", action="store_true")
    parser.add_argument("--address", default=None)
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)

    from shards.errors import ShardsError
    from shards.options import parse_bytes
    from shards.tf.predict import PredictOptions, predict_dataset

    try:
        batch = args.batch_size if args.batch_size == "auto" else int(args.batch_size)
        options = PredictOptions(
            batch_size=batch, top_k=args.top_k, host_memory=parse_bytes(args.host_memory) if args.host_memory else None
        )
        result = predict_dataset(
            args.dest,
            args.model,
            args.out,
            options,
            workers=args.workers,
            mixed_precision=args.mixed_precision,
            address=args.address,
        )
    except (ShardsError, ValueError) as exc:
        print(f"predict: error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {result['rows']:,} rows to {args.out} (batch size {result['batch_size']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
