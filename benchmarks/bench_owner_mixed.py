"""Owner CPU per request under the unary bench's load, without the front door or gRPC.

bench_grpc's unary phase puts ~13-request batches of a mixed load (cluster/loadgen.py: SMS events,
voice and data sessions INITIAL / UPDATE / TERMINATION) on each owner, one batch in flight per
owner; there the owners' CPU per request is blurred by everything else sharing the two cores
(the load client, the front door, gRPC). Here the driver sends such batches itself, straight
over the owners' direct channel (cluster.owners.DirectOwnerClient, what the front door uses),
with a fixed batch size, so the owners' CPU per request is what changes with the owners' code.

Phases, each for ``--duration`` s, ``--rounds`` times:
- ``mixed``: the loadgen's mix (voice=5, sms=3, data=2) in batches of ``--batch`` (13);
- ``sms``: SMS events only in batches of ``--sms-batch`` (200), like a streamed load.

Prints per phase the owners' and PostgreSQL's CPU per request (µs, /proc utime+stime over the
phase, medians over rounds) and requests/s. ``--profile PATH`` runs cProfile with a thread CPU
clock on one owner's event loop during the mixed phases (pstats file; sort by tottime).

To compare code versions run it from each checkout in turn (interleaved), e.g.
    for i in 1 2 3; do (cd /tmp/base && python benchmarks/bench_owner_mixed.py --rounds 1);
                       (cd /work/main && python benchmarks/bench_owner_mixed.py --rounds 1); done
Ray workers import the code of the directory the driver runs in.

    .venv/bin/python benchmarks/bench_owner_mixed.py [--rounds 3] [--duration 10] [--batch 13]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path.cwd() if (Path.cwd() / "actors").is_dir() else Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_grpc import CpuMeter, provision  # noqa: E402

from actors.messages import Answered, ChargeRequest  # noqa: E402
from billing.protocol import CreditControlAnswer  # noqa: E402
from cluster.convert import answer_to_proto, request_from_proto  # noqa: E402
from cluster.loadgen import LoadConfig, Workload  # noqa: E402


@dataclass
class _Pending:
    message: Any  # the pb request (fed back to the workload with its answer)
    session: Any
    request: ChargeRequest


class Router:
    """One loadgen workload split by owner: each owner's next batch of requests."""

    def __init__(self, subscribers: int, mix: dict[str, int], owner_of: Any) -> None:
        config = LoadConfig(target="-", subscribers=subscribers, mix=mix, seed=7)
        self._workload = Workload(config)
        self._owner_of = owner_of
        self._queues: dict[str, deque[_Pending]] = {}
        self.errors = 0
        self.results: dict[str, int] = {}

    def batch(self, owner: str, size: int) -> list[_Pending]:
        queue = self._queues.setdefault(owner, deque())
        while len(queue) < size:
            message, session = self._workload.next_request()
            target = self._owner_of(message.subscriber_id)
            pending = _Pending(message, session, ChargeRequest(request_from_proto(message)))
            other = self._queues.setdefault(target, deque())
            if target == owner or message.request_number or len(other) < 4 * size:
                other.append(pending)  # (a new session or SMS for a busy other owner: dropped)
        return [queue.popleft() for _ in range(size)]

    def answered(self, sent: list[_Pending], replies: list[Any]) -> None:
        for pending, reply in zip(sent, replies, strict=True):
            if isinstance(reply, Answered) and isinstance(reply.payload, CreditControlAnswer):
                answer = reply.payload
                name = answer.result_code.name
                self.results[name] = self.results.get(name, 0) + 1
                self._workload.answered(pending.session, pending.message, answer_to_proto(answer))
            else:
                self.errors += 1
                name = type(reply).__name__
                self.results[name] = self.results.get(name, 0) + 1


async def drive(
    clients: dict[str, Any], router: Router, size: int, seconds: float
) -> tuple[int, float]:
    """One batch in flight per owner for ``seconds``; (requests answered, elapsed s)."""
    done = 0
    stop_at = time.perf_counter() + seconds

    async def sender(owner: str, client: Any) -> None:
        nonlocal done
        while time.perf_counter() < stop_at:
            sent = router.batch(owner, size)
            replies = await client.submit([p.request for p in sent])
            router.answered(sent, replies)
            done += len(sent)

    started = time.perf_counter()
    await asyncio.gather(*(sender(o, c) for o, c in clients.items()))
    return done, time.perf_counter() - started


def thread_ticks(pids: list[int]) -> dict[str, int]:
    """CPU ticks (utime + stime) so far of every thread of ``pids``, by thread name."""
    out: dict[str, int] = {}
    for pid in pids:
        for tid in os.listdir(f"/proc/{pid}/task"):
            try:
                with open(f"/proc/{pid}/task/{tid}/stat") as f:
                    text = f.read()
            except OSError:
                continue
            name = text[text.index("(") + 1 : text.rindex(")")]
            fields = text.rsplit(")", 1)[1].split()
            name = f"main:{name}" if tid == str(pid) else name
            out[name] = out.get(name, 0) + int(fields[11]) + int(fields[12])
    return out


