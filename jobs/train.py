"""Train a Keras model on a shards dataset, on Ray: `shards train` for `ray job submit`.

    ray job submit --working-dir . -- python jobs/train.py DEST [--epochs N] [--workers N] ...

Same arguments, defaults and exit codes as `shards train --help` (RAY_ADDRESS is set inside a
job). One worker trains in a Ray actor (on a GPU when the cluster has one); several use Ray
Train's TensorflowTrainer. Prints one line per epoch and writes the model.
"""

from __future__ import annotations

import sys

from shards.cli import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
