"""Hosts a multi-node `ray.cluster_utils.Cluster` in its own process, for tests.

The test process already runs the session's `ray.init`, so the cluster lives here: it prints
one JSON line {"address", "nodes"} when ready, then obeys stdin: `remove` drops the last worker
node (a node lost mid-run); end of input shuts the whole cluster down.

    python -m tests.cluster_host NODES [CPUS_PER_NODE]
"""

from __future__ import annotations

import json
import sys

from ray.cluster_utils import Cluster


def main() -> None:
    count = int(sys.argv[1])
    cpus = int(sys.argv[2]) if len(sys.argv) > 2 else 1
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": cpus, "include_dashboard": False})
    workers = [cluster.add_node(num_cpus=cpus) for _ in range(count - 1)]
    cluster.wait_for_nodes()
    nodes = [cluster.head_node.node_id] + [w.node_id for w in workers]
    print(json.dumps({"address": cluster.address, "nodes": nodes}), flush=True)
    try:
        for line in sys.stdin:
            if line.strip() == "remove" and workers:
                cluster.remove_node(workers.pop(), allow_graceful=False)
                print(json.dumps({"removed": True}), flush=True)
    finally:
        cluster.shutdown()


if __name__ == "__main__":
    main()
