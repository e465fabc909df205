"""A gRPC server's own CPU per unary CreditControl, for variants of the echo and of the front door.

bench_grpc.py measures the whole system (front door, owners, PostgreSQL, Ray); on two shared
cores its figures move with everything else that runs. This measures one server process at a
time: the same load generator (cluster/loadgen.py, unary, 64 in flight, its mix of SMS events,
voice and data sessions) drives each server for ``--duration`` seconds, and the server process's
CPU time (every thread, from /proc) is divided by the requests answered. Servers are measured in
rotation, ``--rounds`` times, each kind in the same rounds; medians and ratios to the first kind.

Kinds (``--kinds``, comma-separated):

- ``echo``: benchmarks/echo_server.py as bench_grpc runs it (the yardstick);
- ``echo-suspend``: the echo, but the handler awaits a future resolved by a callback one loop
  iteration later (the asyncio floor of a handler that waits for its answer);
- ``echo-limit``: the echo with ``maximum_concurrent_rpcs`` (as the front door sets it);
- ``echo-services``: the echo with the health and reflection services registered;
- ``echo-config``: the echo in the front door's server configuration until session 9
  (``maximum_concurrent_rpcs``, its options, the Accounts and Tariffs services unimplemented,
  health and reflection, every method registered);
- ``frontdoor``: the real front door (cluster.frontdoor.FrontDoor: validation, routing,
  batching, the owner channel of actors/channel.py) against a fake owner process that answers
  every batch over the channel after ``--owner-delay-ms`` (a commit's latency), with answers
  shaped as an owner's; no Ray, no database. The owner's CPU is printed apart.

``--root`` (repeatable) imports the front door from another checkout (a ``git worktree``), so
``frontdoor`` before and after run in the same rounds: kinds become ``frontdoor@<root>``.
``--rate`` drives an open loop instead of 64 in flight; a kind ending in ``+env`` runs with the
``--env NAME=VALUE`` settings (e.g. ``GRPC_EXPERIMENTS``). Each run also prints the server's
context switches per request. On a machine shared with other work the CPU figures move by
±20 µs per run: bench_grpc_calls.py counts Python calls per request instead, which do not move.

    .venv/bin/python benchmarks/bench_grpc_server.py --kinds echo,frontdoor --rounds 5
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

KINDS = ("echo", "echo-suspend", "echo-limit", "echo-services", "echo-config", "frontdoor")


# ---------------------------------------------------------------------------------------------
# Servers (each in its own process: ``--serve KIND PORT``)
# ---------------------------------------------------------------------------------------------


async def _serve_echo(kind: str, port: int) -> None:
    import grpc

    from benchmarks.echo_server import EchoCharging, echo
    from cluster.pb import billing_pb2 as pb
    from cluster.pb import billing_pb2_grpc as pb_grpc

    class Suspending(EchoCharging):
        async def CreditControl(
            self, request: pb.CreditControlRequest, context: Any
        ) -> pb.CreditControlAnswer:
            future: asyncio.Future[pb.CreditControlAnswer] = loop.create_future()
            loop.call_soon(future.set_result, echo(request))
            return await future

    loop = asyncio.get_running_loop()
    if kind == "echo-limit":
        server = grpc.aio.server(maximum_concurrent_rpcs=20_000)
    elif kind == "echo-config":
        server = grpc.aio.server(
            maximum_concurrent_rpcs=20_000,
            options=[
                ("grpc.max_receive_message_length", 8 * 1024 * 1024),
                ("grpc.so_reuseport", 0),
            ],
        )
    else:
        server = grpc.aio.server()
    pb_grpc.add_ChargingServicer_to_server(
        Suspending() if kind == "echo-suspend" else EchoCharging(), server
    )
    if kind == "echo-config":
        pb_grpc.add_AccountsServicer_to_server(pb_grpc.AccountsServicer(), server)  # type: ignore[abstract]
        pb_grpc.add_TariffsServicer_to_server(pb_grpc.TariffsServicer(), server)  # type: ignore[abstract]
    if kind in ("echo-services", "echo-config"):
        from grpc_health.v1 import health, health_pb2_grpc
        from grpc_reflection.v1alpha import reflection

        health_pb2_grpc.add_HealthServicer_to_server(health.aio.HealthServicer(), server)
        names = (pb.DESCRIPTOR.services_by_name["Charging"].full_name, reflection.SERVICE_NAME)
        reflection.enable_server_reflection(names, server)
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    await _ready_until_signalled()
    await server.stop(0)


async def _ready_until_signalled() -> None:
    print("ready", flush=True)
    stop = asyncio.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        asyncio.get_running_loop().add_signal_handler(signum, stop.set)
    await stop.wait()


async def _serve_owner(port: int, delay_s: float) -> None:
    """A fake owner: a ChannelServer answering every batch after ``delay_s``."""
    from _fake_owner import granted_answer

    from actors.channel import ChannelServer

    loop = asyncio.get_running_loop()

    def answer(future: asyncio.Future[list[Any]], requests: list[Any]) -> None:
        if not future.done():
            future.set_result([granted_answer(r) for r in requests])

    def fast(requests: list[Any]) -> asyncio.Future[list[Any]]:
        future: asyncio.Future[list[Any]] = loop.create_future()
        loop.call_later(delay_s, answer, future, requests)
        return future

    async def handler(requests: list[Any]) -> list[Any]:
        return await fast(requests)

    secret = b"bench-grpc-server-secret-0123456789"
    server = ChannelServer(handler, host="127.0.0.1", port=port, secret=secret, fast=fast)
    await server.start()
    await _ready_until_signalled()  # then exit: the front door's connections just drop


async def _serve_frontdoor(port: int, owner_port: int) -> None:
    from actors._gc import tune_gc
    from actors.channel import Endpoint
    from cluster.frontdoor import Dispatcher, FrontDoor
    from cluster.owners import DirectOwnerDirectory
    from sharding.shardmap import balanced_map

    shard_map = balanced_map(1024, ["o0", "o1"])
    endpoint = Endpoint("127.0.0.1", owner_port, b"bench-grpc-server-secret-0123456789")

    class Maps:
        async def get_map(self) -> Any:
            return shard_map

        async def wait_for_version(self, newer_than: int, timeout_s: float) -> Any:
            await asyncio.sleep(timeout_s)
            return shard_map

    async def where() -> Endpoint:
        return endpoint

    tune_gc()  # as start_frontdoor does
    dispatcher = Dispatcher(Maps(), DirectOwnerDirectory(endpoint=where))
    door = FrontDoor(dispatcher, None, port=port)  # type: ignore[arg-type]
    await door.start()
    await _ready_until_signalled()
    await door.stop(0)


# ---------------------------------------------------------------------------------------------
# Measuring
# ---------------------------------------------------------------------------------------------


def _cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _switches(pid: int) -> int:
    """Context switches (voluntary and not) of every thread of ``pid`` so far."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            text = (task / "status").read_text()
        except OSError:
            continue
        for line in text.splitlines():
            if line.startswith(("voluntary_ctxt_switches", "nonvoluntary_ctxt_switches")):
                total += int(line.split()[1])
    return total


