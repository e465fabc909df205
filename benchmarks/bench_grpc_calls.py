"""Python function calls per unary CreditControl in a grpc.aio server: a count, not a timing.

On two shared cores a server's CPU per request moves by ±20 µs from run to run with whatever
else runs (benchmarks/README.md, session 9), which hides changes of a few microseconds. The
number of Python calls the server's event loop makes per request (cProfile, the loop's thread,
``--requests`` calls from a client process, 32 at a time, requests shaped by cluster/loadgen.py)
does not move with the load: it shows where grpc.aio's own per-call work grows. The CPU time of
the run is printed too, for what it is worth on a quiet machine.

Kinds (``--kinds``):

- ``echo``: benchmarks/echo_server.py's servicer, registered as its generated code does;
- ``echo-generic``: the same servicer through generic handlers only (no registered method);
- ``echo-frontdoor-services``: the echo registered as the front door registered its services
  until session 9: Charging, Accounts, Tariffs, health and reflection, every method registered;
- ``frontdoor``: the real cluster.frontdoor.FrontDoor with an in-process owner answering every
  batch after 1 ms; with ``--root`` (repeatable) it is imported from each checkout given.

    .venv/bin/python benchmarks/bench_grpc_calls.py --root /tmp/before --root .
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import os
import pstats
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
KINDS = ("echo", "echo-generic", "echo-frontdoor-services", "frontdoor")
CONCURRENCY = 32

_CLIENT = r"""
import asyncio, sys
sys.path.insert(0, sys.argv[3])
import grpc
from cluster.loadgen import LoadConfig, Workload
from cluster.pb import billing_pb2_grpc as pb_grpc

async def main() -> None:
    workload = Workload(LoadConfig(target="", subscribers=20_000))
    async with grpc.aio.insecure_channel(sys.argv[1]) as channel:
        stub = pb_grpc.ChargingStub(channel)

        async def one() -> None:
            msg, session = workload.next_request()
            answer = await stub.CreditControl(msg, timeout=10)
            workload.answered(session, msg, answer)

        for _ in range(300):  # warm up
            await one()
        print("go", flush=True)
        input()

        async def worker() -> None:
            for _ in range(int(sys.argv[2])):
                await one()

        await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
        print("done", flush=True)

CONCURRENCY = int(sys.argv[4])
asyncio.run(main())
"""


class _GenericOnly:
    """Passes generic handlers to the server and drops method registrations."""

    def __init__(self, server: Any) -> None:
        self._server = server

    def add_generic_rpc_handlers(self, handlers: Any) -> None:
        self._server.add_generic_rpc_handlers(handlers)

    def add_registered_method_handlers(self, name: str, handlers: Any) -> None:
        pass


async def _echo_server(kind: str) -> Any:
    import grpc
    from grpc_health.v1 import health, health_pb2_grpc
    from grpc_reflection.v1alpha import reflection

    from benchmarks.echo_server import EchoCharging
    from cluster.pb import billing_pb2 as pb
    from cluster.pb import billing_pb2_grpc as pb_grpc

    server = grpc.aio.server()
    target = _GenericOnly(server) if kind == "echo-generic" else server
    pb_grpc.add_ChargingServicer_to_server(EchoCharging(), target)
    if kind == "echo-frontdoor-services":
        pb_grpc.add_AccountsServicer_to_server(pb_grpc.AccountsServicer(), server)  # type: ignore[abstract]
        pb_grpc.add_TariffsServicer_to_server(pb_grpc.TariffsServicer(), server)  # type: ignore[abstract]
        health_pb2_grpc.add_HealthServicer_to_server(health.aio.HealthServicer(), server)
        names = [pb.DESCRIPTOR.services_by_name[n].full_name for n in ("Charging", "Accounts")]
        reflection.enable_server_reflection((*names, reflection.SERVICE_NAME), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    return server, f"127.0.0.1:{port}"


async def _frontdoor_server() -> Any:
    from _fake_owner import FakeOwners

    from cluster.frontdoor import Dispatcher, FrontDoor

    owners = FakeOwners(delay_s=0.001)
    door = FrontDoor(Dispatcher(owners, owners), None)  # type: ignore[arg-type]
    await door.start()
    return door, door.address


async def _measure(kind: str, requests: int) -> tuple[float, float]:
    """(Python calls, CPU µs) per request of ``kind``'s server in this process."""
    if kind == "frontdoor":
        server, address = await _frontdoor_server()
    else:
        server, address = await _echo_server(kind)
    per_worker = requests // CONCURRENCY
    client = subprocess.Popen(
        [sys.executable, "-c", _CLIENT, address, str(per_worker), str(ROOT), str(CONCURRENCY)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert client.stdin is not None and client.stdout is not None
    loop = asyncio.get_running_loop()
    if (await loop.run_in_executor(None, client.stdout.readline)).strip() != "go":
        raise RuntimeError("the client did not start")
    profile = cProfile.Profile()
    started = time.process_time()
    profile.enable()
    client.stdin.write("\n")
    client.stdin.flush()
    await loop.run_in_executor(None, client.stdout.readline)
    profile.disable()
    used = time.process_time() - started
    client.wait(10)
    stats: Any = pstats.Stats(profile)
    calls = sum(entry[1] for entry in stats.stats.values())
    done = per_worker * CONCURRENCY
    await server.stop(0)
    return calls / done, used / done * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kinds", default=",".join(KINDS))
    parser.add_argument("--requests", type=int, default=4000)
    parser.add_argument("--root", action="append", default=[], help="checkout (frontdoor)")
    parser.add_argument("--child", default="", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        calls, cpu = asyncio.run(_measure(args.child, args.requests))
        print(f"{calls:.1f} {cpu:.1f}")
        return
    roots = [Path(root).resolve() for root in args.root] or [ROOT]
    print(
        f"# bench_grpc_calls {time.strftime('%Y-%m-%d %H:%M', time.gmtime())} UTC,"
        f" {args.requests:,} requests, {CONCURRENCY} at a time"
    )
    for kind in args.kinds.split(","):
        if kind not in KINDS:
            raise SystemExit(f"--kinds: unknown {kind!r} (known: {', '.join(KINDS)})")
        for root in roots if kind == "frontdoor" else [ROOT]:
            out = subprocess.run(
                [sys.executable, __file__, "--child", kind, "--requests", str(args.requests)],
                cwd=root,
                env={**os.environ, "PYTHONPATH": str(root)},
                capture_output=True,
                text=True,
                check=True,
            )
            calls_text, cpu_text = out.stdout.split()
            label = kind if kind != "frontdoor" or len(roots) == 1 else f"{kind}@{root}"
            print(
                f"{label:40} {float(calls_text):7.1f} Python calls/request"
                f"  ({cpu_text} µs CPU/request)"
            )


if __name__ == "__main__":
    main()
