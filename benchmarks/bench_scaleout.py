"""Vshard move time on scale-out and scale-in: small rounds against one round (the baseline).

A 2-node ray.cluster_utils.Cluster (1 CPU, 80 MiB object store each), an embedded PostgreSQL,
2 owners on node 1 holding ``--subscribers`` payg subscribers over 1,024 vshards. Then, through
cluster/scaleout.py (what ``billing cluster rebalance`` / ``drain`` run):

1. rebalance onto node 2 in rounds of ``--per-round`` vshards, drain node 2 the same way;
2. baseline, same run: rebalance and drain again with every vshard in ONE round.

A round is the time its vshards are unavailable (the givers drop them, the takers bump epochs and
load); printed: rounds, vshards per round, median and max round time, total.

    .venv/bin/python benchmarks/bench_scaleout.py --subscribers 50000
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _line(label: str, report: Any, seconds: float) -> str:
    times = [r.seconds * 1000 for r in report.rounds]
    per = report.moved / max(len(times), 1)
    return (
        f"{label:38} {report.moved:5} vshards {len(times):4} rounds of ~{per:5.0f}"
        f"  round median {statistics.median(times):8.1f} ms  max {max(times):8.1f} ms"
        f"  total {seconds:6.2f} s"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--subscribers", type=int, default=50_000)
    parser.add_argument("--vshards", type=int, default=1024)
    parser.add_argument("--per-round", type=int, default=8)
    args = parser.parse_args()

    import ray
    from ray.cluster_utils import Cluster

    from actors.bootstrap import provision_bulk, start_cluster, stop_cluster
    from actors.messages import ProvisionRequest
    from actors.owner import OwnerConfig
    from cluster import scaleout
    from sharding.pgserver import EmbeddedPostgres

    base = Path(tempfile.mkdtemp(prefix="bench-scaleout-"))
    base.chmod(0o755)
    server = EmbeddedPostgres(base / "pg")
    dsn = server.start()
    store = 80 * 1024 * 1024
    cluster: Any = Cluster(
        initialize_head=True,
        shutdown_at_exit=False,
        head_node_args={"num_cpus": 1, "object_store_memory": store, "include_dashboard": False},
    )
    handles = None
    try:
        ray.init(
            address=cluster.address,
            namespace="billing",
            log_to_driver=False,
            configure_logging=False,
        )
        handles = start_cluster(
            dsn,
            owners=2,
            vshard_count=args.vshards,
            config=OwnerConfig(dsn=dsn),
            ready_timeout_s=300,
        )
        started = time.perf_counter()
        for first in range(0, args.subscribers, 5000):
            ids = range(first, min(first + 5000, args.subscribers))
            provision_bulk(
                handles,
                [
                    ProvisionRequest(f"49170{i:07d}", "payg", initial_balance_micros=10**7)
                    for i in ids
                ],
            )
        print(
            f"{args.subscribers:,} subscribers, {args.vshards} vshards, provisioned in"
            f" {time.perf_counter() - started:.1f} s"
        )
        node2 = cluster.add_node(num_cpus=1, object_store_memory=store)
        cluster.wait_for_nodes()
        for label, per_round in (("small rounds", args.per_round), ("baseline: one round", 10**6)):
            t = time.perf_counter()
            out = scaleout.rebalance("billing", 2, per_round)
            print(_line(f"scale-out, {label}", out, time.perf_counter() - t))
            t = time.perf_counter()
            back = scaleout.drain("billing", node2.node_id, per_round)
            print(_line(f"scale-in (drain), {label}", back, time.perf_counter() - t))
    finally:
        if handles is not None:
            stop_cluster(handles)
        ray.shutdown()
        cluster.shutdown()
        server.stop()
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
