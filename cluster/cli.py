"""The ``billing`` command: run the online charging system, drive load at it, manage its parts.

    billing serve        Ray (local, or --address) + PostgreSQL (embedded, or --dsn/BILLING_DSN)
                         + owners + shard manager + a gRPC front door; Ctrl-C/SIGTERM stops it
    billing frontdoor    one more front door against a running cluster (--address, --port)
    billing demo         brings everything up, provisions subscribers, drives a mixed load
                         over gRPC, prints throughput, latency, results and a conservation check
    billing load         the load generator against any front door address
    billing db           up | down | status of the embedded PostgreSQL
    billing plans        list | show NAME | copy NAME FILE: the built-in tariff templates
    billing cluster      status | rebalance | drain NODE: nodes, owners, vshards; scale out/in

Expected failures (no PostgreSQL binaries, no cluster to join, a port in use, bad arguments)
print one clear line and exit non-zero; tracebacks are for bugs.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from rich.console import Console

from cluster import telemetry
from cluster.batching import HOLD_S_DEFAULT, HOLD_S_LIMIT
from cluster.bootstrap import MAX_IN_FLIGHT_FRONTDOOR, OBJECT_STORE_MB_DEFAULT, StartupError
from cluster.owners import TRANSPORT_DEFAULT, TRANSPORTS

console = Console(highlight=False)
err = Console(stderr=True, highlight=False)

DEFAULT_PORT = 50051


class UsageError(Exception):
    """Bad arguments or environment: printed as one line, exit code 2."""


# ---------------------------------------------------------------------------------------------
# serve / frontdoor
# ---------------------------------------------------------------------------------------------


async def _until_signalled() -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    try:
        await stop.wait()
    finally:
        # From here on the cleanup must finish (or PostgreSQL is left running): later signals
        # are ignored until it has.
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)
            signal.signal(signum, signal.SIG_IGN)


async def _run_frontdoor(args: argparse.Namespace, banner: str) -> None:
    from cluster.bootstrap import start_frontdoor

    door = await start_frontdoor(
        host=args.host,
        port=args.port,
        queue_max=args.queue_max,
        batch_max=args.batch_max,
        telemetry=telemetry.current(),
        transport=args.owner_transport,
        max_in_flight=args.max_in_flight,
        batch_hold_s=None if args.batch_hold_us is None else args.batch_hold_us / 1e6,
    )
    console.print(f"{banner}\n[bold]front door listening on {door.address}[/bold] (Ctrl-C stops)")
    try:
        await _until_signalled()
    finally:
        console.print("stopping the front door ...")
        await door.stop()


def _address_file() -> Path:
    """Where ``billing serve`` records its Ray address for ``billing frontdoor`` to join."""
    home = os.environ.get("BILLING_HOME")
    return (Path(home) if home else Path("var")) / "ray-address"


def cmd_serve(args: argparse.Namespace) -> int:
    import ray

    from cluster.bootstrap import bring_up

    with console.status("starting PostgreSQL, Ray, the shard manager and owners ..."):
        system = bring_up(
            address=args.address,
            dsn=args.dsn,
            data_dir=args.data_dir,
            owners=args.owners,
            vshard_count=args.vshards,
            num_cpus=args.num_cpus,
            object_store_mb=args.object_store_mb,
        )
    stop_actors = system.ray_started or args.stop_actors
    address_file = _address_file()
    try:
        gcs = ray.get_runtime_context().gcs_address
        if system.ray_started:
            address_file.parent.mkdir(parents=True, exist_ok=True)
            address_file.write_text(gcs)
        where = "embedded PostgreSQL" if system.embedded is not None else "PostgreSQL"
        banner = (
            f"{where}: {system.dsn}\n{args.owners} owners up"
            f" ({'new local Ray cluster' if system.ray_started else 'joined Ray'} at {gcs})\n"
            f"more front doors: billing frontdoor --address {gcs} --port <another port>"
        )
        asyncio.run(_run_frontdoor(args, banner))
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # let the cleanup finish
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        if system.ray_started:
            address_file.unlink(missing_ok=True)
        with console.status("stopping owners, Ray and PostgreSQL ..."):
            system.stop(stop_actors=stop_actors)
    console.print("stopped")
    return 0


def join_address(explicit: str | None) -> str:
    """The Ray cluster to join: ``explicit``, else $RAY_ADDRESS, else the address ``billing
    serve`` recorded here, else ``auto``."""
    address = explicit or os.environ.get("RAY_ADDRESS")
    if not address and _address_file().exists():
        address = _address_file().read_text().strip()  # written by `billing serve` here
    return address or "auto"


def cmd_frontdoor(args: argparse.Namespace) -> int:
    from cluster.bootstrap import init_ray

    address = join_address(args.address)
    init_ray(address)
    asyncio.run(_run_frontdoor(args, f"joined Ray at {address}"))
    return 0


# ---------------------------------------------------------------------------------------------
# load / demo
# ---------------------------------------------------------------------------------------------


def _load_config(args: argparse.Namespace, target: str) -> object:
    from cluster.loadgen import LoadConfig, parse_mix

    try:
        return LoadConfig(
            target=target,
            duration_s=args.duration,
            transport=args.transport,
            concurrency=args.concurrency,
            rate=args.rate,
            subscribers=args.subscribers,
            subscriber_prefix=args.prefix,
            mix=parse_mix(args.mix),
            streams=args.streams,
            batch_size=args.batch_size,
            timeout_s=args.timeout,
            seed=args.seed,
        )
    except ValueError as error:
        raise UsageError(str(error)) from None


async def _drive(config: object) -> object:
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    from cluster.loadgen import LoadConfig, run_load

    assert isinstance(config, LoadConfig)
    with Progress(
        TextColumn("[bold]load[/bold]"),
        BarColumn(),
        TextColumn("{task.fields[requests]:>9,} requests  {task.fields[rate]:>8,.0f}/s"),
        TimeRemainingColumn(),
        console=console,
        transient=False,
    ) as progress:
        task = progress.add_task("load", total=config.duration_s, requests=0, rate=0.0)

        def update(elapsed: float, requests: int) -> None:
            rate = requests / elapsed if elapsed > 0 else 0.0
            progress.update(task, completed=elapsed, requests=requests, rate=rate)

        return await run_load(config, update)


def print_report(report: object) -> None:
    from rich.table import Table

    from cluster.loadgen import LoadReport

    assert isinstance(report, LoadReport)
    config = report.config
    mode = (
        f"open loop {config.rate:,.0f} req/s" if config.rate else f"{config.concurrency} in flight"
    )
    console.print(
        f"\n[bold]{report.requests:,} requests in {report.seconds:.1f} s ="
        f" {report.throughput:,.0f} req/s[/bold]  ({config.transport}, {mode},"
        f" {report.sessions_started:,} sessions/events started)"
    )
    percentiles = report.latencies.percentiles()
    if percentiles:
        console.print(
            "latency  "
            + "  ".join(f"{name} {seconds * 1000:.2f} ms" for name, seconds in percentiles.items())
        )
    codes = Table(title="results by code", show_edge=False)
    codes.add_column("result")
    codes.add_column("count", justify="right")
    codes.add_column("share", justify="right")
    for name, count in report.latencies.results.most_common():
        codes.add_row(name, f"{count:,}", f"{100 * count / max(report.requests, 1):.1f} %")
    console.print(codes)
    histogram = Table(title="latency histogram", show_edge=False)
    histogram.add_column("latency")
    histogram.add_column("count", justify="right")
    histogram.add_column("")
    rows = report.latencies.histogram()
    peak = max((count for _, count in rows), default=0) or 1
    for label, count in rows:
        histogram.add_row(label, f"{count:,}", "#" * round(40 * count / peak))
    console.print(histogram)


async def _create_over_grpc(target: str, count: int, prefix: str) -> None:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    from cluster.loadgen import create_subscribers

    with Progress(
        TextColumn("[bold]creating subscribers[/bold]"),
        BarColumn(),
        MofNCompleteColumn(),
        console=console,
    ) as progress:
        task = progress.add_task("create", total=count)
        created, existing = await create_subscribers(
            target, count, prefix, progress=lambda done: progress.update(task, completed=done)
        )
    console.print(f"created {created:,} subscribers ({existing:,} already existed)")


def cmd_load(args: argparse.Namespace) -> int:
    config = _load_config(args, args.target)
    if args.create_subscribers:
        asyncio.run(_create_over_grpc(args.target, args.subscribers, args.prefix))
    report = asyncio.run(_drive(config))
    print_report(report)
    return 0


def _demo_subscribers(count: int, prefix: str) -> list[object]:
    """Provisioning requests from the templates: 50 % payg, 30 % postpaid, 20 % hybrid."""
    from actors.messages import ProvisionRequest
    from cluster.loadgen import subscriber_id

    requests: list[object] = []
    for index in range(count):
        kind = index % 10
        sid = subscriber_id(index, prefix)
        if kind < 5:
            requests.append(ProvisionRequest(sid, "payg", initial_balance_micros=20_000_000))
        elif kind < 8:
            requests.append(
                ProvisionRequest(sid, "postpaid-monthly", credit_limit_micros=200_000_000)
            )
        else:
            requests.append(
                ProvisionRequest(
                    sid, "hybrid", initial_balance_micros=10_000_000, credit_limit_micros=50_000_000
                )
            )
    return requests


async def _provision(
    handles: object, count: int, prefix: str, chunk: int = 5000
) -> tuple[int, int]:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from actors.bootstrap import provision_bulk_async
    from actors.messages import ALREADY_EXISTS

    requests = _demo_subscribers(count, prefix)
    created = existing = 0
    with Progress(
        TextColumn("[bold]provisioning[/bold]"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
    ) as progress:
        task = progress.add_task("provision", total=count)
        for start in range(0, count, chunk):
            part = requests[start : start + chunk]
            summary = await provision_bulk_async(handles, part)  # type: ignore[arg-type]
            created += summary.created
            others = [r for _, r in summary.rejected if r.code != ALREADY_EXISTS]
            existing += len(summary.rejected) - len(others)
            if others or summary.not_owner:
                problem = others[0] if others else f"{len(summary.not_owner)} without an owner"
                raise StartupError(f"provisioning failed: {problem}")
            progress.update(task, advance=len(part))
    return created, existing


async def _audit(dsn: str) -> list[str]:
    from sharding.store import Store

    store = Store(dsn, min_size=1, max_size=1)
    await store.open()
    try:
        return await store.audit()
    finally:
        await store.close()


def _load_in_child(config: object, progress: object, result: object) -> None:
    """The load generator's process: its own event loop and CPU, reporting through queues."""
    from cluster.loadgen import LoadConfig, run_load

    assert isinstance(config, LoadConfig)

    def update(elapsed: float, requests: int) -> None:
        progress.put((elapsed, requests))  # type: ignore[attr-defined]

    try:
        report = asyncio.run(run_load(config, update))
        result.put(report)  # type: ignore[attr-defined]
    except BaseException as error:
        result.put(f"{type(error).__name__}: {error}")  # type: ignore[attr-defined]


