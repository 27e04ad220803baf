"""`python -m bench.plan_manifest SRC [ray]`: list a (huge) SRC and plan its shards; time and peak
RSS. With `ray`, tar archives are indexed by Ray tasks, as in a run, so the peak is the driver's
alone: the listing it holds, not the indexing. A shuffled listing is regrouped for its plan too,
as a run does before its first task."""

from __future__ import annotations

import json
import sys
import time

from bench.procmem import status
from shards.layout.manifest import run_key
from shards.layout.plan import plan_shards
from shards.options import PreprocessOptions
from shards.sources import indexes_on_cluster, list_sources

if __name__ == "__main__":
    begin = time.perf_counter()
    options = PreprocessOptions()
    mapper = None
    if sys.argv[2:] == ["ray"] and indexes_on_cluster(sys.argv[1]):
        import ray

        from shards.cluster import map_tasks

        ray.init(include_dashboard=False, logging_level="ERROR")
        mapper = map_tasks
    listing = list_sources(sys.argv[1], mapper=mapper)
    key = run_key(listing.fingerprint(), options)
    plan = plan_shards(
        len(listing), options.samples_per_shard(len(listing)), options.seed, shuffle=not listing.keeps_order
    )
    listing = listing.planned(plan.order, plan.samples_per_shard)
    result = {
        "seconds": time.perf_counter() - begin,
        "inputs": len(listing),
        "shards": len(plan),
        "classes": len(listing.run_targets.classes),
        "peak_rss": status().get("VmHWM", 0),
        "parts": getattr(listing, "parts", 1),  # a listing in parts keeps them on local disk
    }
    print("RESULT " + json.dumps(result), flush=True)
