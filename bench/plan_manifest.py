"""`python -m bench.plan_manifest SRC`: list a (huge) SRC and plan its shards; time and peak RSS."""

from __future__ import annotations

import json
import sys
import time

from bench.procmem import status
from shards.layout.manifest import run_key
from shards.layout.plan import plan_shards
from shards.options import PreprocessOptions
from shards.sources import list_sources

if __name__ == "__main__":
    begin = time.perf_counter()
    options = PreprocessOptions()
    listing = list_sources(sys.argv[1])
    key = run_key(listing.fingerprint(), options)
    plan = plan_shards(
        len(listing), options.samples_per_shard(len(listing)), options.seed, shuffle=not listing.keeps_order
    )
    result = {
        "seconds": time.perf_counter() - begin,
        "inputs": len(listing),
        "shards": len(plan),
        "classes": len(listing.classes),
        "peak_rss": status().get("VmHWM", 0),
    }
    print("RESULT " + json.dumps(result), flush=True)
