"""Entry point for `ray job submit -- python jobs/preprocess.py SRC DEST [options]`.

Same options as `shards preprocess`. Inside a Ray job, RAY_ADDRESS is set, so the run joins the
job's cluster instead of starting one.
"""

from __future__ import annotations

import sys

from shards.cli import main

if __name__ == "__main__":
    sys.exit(main(["preprocess", *sys.argv[1:]]))
