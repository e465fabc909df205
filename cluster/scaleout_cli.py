"""The ``billing cluster`` command: ``status`` (rich tables or ``--json``), ``rebalance``
(``--watch`` keeps doing it as nodes join) and ``drain NODE``, with a progress bar and the time
per move round. The work itself is in :mod:`cluster.scaleout`.
"""

from __future__ import annotations

from typing import Any

from cluster.bootstrap import StartupError
from cluster.scaleout import (
    PER_ROUND_DEFAULT,
    ClusterStatus,
    MoveReport,
    Round,
    collect_status,
    drain,
    list_nodes,
    match_node,
    pending_nodes,
    rebalance,
    watch,
)


def add_parser(commands: Any) -> None:
    """``billing cluster status | rebalance | drain NODE`` (wired in by cluster/cli.py)."""
    import argparse

    parser: argparse.ArgumentParser = commands.add_parser(
        "cluster", help="status | rebalance | drain NODE: scale the owners out and in"
    )
    parser.add_argument(
        "action", choices=("status", "rebalance", "drain"), help="what to show or do"
    )
    parser.add_argument("node", nargs="?", help="drain: node id or address (a prefix will do)")
    parser.add_argument(
        "--address",
        default=None,
        help="Ray cluster address (default: $RAY_ADDRESS, else the one `billing serve` recorded,"
        " else auto)",
    )
    parser.add_argument("--json", action="store_true", help="status: JSON for machines")
    parser.add_argument(
        "--per-round",
        type=int,
        default=PER_ROUND_DEFAULT,
        help=f"vshards moved per round (default {PER_ROUND_DEFAULT})",
    )
    parser.add_argument(
        "--owners-per-node",
        type=int,
        default=None,
        help="rebalance: owners per node (default: $BILLING_OWNERS_PER_NODE, else 2)",
    )
    parser.add_argument(
        "--watch",
        type=float,
        default=None,
        metavar="SECONDS",
        help="rebalance: keep running; every SECONDS start owners on joined nodes and move"
        " vshards to them (Ctrl-C stops)",
    )
    parser.set_defaults(run=cmd_cluster)


def cmd_cluster(args: Any) -> int:
    import ray

    from cluster.bootstrap import init_ray
    from cluster.cli import UsageError, console, join_address
    from failover.config import ConfigError, Settings

    try:
        settings = Settings.from_env()
    except ConfigError as error:
        raise UsageError(str(error)) from None
    if args.per_round < 1:
        raise UsageError(f"--per-round={args.per_round} must be >= 1")
    if args.action == "drain" and not args.node:
        raise UsageError("drain: which NODE? (a node id or address, see billing cluster status)")
    owners_per_node = args.owners_per_node or settings.owners_per_node
    joined_here = not ray.is_initialized()
    init_ray(join_address(args.address), namespace=settings.namespace)
    try:
        if args.action == "status":
            status = collect_status(settings.namespace)
            if args.json:
                import json

                print(json.dumps(status.as_json(), indent=2, sort_keys=True))
            else:
                print_status(status, console)
            return 0
        if args.action == "drain":
            match_node(list_nodes(), args.node)  # a bad NODE fails before any progress shows
        if args.action == "rebalance" and args.watch is not None:
            return _watch(args, settings.namespace, owners_per_node, console)
        report = _run_moves(args, settings.namespace, owners_per_node, console)
        _print_report(report, console)
        return 0
    finally:
        if joined_here:
            ray.shutdown()


def _watch(args: Any, namespace: str, owners_per_node: int, console: Any) -> int:
    import threading

    from cluster.cli import UsageError

    if not args.watch > 0:
        raise UsageError(f"--watch={args.watch} must be > 0 seconds")
    stop = threading.Event()

    def act() -> None:
        try:
            _print_report(_run_moves(args, namespace, owners_per_node, console), console)
        except StartupError as error:  # reported; the next check tries again
            console.print(f"[red]rebalance failed: {error}[/red]")

    console.print(f"watching for joining nodes every {args.watch:g} s (Ctrl-C stops)")
    try:
        watch(lambda: bool(pending_nodes(namespace, owners_per_node)), act, args.watch, stop.wait)
    except KeyboardInterrupt:
        console.print("stopped watching")
    return 0


