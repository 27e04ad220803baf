"""Predict a shards dataset with a saved Keras model, into Parquet: `shards predict` for
`ray job submit`.

    ray job submit --working-dir . -- python jobs/predict.py DEST --model FILE.keras --out P.parquet

Same arguments, defaults and exit codes as `shards predict --help`. One row per sample, in
dataset order: row, label, prediction, top_k, top_k_scores, source.
"""

from __future__ import annotations

import sys

from shards.cli import main

if __name__ == "__main__":
    sys.exit(main(["predict", *sys.argv[1:]]))
