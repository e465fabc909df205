"""Scale-out then scale-in on a 2-node ray.cluster_utils.Cluster (run by test_scaleout.py).

Not a test module: it runs in its own process (a multi-node cluster must not share the Ray
session of the other integration tests) and prints what it saw as one ``RESULT {json}`` line;
the test asserts on it. Usage: ``python tests/integration/_scaleout_scenario.py DSN``.
"""

from __future__ import annotations

import contextlib
import io
import json
import sys
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import ray  # noqa: E402
from ray.cluster_utils import Cluster  # noqa: E402

from actors.bootstrap import start_cluster, stop_cluster  # noqa: E402
from actors.messages import Answered, ProvisionRequest  # noqa: E402
from actors.owner import OwnerConfig  # noqa: E402
from billing.protocol import RequestType  # noqa: E402
from cluster import scaleout  # noqa: E402
from cluster.cli import main as billing  # noqa: E402
from failover.takeover import actor_infos  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _owner_helpers import submit, voice  # noqa: E402

STORE = 80 * 1024 * 1024
SUBSCRIBERS = [f"4917555{i:04d}" for i in range(24)]


class Client(threading.Thread):
    """Charges continuously (INITIAL + TERMINATION per subscriber), retrying like a front door."""

    def __init__(self, handles: Any) -> None:
        super().__init__(daemon=True)
        self.handles = handles
        self.stop = threading.Event()
        self.ok = 0
        self.failed: list[str] = []
        self.done_at: list[tuple[float, str]] = []

    def run(self) -> None:
        n = 0
        while not self.stop.is_set():
            sub = SUBSCRIBERS[n % len(SUBSCRIBERS)]
            session = f"scale-{n}"
            for request in (
                voice(session, sub, 0, RequestType.INITIAL, request_s=10),
                voice(session, sub, 1, RequestType.TERMINATION, request_s=None, used_s=1),
            ):
                [reply] = submit(self.handles, [request])
                if isinstance(reply, Answered):
                    self.ok += 1
                    self.done_at.append((time.monotonic(), sub))
                else:
                    self.failed.append(repr(reply)[:200])
            n += 1