def _print_report(report: MoveReport, console: Any) -> None:
    """What a rebalance or drain did, with the time per round (median, max)."""
    console.print(
        f"[bold]{report.moved} vshards moved in {len(report.rounds)} rounds[/bold];"
        f" map version {report.map_version}"
    )
    if report.rounds:
        times = sorted(r.seconds for r in report.rounds)
        console.print(
            f"time per round: median {times[len(times) // 2] * 1000:.0f} ms,"
            f" max {times[-1] * 1000:.0f} ms"
        )
    if report.stopped_owners:
        console.print(f"stopped owners: {', '.join(report.stopped_owners)}")
    for warning in report.warnings:
        console.print(f"[yellow]note: {warning}[/yellow]")


def _run_moves(args: Any, namespace: str, owners_per_node: int, console: Any) -> MoveReport:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    with Progress(
        TextColumn("[bold]{task.description}[/bold]"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("vshards  {task.fields[last]}"),
        console=console,
    ) as progress:
        task = progress.add_task("moving", total=None, last="")

        def on_plan(total: int) -> None:
            progress.update(task, total=total)

        def on_round(r: Round) -> None:
            progress.update(
                task,
                advance=r.vshards,
                last=f"round {r.index}/{r.rounds}: {r.vshards} in {r.seconds * 1000:.0f} ms",
            )
            progress.console.print(
                f"round {r.index}/{r.rounds}: {r.vshards} vshards in {r.seconds * 1000:.0f} ms"
                f" (map version {r.map_version})"
            )

        def on_started(node_id: str, names: list[str]) -> None:
            progress.console.print(f"started {', '.join(names)} on node {node_id[:12]}")

        if args.action == "rebalance":
            return rebalance(
                namespace,
                owners_per_node,
                args.per_round,
                on_started=on_started,
                on_plan=on_plan,
                on_round=on_round,
            )
        return drain(namespace, args.node, args.per_round, on_plan=on_plan, on_round=on_round)


def print_status(status: ClusterStatus, console: Any) -> None:
    """Nodes and owners as rich tables, with the map version."""
    from rich.table import Table

    console.print(
        f"[bold]shard map version {status.map_version}[/bold], {status.vshard_count} vshards,"
        f" {len(status.owners)} owners on {sum(n.alive for n in status.nodes)} live nodes"
    )
    nodes = Table(title="nodes", show_edge=False)
    for column in ("node id", "address", "alive", "CPU", "memory", "object store", "owners"):
        nodes.add_column(column)
    per_node: dict[str, int] = {}
    for o in status.owners:
        per_node[o.node_id] = per_node.get(o.node_id, 0) + 1
    for n in status.nodes:
        nodes.add_row(
            n.node_id,
            n.address,
            "yes" if n.alive else "[red]no[/red]",
            f"{n.resources.get('CPU', 0):g}",
            f"{n.resources.get('memory', 0) / 2**20:,.0f} MiB",
            f"{n.resources.get('object_store_memory', 0) / 2**20:,.0f} MiB",
            str(per_node.get(n.node_id, 0)),
        )
    console.print(nodes)
    owners = Table(title="owners", show_edge=False)
    for column in ("owner", "node", "pid", "state", "ready", "vshards", "last error"):
        owners.add_column(column)
    for o in status.owners:
        owners.add_row(
            o.name,
            o.node_id[:12],
            str(o.pid or ""),
            o.state,
            "yes" if o.ready else "[yellow]no[/yellow]",
            str(o.vshards),
            o.last_error,
        )
    console.print(owners)
