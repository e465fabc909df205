"""Shard owners: resident memory per provisioned subscriber, provisioning rate, takeover time.

Starts a private PostgreSQL (or uses BILLING_DSN), a local Ray cluster and the owners, measures
the owners' resident memory empty (the baseline, same run), provisions N prepaid subscribers
through the owners (one group commit per batch), measures again, then kills each owner process
(SIGKILL) and measures how long its takeover (epoch bump + bulk load) takes and the memory of the
reloaded state.

    .venv/bin/python benchmarks/bench_owner_memory.py --subscribers 1000000 [--mix]

Figures: RSS is the sum of VmRSS of the owner processes (/proc); bytes per subscriber are quoted
both over the whole RSS and over the growth from the empty baseline.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import signal
import statistics
import tempfile
import time
from pathlib import Path

import ray

from actors.bootstrap import ClusterHandles, provision_bulk_async, start_cluster, stop_cluster
from actors.messages import ProvisionRequest


def _rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def _owner_rss(handles: ClusterHandles) -> tuple[int, dict[str, int]]:
    per = {s.name: _rss(s.pid) for s in handles.statuses()}
    return sum(per.values()), per


def _request(index: int, mix: bool) -> ProvisionRequest:
    """``payg`` only, or the demo's mix: 50 % payg, 30 % postpaid-monthly, 20 % hybrid (bundles)."""
    sid = f"49{index:010d}"
    kind = index % 10 if mix else 0
    if kind < 5:
        return ProvisionRequest(sid, "payg", initial_balance_micros=10_000_000)
    if kind < 8:
        return ProvisionRequest(sid, "postpaid-monthly", credit_limit_micros=200_000_000)
    return ProvisionRequest(
        sid, "hybrid", initial_balance_micros=10_000_000, credit_limit_micros=50_000_000
    )


async def _provision(handles: ClusterHandles, count: int, chunk: int, mix: bool) -> float:
    started = time.perf_counter()
    for first in range(0, count, chunk):
        requests = [_request(i, mix) for i in range(first, min(first + chunk, count))]
        summary = await provision_bulk_async(handles, requests)
        if summary.created != len(requests):
            raise RuntimeError(
                f"created {summary.created} of {len(requests)}: {summary.rejected[:3]}"
            )
    return time.perf_counter() - started


def _wait_ready(handles: ClusterHandles, name: str, old_pid: int, timeout_s: float = 600) -> float:
    started = time.perf_counter()
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            status = ray.get(handles.owner(name).status.remote(), timeout=10)
            if status.pid != old_pid and status.ready:
                return time.perf_counter() - started
        except Exception:
            pass
        time.sleep(0.02)
    raise RuntimeError(f"{name} did not come back within {timeout_s}s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--subscribers", type=int, default=1_000_000)
    parser.add_argument("--owners", type=int, default=2)
    parser.add_argument("--vshards", type=int, default=1024)
    parser.add_argument("--chunk", type=int, default=5_000)
    parser.add_argument("--mix", action="store_true", help="the demo's plan mix (with bundles)")
    args = parser.parse_args()

    base: Path | None = None
    server = None
    dsn = os.environ.get("BILLING_DSN")
    if not dsn:
        from sharding.pgserver import EmbeddedPostgres

        base = Path(tempfile.mkdtemp(prefix="bench-owner-pg-"))
        base.chmod(0o755)
        server = EmbeddedPostgres(base / "data")
        dsn = server.start()
    ray.init(
        address="local",
        num_cpus=2,
        object_store_memory=100 * 1024 * 1024,
        namespace="billing",
        include_dashboard=False,
        log_to_driver=False,
    )
    handles = None
    try:
        handles = start_cluster(dsn, owners=args.owners, vshard_count=args.vshards)
        empty, _ = _owner_rss(handles)
        seconds = asyncio.run(_provision(handles, args.subscribers, args.chunk, args.mix))
        _untrimmed, _ = _owner_rss(handles)
        ray.get([h.trim_memory.remote() for h in handles.owners.values()])
        full, per = _owner_rss(handles)
        n = args.subscribers
        plans = "demo mix (50% payg, 30% postpaid-monthly, 20% hybrid)" if args.mix else "payg"
        print(f"owners: {args.owners}, vshards: {args.vshards}, subscribers: {n:,}, plans: {plans}")
        print(
            f"provisioning: {seconds:.1f} s, {n / seconds:,.0f} subscribers/s (one commit per batch)"
        )
        print(f"owner RSS empty (baseline): {empty / 2**20:.1f} MiB total")
        print(
            f"owner RSS provisioned: {full / 2**20:.1f} MiB total { ({k: round(v / 2**20, 1) for k, v in per.items()}) }"
        )
        print(
            f"bytes/subscriber, whole RSS: {full / n:.0f}; growth over baseline: {(full - empty) / n:.0f}"
        )
        takeovers = []
        loads = []
        for status in handles.statuses():
            os.kill(status.pid, signal.SIGKILL)
            takeovers.append(_wait_ready(handles, status.name, status.pid))
            loads.append(ray.get(handles.owner(status.name).status.remote()).load_seconds)
        reloaded_untrimmed, _ = _owner_rss(handles)
        ray.get([h.trim_memory.remote() for h in handles.owners.values()])
        reloaded, _ = _owner_rss(handles)
        print(f"(after reload, before malloc_trim: {reloaded_untrimmed / n:.0f} bytes/subscriber)")
        print(
            f"takeover after SIGKILL (until serving again): median {statistics.median(takeovers):.2f} s "
            f"(max {max(takeovers):.2f} s); of which epoch bump + load: median "
            f"{statistics.median(loads):.2f} s for ~{n // args.owners:,} subscribers each"
        )
        print(
            f"owner RSS after reload: {reloaded / 2**20:.1f} MiB; bytes/subscriber: {reloaded / n:.0f}"
        )
    finally:
        if handles is not None:
            stop_cluster(handles)
        ray.shutdown()
        if server is not None:
            server.stop()
        if base is not None:
            shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