def _start_profile(owner: Any) -> None:
    """Runs in the owner (``__ray_call__``): cProfile on its event loop's thread, CPU clock."""
    import cProfile

    profile = cProfile.Profile(time.thread_time)
    owner._bench_profile = profile
    owner._loop.call_soon_threadsafe(profile.enable)


def _stop_profile(owner: Any, path: str) -> str:
    import concurrent.futures

    done: concurrent.futures.Future[None] = concurrent.futures.Future()

    def stop() -> None:
        owner._bench_profile.disable()
        done.set_result(None)

    owner._loop.call_soon_threadsafe(stop)
    done.result(10)
    owner._bench_profile.dump_stats(path)
    return path


async def bench(args: argparse.Namespace) -> None:
    from cluster.bootstrap import bring_up
    from cluster.owners import DirectOwnerClient

    work = Path(tempfile.mkdtemp(prefix="bench-owner-mixed-"))
    work.chmod(0o755)
    system = bring_up(data_dir=work / "pg", owners=2, num_cpus=2, object_store_mb=200)
    try:
        await provision(system.handles, args.subscribers)
        shard_map = system.handles.get_map()
        owners = sorted({shard_map.owner_of_key(f"x{i}") for i in range(200)})
        clients = {name: DirectOwnerClient(name) for name in owners}
        postmaster = system.embedded.status()["pid"] if system.embedded is not None else None
        meter = CpuMeter(postmaster)
        phases = {
            "mixed": (dict(voice=5, sms=3, data=2), args.batch),
            "sms": (dict(sms=1), args.sms_batch),
        }
        routers = {
            phase: Router(args.subscribers, mix, shard_map.owner_of_key)
            for phase, (mix, _) in phases.items()
        }
        for phase, (_, size) in phases.items():  # warm up: connections, caches, sessions
            await drive(clients, routers[phase], size, 2.0)
        figures: dict[str, dict[str, list[float]]] = {p: {} for p in phases}
        profiled = system.handles.owner(owners[0])
        pids = [int((await system.handles.owner(o).status.remote()).pid) for o in owners]
        tick_s = 1 / os.sysconf("SC_CLK_TCK")
        for round_no in range(args.rounds):
            for phase, (_, size) in phases.items():
                profile = args.profile and phase == "mixed"
                if profile:
                    await profiled.__ray_call__.remote(_start_profile)
                meter.start()
                threads0 = thread_ticks(pids)
                count, elapsed = await drive(clients, routers[phase], size, args.duration)
                used = meter.stop()
                threads1 = thread_ticks(pids)
                if profile:
                    path = f"{args.profile}.{round_no}"
                    await profiled.__ray_call__.remote(_stop_profile, os.path.abspath(path))
                row = {
                    "req/s": count / elapsed,
                    "owners µs/req": used.get("owners", 0.0) / count * 1e6,
                    "postgresql µs/req": used.get("postgresql", 0.0) / count * 1e6,
                    "driver µs/req": used.get("frontdoor", 0.0) / count * 1e6,
                }
                if args.threads:
                    by_thread = {
                        name: (ticks - threads0.get(name, 0)) * tick_s / count * 1e6
                        for name, ticks in threads1.items()
                    }
                    print(
                        "  owner threads µs/req: "
                        + ", ".join(
                            f"{name} {us:.1f}"
                            for name, us in sorted(by_thread.items(), key=lambda x: -x[1])
                            if us >= 0.2
                        )
                    )
                for key, value in row.items():
                    figures[phase].setdefault(key, []).append(value)
                print(
                    f"round {round_no + 1} {phase:5} batch {size:3}: "
                    + "  ".join(f"{k} {v:8.1f}" for k, v in row.items()),
                    flush=True,
                )
        meter.start()  # no load: what the owners burn by themselves (Ray's threads, sweeps)
        await asyncio.sleep(args.duration)
        idle = meter.stop().get("owners", 0.0) / args.duration / len(owners) * 1e3
        print(f"idle owners: {idle:.1f} ms CPU per second each")
        print("## medians")
        for phase, rows in figures.items():
            print(
                f"{phase:5}: "
                + "  ".join(
                    f"{k} {statistics.median(v):8.1f} ({', '.join(f'{x:.1f}' for x in v)})"
                    for k, v in rows.items()
                )
            )
        for phase, router in routers.items():
            print(f"{phase} results: {dict(sorted(router.results.items()))}")
        for client in clients.values():
            await client.close()
    finally:
        system.stop()
        shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--subscribers", type=int, default=20_000)
    parser.add_argument("--batch", type=int, default=13, help="requests per mixed batch")
    parser.add_argument("--sms-batch", type=int, default=200, help="requests per SMS batch")
    parser.add_argument("--threads", action="store_true", help="owner CPU by thread name")
    parser.add_argument("--profile", help="pstats path prefix: profile one owner (mixed phase)")
    asyncio.run(bench(parser.parse_args()))


if __name__ == "__main__":
    main()
