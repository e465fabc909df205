"""The chaos run's tables: faults by kind, requests by result, invariant checks, recovery times."""

from __future__ import annotations

import statistics
from collections import Counter
from typing import TYPE_CHECKING, Any

from failover.audit import render
from failover.schedule import FaultKind

if TYPE_CHECKING:
    from failover.chaos import ChaosResult


def _ms(values: list[float]) -> str:
    return f"{statistics.median(values):.0f}" if values else "-"


def render_result(result: ChaosResult, console: Any) -> None:
    """Print every table of a run to a rich Console."""
    from rich.table import Table

    faults = Table(title=f"Faults injected (seed {result.seed})")
    for column in ("kind", "scheduled", "injected", "skipped/failed"):
        faults.add_column(column, justify="left" if column == "kind" else "right")
    scheduled = Counter(f.kind for f in result.schedule)
    injected = Counter(f.kind for _, f, d in result.injected if not _skipped(d))
    skipped = Counter(f.kind for _, f, d in result.injected if _skipped(d))
    for kind in FaultKind:
        if scheduled[kind]:
            faults.add_row(
                kind.value, str(scheduled[kind]), str(injected[kind]), str(skipped[kind])
            )
    faults.add_row("total", str(len(result.schedule)), str(injected.total()), str(skipped.total()))
    console.print(faults)

    requests = Table(title=f"Requests ({result.answers} answers in {result.load_seconds:.1f}s)")
    requests.add_column("outcome (every attempt)")
    requests.add_column("count", justify="right")
    for outcome, count in sorted(result.outcomes.items(), key=lambda kv: -kv[1]):
        requests.add_row(outcome, str(count))
    console.print(requests)

    if result.phases:
        phases = Table(title="Successful answers per second")
        phases.add_column("phase")
        phases.add_column("answers", justify="right")
        phases.add_column("per second", justify="right")
        for name, (ok, seconds) in result.phases.items():
            phases.add_row(name, str(ok), f"{ok / seconds:.0f}")
        console.print(phases)

    recovery = Table(title="Service back after a fault (ms)")
    for column in ("fault", "count", "median", "max", "not back"):
        recovery.add_column(column, justify="left" if column == "fault" else "right")
    by_kind: dict[FaultKind, list[float]] = {}
    lost: Counter[FaultKind] = Counter()
    for r in result.recoveries:
        if r.recovered_ms is None:
            lost[r.kind] += 1
        else:
            by_kind.setdefault(r.kind, []).append(r.recovered_ms)
    for kind in FaultKind:
        values = by_kind.get(kind, [])
        if values or lost[kind]:
            recovery.add_row(
                kind.value,
                str(len(values) + lost[kind]),
                _ms(values),
                f"{max(values):.0f}" if values else "-",
                str(lost[kind]),
            )
    console.print(recovery)

    if result.takeovers:
        decisions = Table(title="Failover monitor decisions")
        for column in ("owner", "verdict", "map version", "vshards moved", "publish ms", "error"):
            decisions.add_column(column)
        for e in result.takeovers:
            took = (
                f"{(e['published_at'] - e['detected_at']) * 1000:.0f}"
                if e.get("published_at")
                else "-"
            )
            decisions.add_row(
                e["owner"],
                e["transition"],
                str(e.get("map_version") or "-"),
                str(e.get("moved", 0)),
                took,
                e.get("error", "")[:80],
            )
        console.print(decisions)
    if result.monitor_status:
        status = result.monitor_status
        console.print(
            f"Failover monitor: {status.get('rounds')} probe rounds, dead owners "
            f"{status.get('dead')}, last error: {status.get('last_error') or '-'}"
        )
    if result.moves:
        moves = Table(title="Scale-out: vshards moved to a new node's owners")
        for column in (
            "vshards",
            "rounds",
            "seconds",
            "failed client attempts meanwhile",
            "answers/s 5 s before",
            "during",
            "5 s after",
        ):
            moves.add_column(column, justify="right")
        for m in result.moves:
            moves.add_row(
                str(m.vshards),
                str(m.rounds),
                f"{m.ended - m.started:.2f}",
                str(m.failed_attempts),
                *(f"{r:.0f}" for r in m.rates),
            )
        console.print(moves)

    if result.audit is not None:
        console.print(render(result.audit))
    store = Table(title="Store SQL audit (sharding.store.Store.audit)")
    store.add_column("result")
    store.add_column("problems", overflow="fold")
    store.add_row(
        "[green]PASS[/green]" if not result.store_audit else "[red]FAIL[/red]",
        "; ".join(result.store_audit[:5]) or "-",
    )
    console.print(store)
    for error in result.errors:
        console.print(f"[red]run error[/red]: {error}")


def _skipped(detail: str) -> bool:
    return detail.startswith(("skipped", "failed"))