async def _demo_load(config: object) -> object:
    """Run the load generator in a child process while this loop serves the front door."""
    import multiprocessing
    import queue as queue_module

    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    from cluster.loadgen import LoadConfig

    assert isinstance(config, LoadConfig)
    context = multiprocessing.get_context("spawn")
    progress_q = context.Queue()
    result_q = context.Queue()
    child = context.Process(target=_load_in_child, args=(config, progress_q, result_q), daemon=True)
    child.start()
    loop = asyncio.get_running_loop()
    outcome: object = None
    with Progress(
        TextColumn("[bold]load[/bold]"),
        BarColumn(),
        TextColumn("{task.fields[requests]:>9,} requests  {task.fields[rate]:>8,.0f}/s"),
        TimeRemainingColumn(),
        console=console,
    ) as progress:
        task = progress.add_task("load", total=config.duration_s, requests=0, rate=0.0)
        while outcome is None:
            with contextlib.suppress(queue_module.Empty):
                while True:
                    elapsed, requests = progress_q.get_nowait()
                    progress.update(
                        task,
                        completed=elapsed,
                        requests=requests,
                        rate=requests / elapsed if elapsed else 0.0,
                    )
            with contextlib.suppress(queue_module.Empty):
                outcome = await loop.run_in_executor(None, result_q.get, True, 0.25)
            if outcome is None and not child.is_alive() and result_q.empty():
                outcome = "the load generator process died"
    await loop.run_in_executor(None, child.join, 10)
    if isinstance(outcome, str):
        raise StartupError(f"load generator failed: {outcome}")
    return outcome