def wait_for_rounds(client: Client, since: float) -> None:
    """Until every subscriber has been charged again after ``since`` (bounded)."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not client.failed:
        if {s for t, s in list(client.done_at) if t > since} >= set(SUBSCRIBERS):
            return
        time.sleep(0.05)


def cli(*words: str) -> tuple[int, str]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = billing(list(words))
    return code, out.getvalue()


def main(dsn: str) -> dict[str, Any]:
    cluster: Any = Cluster(
        initialize_head=True,
        shutdown_at_exit=False,
        head_node_args={"num_cpus": 1, "object_store_memory": STORE, "include_dashboard": False},
    )
    result: dict[str, Any] = {}
    handles = None
    try:
        ray.init(
            address=cluster.address,
            namespace="billing",
            log_to_driver=False,
            configure_logging=False,
        )
        head = cluster.head_node.node_id
        handles = start_cluster(
            dsn, owners=2, vshard_count=32, config=OwnerConfig(dsn=dsn), ready_timeout_s=120
        )
        provisioned = submit(
            handles,
            [ProvisionRequest(s, "payg", initial_balance_micros=50_000_000) for s in SUBSCRIBERS],
        )
        result["provisioned"] = sum(isinstance(r, Answered) for r in provisioned)
        before = handles.get_map()
        result["version_before"] = before.version
        result["head_owners"] = sorted(before.owners)

        node2 = cluster.add_node(num_cpus=1, object_store_memory=STORE)
        cluster.wait_for_nodes()
        result["node2"] = node2.node_id

        client = Client(handles)
        client.start()
        time.sleep(1.0)
        t0 = time.monotonic()
        result["rebalance_code"], result["rebalance_out"] = cli(
            "cluster", "rebalance", "--per-round", "4"
        )
        t1 = time.monotonic()
        after = handles.get_map()
        infos = actor_infos()
        result["version_after_rebalance"] = after.version
        result["owners_after_rebalance"] = {
            o: {"node": infos[o].node_id, "vshards": len(after.vshards_of(o))} for o in after.owners
        }
        result["status_json"] = json.loads(cli("cluster", "status", "--json")[1])
        result["status_text"] = cli("cluster", "status")[1]
        wait_for_rounds(client, t1)
        t2 = time.monotonic()
        result["drain_code"], result["drain_out"] = cli(
            "cluster", "drain", node2.node_id[:16], "--per-round", "4"
        )
        t3 = time.monotonic()
        wait_for_rounds(client, t3)
        # a drained node stays empty: a rebalance starts no owner on it and moves nothing
        result["rebalance_after_drain_code"], result["rebalance_after_drain_out"] = cli(
            "cluster", "rebalance"
        )
        final = handles.get_map()
        infos = actor_infos()
        result["final_version"] = final.version
        result["final_owners"] = {
            o: {"node": infos[o].node_id, "vshards": len(final.vshards_of(o))} for o in final.owners
        }
        result["node2_owner_states"] = {
            n: i.state for n, i in infos.items() if i.node_id == node2.node_id
        }

        # the drained node is removed under load, a third joins: the watcher (what
        # `billing cluster rebalance --watch` runs) starts owners there and moves vshards
        cluster.remove_node(node2)
        t4 = time.monotonic()
        wait_for_rounds(client, t4)
        stop = threading.Event()
        watcher = threading.Thread(
            target=scaleout.watch,
            args=(
                lambda: bool(scaleout.pending_nodes("billing", 2)),
                lambda: scaleout.rebalance("billing", 2, 4),
                0.2,
                stop.wait,
            ),
            daemon=True,
        )
        watcher.start()
        node3 = cluster.add_node(num_cpus=1, object_store_memory=STORE)
        cluster.wait_for_nodes()
        deadline = time.monotonic() + 90
        on_node3: dict[str, int] = {}
        while time.monotonic() < deadline and len(on_node3) < 2:
            time.sleep(0.2)
            now_map = handles.get_map()
            infos = actor_infos()
            on_node3 = {
                o: len(now_map.vshards_of(o))
                for o in now_map.owners
                if infos.get(o) and infos[o].node_id == node3.node_id
            }
        stop.set()
        watcher.join(60)
        t5 = time.monotonic()
        wait_for_rounds(client, t5)
        result["watch_owners_on_node3"] = on_node3
        result["watch_map_owners"] = sorted(handles.get_map().owners)
        client.stop.set()
        client.join(60)
        result["head"] = head
        result["client_ok"] = client.ok
        result["client_failed"] = client.failed[:5]
        result["client_failed_count"] = len(client.failed)
        moved = {s for s in SUBSCRIBERS if before.owner_of_key(s) != after.owner_of_key(s)}
        result["moved_subscribers"] = len(moved)
        result["ok_during_rebalance"] = sum(1 for t, _ in client.done_at if t0 <= t <= t1)
        result["ok_during_drain"] = sum(1 for t, _ in client.done_at if t2 <= t <= t3)
        result["moved_ok_on_node2"] = len({s for t, s in client.done_at if t1 < t < t2} & moved)
        result["moved_ok_after_drain"] = len({s for t, s in client.done_at if t > t3} & moved)
        result["ok_after_node3"] = len({s for t, s in client.done_at if t > t5})
        result["seconds"] = {"rebalance": t1 - t0, "drain": t3 - t2}
    finally:
        if handles is not None:
            with contextlib.suppress(Exception):
                live = {n for n, i in actor_infos().items() if i.state != "DEAD"}
                for name in live:
                    handles.owner(name)
                stop_cluster(handles)
        ray.shutdown()
        cluster.shutdown()
    return result


if __name__ == "__main__":
    print("RESULT " + json.dumps(main(sys.argv[1]), default=str))