def _load_child(config: Any, out: Any) -> None:
    from cluster.loadgen import run_load

    out.put(asyncio.run(run_load(config)))


def _start(args: list[str], root: Path, extra_env: dict[str, str]) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(root), **extra_env}
    process = subprocess.Popen(
        [sys.executable, __file__, *args], cwd=root, env=env, stdout=subprocess.PIPE, text=True
    )
    assert process.stdout is not None
    line = process.stdout.readline()
    if "ready" not in line:
        process.kill()
        raise RuntimeError(f"{args} did not start: {line!r}")
    return process


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kinds", default="echo,frontdoor")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--duration", type=float, default=8.0)
    parser.add_argument("--subscribers", type=int, default=20_000)
    parser.add_argument("--owner-delay-ms", type=float, default=2.0)
    parser.add_argument(
        "--rate",
        type=float,
        default=None,
        help="open loop at this many requests/s instead of 64 in flight (CPU per request then"
        " depends less on the throughput a contended machine happens to allow)",
    )
    parser.add_argument(
        "--env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="environment of the servers of kinds ending in '+env' (e.g. GRPC_EXPERIMENTS=...)",
    )
    parser.add_argument("--root", action="append", default=[], help="checkout (frontdoor kinds)")
    parser.add_argument("--serve", nargs=2, metavar=("KIND", "PORT"), help=argparse.SUPPRESS)
    parser.add_argument("--owner-port", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        kind, port = args.serve[0], int(args.serve[1])
        if kind == "owner":
            asyncio.run(_serve_owner(port, args.owner_delay_ms / 1e3))
        elif kind == "frontdoor":
            asyncio.run(_serve_frontdoor(port, args.owner_port))
        else:
            asyncio.run(_serve_echo(kind, port))
        return

    from cluster.loadgen import LoadConfig

    kinds = args.kinds.split(",")
    unknown = {k.removesuffix("+env") for k in kinds} - set(KINDS)
    if unknown:
        raise SystemExit(f"--kinds: unknown {sorted(unknown)} (known: {', '.join(KINDS)})")
    roots = [Path(r).resolve() for r in args.root] or [ROOT]
    servers: dict[str, tuple[subprocess.Popen[str], int]] = {}
    helpers: list[subprocess.Popen[str]] = []
    owners: dict[str, int] = {}
    print(
        f"# bench_grpc_server {time.strftime('%Y-%m-%d %H:%M', time.gmtime())} UTC,"
        f" load {os.getloadavg()[0]:.1f}; {args.duration:g} s per run,"
        + (f" open loop {args.rate:g}/s" if args.rate else " 64 in flight")
    )
    try:
        env = dict(item.split("=", 1) for item in args.env)
        for label_kind in kinds:
            kind = label_kind.removesuffix("+env")
            extra_env = env if label_kind.endswith("+env") else {}
            for root in roots if kind == "frontdoor" else [ROOT]:
                label = (
                    label_kind if len(roots) == 1 or kind != "frontdoor" else f"{label_kind}@{root}"
                )
                port = _free_port()
                extra: list[str] = []
                if kind == "frontdoor":
                    owner_port = _free_port()
                    owner = _start(
                        [
                            "--serve",
                            "owner",
                            str(owner_port),
                            "--owner-delay-ms",
                            str(args.owner_delay_ms),
                        ],
                        root,
                        {},
                    )
                    helpers.append(owner)
                    owners[label] = owner.pid
                    extra = ["--owner-port", str(owner_port)]
                servers[label] = (
                    _start(["--serve", kind, str(port), *extra], root, extra_env),
                    port,
                )
        context = multiprocessing.get_context("spawn")
        figures: dict[str, list[float]] = {label: [] for label in servers}
        rates: dict[str, list[float]] = {label: [] for label in servers}
        for round_ in range(args.rounds):
            order = list(servers.items())
            if round_ % 2:
                order.reverse()
            for label, (process, port) in order:
                config = LoadConfig(
                    target=f"127.0.0.1:{port}",
                    duration_s=args.duration,
                    transport="unary",
                    concurrency=64,
                    rate=args.rate,
                    subscribers=args.subscribers,
                )
                out = context.Queue()
                child = context.Process(target=_load_child, args=(config, out), daemon=True)
                before = _cpu_s(process.pid)
                switches = _switches(process.pid)
                owner_before = _cpu_s(owners[label]) if label in owners else 0.0
                child.start()
                report = out.get()
                used = _cpu_s(process.pid) - before
                switched = _switches(process.pid) - switches
                owner_used = _cpu_s(owners[label]) - owner_before if label in owners else 0.0
                child.join(30)
                requests = report.requests
                per = used / max(requests, 1) * 1e6
                figures[label].append(per)
                rates[label].append(report.throughput)
                errors = {k: v for k, v in report.latencies.results.items() if k != "SUCCESS"}
                owner_text = (
                    f", fake owner {owner_used / max(requests, 1) * 1e6:.0f} µs"
                    if label in owners
                    else ""
                )
                print(
                    f"round {round_ + 1} {label:28} {report.throughput:7,.0f} req/s"
                    f"  server {per:6.1f} µs/request{owner_text},"
                    f" {switched / max(requests, 1):.2f} switches/request"
                    + (f"  errors {errors}" if errors else ""),
                    flush=True,
                )
        firsts = next(iter(figures.values()))
        print("\n## medians (server CPU µs per request; paired: median of per-round differences)")
        for label, values in figures.items():
            paired = statistics.median(v - f for v, f in zip(values, firsts, strict=True))
            print(
                f"{label:28} {statistics.median(values):6.1f} µs"
                f" (runs {', '.join(f'{v:.1f}' for v in values)})"
                f"  paired {paired:+6.1f} vs first  {statistics.median(rates[label]):7,.0f} req/s"
            )
    finally:
        for process, _ in servers.values():
            process.terminate()
        for helper in helpers:
            helper.terminate()
        for process in [*(p for p, _ in servers.values()), *helpers]:
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()


if __name__ == "__main__":
    main()