def cmd_demo(args: argparse.Namespace) -> int:
    from cluster.bootstrap import bring_up, start_frontdoor

    temp: tempfile.TemporaryDirectory[str] | None = None
    data_dir = args.data_dir
    if data_dir is None and not (args.dsn or os.environ.get("BILLING_DSN")):
        temp = tempfile.TemporaryDirectory(prefix="billing-demo-")
        Path(temp.name).chmod(0o755)  # the embedded server runs as an unprivileged user
        data_dir = Path(temp.name) / "pg"
    with console.status("starting PostgreSQL, Ray, the shard manager and owners ..."):
        system = bring_up(
            address=args.address,
            dsn=args.dsn,
            data_dir=data_dir,
            owners=args.owners,
            vshard_count=args.vshards,
            num_cpus=args.num_cpus,
            object_store_mb=args.object_store_mb,
        )
    console.print(f"up: {args.owners} owners, PostgreSQL at {system.dsn}")

    async def run() -> int:
        created, existing = await _provision(system.handles, args.subscribers, args.prefix)
        console.print(f"provisioned {created:,} subscribers ({existing:,} already existed)")
        door = await start_frontdoor(
            host="127.0.0.1", port=args.port, telemetry=telemetry.current()
        )
        console.print(f"front door on {door.address}; driving load for {args.duration:g} s ...")
        try:
            config = _load_config(args, door.address)
            report = await _demo_load(config)
        finally:
            await door.stop()
        print_report(report)
        with console.status("auditing: journal against balances ..."):
            violations = await _audit(system.dsn)
        if violations:
            console.print(
                f"[red bold]conservation check FAILED: {len(violations)} violations[/red bold]"
            )
            for line in violations[:20]:
                console.print(f"  {line}")
            return 1
        console.print(
            "[green bold]conservation check OK[/green bold]: the journal reproduces every"
            " balance and bucket (Store.audit)"
        )
        from cluster.loadgen import LoadReport

        assert isinstance(report, LoadReport)
        if report.ok == 0:
            console.print("[red]no request succeeded[/red]")
            return 1
        return 0

    try:
        return asyncio.run(run())
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # let the cleanup finish
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        with console.status("stopping owners, Ray and PostgreSQL ..."):
            system.stop(stop_actors=True)
        if temp is not None:
            temp.cleanup()


# ---------------------------------------------------------------------------------------------
# db / plans
# ---------------------------------------------------------------------------------------------


def cmd_db(args: argparse.Namespace) -> int:
    from sharding.pgserver import db_command

    return db_command(args.action, args.data_dir)


def cmd_plans(args: argparse.Namespace) -> int:
    from billing.tariff import (
        TariffError,
        builtin_catalog,
        describe_plan,
        template_names,
        template_text,
    )

    if args.action == "list":
        catalog = builtin_catalog()
        for name in template_names():
            plan = catalog.get(name)
            latest = plan.versions[-1]
            console.print(
                f"[bold]{name:18}[/bold] {latest.payment_mode.value:9} {latest.currency}  {plan.name}"
            )
        return 0
    if not args.name:
        raise UsageError(
            f"plans {args.action}: which template? (one of {', '.join(template_names())})"
        )
    try:
        if args.action == "show":
            console.print(describe_plan(builtin_catalog().get(args.name)))
            return 0
        text = template_text(args.name)
    except TariffError as error:
        raise UsageError(str(error)) from None
    if not args.dest:
        sys.stdout.write(text)
        return 0
    dest = Path(args.dest)
    if dest.exists() and not args.force:
        raise UsageError(f"{dest} exists: pass --force to overwrite")
    dest.write_text(text, encoding="utf-8")
    console.print(f"wrote {dest} (edit it, then load it with the Tariffs.LoadPlan gRPC method)")
    return 0


# ---------------------------------------------------------------------------------------------
# Arguments
# ---------------------------------------------------------------------------------------------


def _cluster_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--address", help="join this Ray cluster (e.g. auto, ray://host:10001)")
    parser.add_argument("--dsn", help="PostgreSQL DSN (default: $BILLING_DSN, else embedded)")
    parser.add_argument("--data-dir", type=Path, help="embedded PostgreSQL data directory")
    parser.add_argument("--owners", type=int, default=2, help="shard owner actors (default 2)")
    parser.add_argument(
        "--vshards", type=int, default=None, help="vshard count of a new deployment"
    )
    parser.add_argument(
        "--num-cpus", type=int, default=None, help="CPUs of a new local Ray cluster"
    )
    parser.add_argument(
        "--object-store-mb",
        type=int,
        default=OBJECT_STORE_MB_DEFAULT,
        help="local Ray object store",
    )


def _hold_us(text: str) -> int:
    """``--batch-hold-us``: whole µs within the batcher's bound, checked before anything starts
    (a bad value would otherwise surface only once Ray and the owners are up)."""
    limit = round(HOLD_S_LIMIT * 1e6)
    try:
        value = int(text)
    except ValueError:
        value = -1
    if not 0 <= value <= limit:
        raise argparse.ArgumentTypeError(f"must be whole µs in 0..{limit}, got {text!r}")
    return value


def _door_options(parser: argparse.ArgumentParser, port: int) -> None:
    parser.add_argument("--host", default="127.0.0.1", help="listen address (0.0.0.0 for all)")
    parser.add_argument("--port", type=int, default=port, help=f"gRPC port (default {port})")
    parser.add_argument("--queue-max", type=int, default=None, help="requests queued per owner")
    parser.add_argument("--batch-max", type=int, default=None, help="requests per owner batch")
    parser.add_argument(
        "--owner-transport",
        choices=TRANSPORTS,
        default=TRANSPORT_DEFAULT,
        help="how charging batches reach the owners: their direct channel, or Ray calls"
        f" (default {TRANSPORT_DEFAULT})",
    )
    parser.add_argument(
        "--max-in-flight",
        type=int,
        default=MAX_IN_FLIGHT_FRONTDOOR,
        help=f"batches in flight per owner (default {MAX_IN_FLIGHT_FRONTDOOR})",
    )
    parser.add_argument(
        "--batch-hold-us",
        type=_hold_us,
        default=None,
        help="how long an owner batch may wait to fill up when its owner is under sustained load"
        f" (3 or more requests already queued), in µs (default {round(HOLD_S_DEFAULT * 1e6)};"
        " 0: off)",
    )


def _load_options(parser: argparse.ArgumentParser, *, duration: float, subscribers: int) -> None:
    parser.add_argument("--duration", type=float, default=duration, help="seconds of load")
    parser.add_argument("--transport", choices=("unary", "stream", "batch"), default="unary")
    parser.add_argument(
        "--concurrency", type=int, default=64, help="requests in flight (closed loop)"
    )
    parser.add_argument("--rate", type=float, default=None, help="open loop: requests per second")
    parser.add_argument(
        "--subscribers", type=int, default=subscribers, help="subscriber ids to use"
    )
    parser.add_argument("--prefix", default="4917", help="subscriber id prefix (demo's ids)")
    parser.add_argument("--mix", default="voice=5,sms=3,data=2", help="scenario weights")
    parser.add_argument("--streams", type=int, default=4, help="streams (stream/batch transports)")
    parser.add_argument("--batch-size", type=int, default=100, help="requests per batch message")
    parser.add_argument("--timeout", type=float, default=5.0, help="per-request deadline, seconds")
    parser.add_argument("--seed", type=int, default=None, help="random seed of the workload")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="billing", description="Online charging: Ray shard owners behind a gRPC front door."
    )
    parser.add_argument(
        "--otel",
        choices=telemetry.MODES,
        default=None,
        help="OpenTelemetry exporter (default: $BILLING_OTEL, else off)",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log at INFO")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = commands.add_parser("serve", help="run the whole system with one front door")
    _cluster_options(serve)
    _door_options(serve, DEFAULT_PORT)
    serve.add_argument(
        "--stop-actors", action="store_true", help="with --address: stop the owners on exit too"
    )
    serve.set_defaults(run=cmd_serve)

    door = commands.add_parser("frontdoor", help="one more front door against a running cluster")
    door.add_argument(
        "--address",
        default=None,
        help="Ray cluster address (default: $RAY_ADDRESS, else the one `billing serve` recorded"
        " in $BILLING_HOME/ray-address, else auto)",
    )
    _door_options(door, DEFAULT_PORT + 1)
    door.set_defaults(run=cmd_frontdoor)

    demo = commands.add_parser("demo", help="bring up, provision, drive load, check conservation")
    _cluster_options(demo)
    demo.add_argument("--port", type=int, default=0, help="front door port (default: any free)")
    _load_options(demo, duration=30.0, subscribers=100_000)
    demo.set_defaults(run=cmd_demo)

    load = commands.add_parser("load", help="load generator against a front door")
    load.add_argument("--target", default=f"127.0.0.1:{DEFAULT_PORT}", help="host:port")
    load.add_argument(
        "--create-subscribers",
        action="store_true",
        help="first create the --subscribers ids over gRPC (existing ones are kept)",
    )
    _load_options(load, duration=10.0, subscribers=100_000)
    load.set_defaults(run=cmd_load)

    db = commands.add_parser("db", help="the embedded PostgreSQL: up, down, status")
    db.add_argument("action", choices=("up", "down", "status"))
    db.add_argument("--data-dir", type=Path, default=None, help="data directory")
    db.set_defaults(run=cmd_db)

    plans = commands.add_parser("plans", help="tariff templates: list, show NAME, copy NAME FILE")
    plans.add_argument("action", choices=("list", "show", "copy"))
    plans.add_argument("name", nargs="?", help="template name")
    plans.add_argument("dest", nargs="?", help="copy: file to write (default stdout)")
    plans.add_argument("--force", action="store_true", help="copy: overwrite FILE")
    plans.set_defaults(run=cmd_plans)

    from cluster.scaleout_cli import add_parser as add_cluster_parser

    add_cluster_parser(commands)  # billing cluster status | rebalance | drain NODE

    # Listed here for --help; main() hands `billing chaos ...` to failover.chaos, which owns its
    # options (engineer X, failover/).
    commands.add_parser(
        "chaos", help="multi-node chaos run: load, seeded faults, audit (see failover/README.md)"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    words = list(sys.argv[1:] if argv is None else argv)
    if words[:1] == ["chaos"]:
        from failover.chaos import main as chaos_main

        return chaos_main(words[1:])
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        try:
            if args.otel is not None:  # the flag wins; Ray workers read the variable
                os.environ[telemetry.ENV] = args.otel
            telemetry.setup(args.otel, service_name=f"billing-{args.command}")
        except ValueError as error:
            raise UsageError(str(error)) from None
        code: int = args.run(args)
        return code
    except UsageError as error:
        err.print(f"[red]billing {args.command}: {error}[/red]")
        return 2
    except (StartupError, ConnectionError) as error:
        err.print(f"[red]billing {args.command}: {error}[/red]")
        return 1
    except KeyboardInterrupt:
        err.print("interrupted")
        return 130
    finally:
        telemetry.current().shutdown()


if __name__ == "__main__":
    raise SystemExit(main())
