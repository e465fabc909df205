"""In-process throughput of the pure charging domain on one core (no Ray, gRPC or database).

Workload: N subscribers spread over the payg, postpaid-monthly and hybrid templates; each runs one
voice session (INITIAL, 3 UPDATEs, TERMINATION), one data session (INITIAL, 4 UPDATEs,
TERMINATION) and one SMS session (INITIAL, TERMINATION), interleaved across subscribers the way
an owner sees them. Requests are built before the clock starts; the timed loop is ``handle()``
plus ``take_changes()`` every 100 requests (one owner batch), timed in CPU seconds of this process
(the machine is shared). It runs once as is (CPython's default collector settings: the baseline),
once with only the pre-built requests frozen (default settings, the collector sees an owner's
heap), and once with the collector configured exactly as a ShardOwner runs it: the same
``actors._gc.tune_gc()`` thresholds and ``actors._gc.freeze_loaded()`` after loading. Before
timing, one untimed run keeps every journal line and checks every answer is 2001 and that
``ledger.audit`` finds the state conserved; the timed runs fail on any answer that is not 2001.
Baselines measured in the same run:
a trivial dict-update loop over the same number of requests, and rating alone (``rate()`` of one
usage per request), so the ratios show what charging costs beyond pricing.

    .venv/bin/python benchmarks/bench_domain.py [--subscribers 10000] [--runs 5]
    .venv/bin/python benchmarks/bench_domain.py --digest 2000

``--digest N`` runs the workload once for N subscribers and prints the SHA-256 of the ``repr`` of
the opening journal, every answer, every ``take_changes()`` (every 100 requests) and the final
accounts, buckets, stored answers and answer log, and exits: a change to the domain that is meant
to be exact must leave this digest unchanged.
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import statistics
import time
import tracemalloc
from datetime import UTC, datetime, timedelta

from actors._gc import freeze_loaded, tune_gc
from billing.charging import handle, provision_subscriber
from billing.ledger import audit
from billing.protocol import CreditControlRequest, RequestType, ServiceKind
from billing.rating import UsageEvent, rate
from billing.scenario import entry
from billing.state import JournalEntry, ShardState
from billing.tariff import builtin_catalog

START = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
PLANS = ("payg", "postpaid-monthly", "hybrid")
EUR = 1_000_000


def build(subscribers: int) -> tuple[ShardState, list[tuple[datetime, CreditControlRequest]]]:
    """A fresh state with ``subscribers`` provisioned, and the timed workload in arrival order."""
    state = build_state(subscribers)
    return state, build_requests(subscribers)


def build_state(subscribers: int, journal: list[JournalEntry] | None = None) -> ShardState:
    """A fresh state with ``subscribers`` provisioned; their opening journal lines go to
    ``journal`` when given (for the audit)."""
    catalog = builtin_catalog()
    state = ShardState()
    for i in range(subscribers):
        plan = PLANS[i % len(PLANS)]
        provision_subscriber(
            state,
            subscriber_id=f"sub-{i:07d}",
            vshard=i % 1024,
            plan=catalog.get(plan),
            payment_mode=None,
            initial_balance_micros=50 * EUR if plan != "postpaid-monthly" else 0,
            credit_limit_micros=100 * EUR if plan != "payg" else 0,
            currency=None,
            now=START,
        )
    opening = state.take_changes()
    if journal is not None:
        journal.extend(opening.journal)
    return state


def build_requests(subscribers: int) -> list[tuple[datetime, CreditControlRequest]]:
    """The timed workload in arrival order: (time, request)."""
    # Per subscriber, three sessions as lists of (seconds after start, request).
    timeline: list[tuple[int, int, CreditControlRequest]] = []
    for i in range(subscribers):
        sub = f"sub-{i:07d}"
        t0 = i % 600
        scripts = [
            ("v", 100, 120, [60, 120, 120], 30),
            ("d", 10, 2_000_000, [1_500_000, 2_000_000, 2_000_000, 1_000_000], 500_000),
            ("m", 200, 1, [], 1),
        ]
        for tag, rg, ask, updates, last in scripts:
            sid = f"{sub}-{tag}"

            def req(kind: RequestType, n: int, at: int, *services: object) -> None:
                timeline.append(
                    (
                        at,
                        len(timeline),
                        CreditControlRequest(
                            session_id=sid,  # noqa: B023
                            request_type=kind,
                            request_number=n,
                            subscriber_id=sub,  # noqa: B023
                            event_time=START + timedelta(seconds=at),
                            services=services,  # type: ignore[arg-type]
                            destination="33140000000",
                        ),
                    )
                )

            req(RequestType.INITIAL, 0, t0, entry(rg, request=ask))
            at = t0
            for n, used in enumerate(updates, start=1):
                at += 60
                req(RequestType.UPDATE, n, at, entry(rg, request=ask, used=used))
            req(RequestType.TERMINATION, len(updates) + 1, at + 30, entry(rg, used=last))
    timeline.sort(key=lambda item: (item[0], item[1]))
    return [(START + timedelta(seconds=at), request) for at, _, request in timeline]


def verify(subscribers: int) -> int:
    """Run the workload once, untimed, keeping every journal line: every answer must be 2001,
    every session ended, and ``ledger.audit`` must find the state conserved. Returns the number
    of journal lines audited; raises ``SystemExit`` on any failure."""
    catalog = builtin_catalog()
    journal: list[JournalEntry] = []
    state = build_state(subscribers, journal)
    for now, request in build_requests(subscribers):
        answer = handle(state, request, now=now, catalog=catalog)
        if answer.result_code != 2001:
            raise SystemExit(f"{request.idempotency_key}: answered {answer}")
        journal.extend(state.take_changes().journal)
    if state.sessions:
        raise SystemExit(f"{len(state.sessions)} sessions still open")
    problems = audit(state, journal)
    if problems:
        raise SystemExit("conservation audit failed:\n" + "\n".join(problems[:20]))
    return len(journal)


def digest(subscribers: int) -> str:
    """SHA-256 of everything the workload produces (see the module docstring, ``--digest``)."""
    catalog = builtin_catalog()
    h = hashlib.sha256()
    journal: list[JournalEntry] = []
    state = build_state(subscribers, journal)
    h.update(repr(journal).encode())
    for i, (now, request) in enumerate(build_requests(subscribers)):
        h.update(repr(handle(state, request, now=now, catalog=catalog)).encode())
        if i % 100 == 99:
            h.update(repr(state.take_changes()).encode())
    h.update(repr(state.take_changes()).encode())
    h.update(repr(sorted(state.accounts.items())).encode())
    h.update(repr(sorted(state.buckets.items())).encode())
    h.update(repr(sorted(state.answers.items())).encode())
    h.update(repr(list(state.answer_log)).encode())
    return h.hexdigest()


def run_domain(
    subscribers: int, *, freeze_requests: bool = False, owner_gc: bool = False
) -> tuple[float, int, int]:
    """CPU seconds for the whole workload, requests, and how many were not successes.

    ``freeze_requests``: move the pre-built requests out of the cyclic collector's reach (built
    first, frozen, then the state is loaded), so the collector sees the heap of an owner (its
    state, answers and sessions) rather than 130,000 requests an owner never holds at once.
    ``owner_gc``: the same, and the collector configured as actors/owner.py runs it:
    ``tune_gc()`` thresholds, and ``freeze_loaded()`` once the state is loaded (the owner calls it
    after a load, a reload and bulk provisioning). Settings are restored afterwards.
    """
    catalog = builtin_catalog()
    previous = gc.get_threshold()
    if freeze_requests or owner_gc:
        work = build_requests(subscribers)
        gc.collect()
        gc.freeze()
        state = build_state(subscribers)
    else:
        state, work = build(subscribers)
    if owner_gc:
        tune_gc()
        freeze_loaded()
    failures = 0
    begin = time.process_time()
    for i, (now, request) in enumerate(work):
        answer = handle(state, request, now=now, catalog=catalog)
        if answer.result_code != 2001:
            failures += 1
        if i % 100 == 99:
            state.take_changes()
    elapsed = time.process_time() - begin
    gc.unfreeze()
    gc.set_threshold(*previous)
    assert not state.sessions, "every session terminated"
    if failures:
        raise SystemExit(f"{failures} answers were not 2001")
    return elapsed, len(work), failures


def run_dict_baseline(requests: int) -> float:
    balances = {f"sub-{i:07d}": 0 for i in range(max(1, requests // 12))}
    keys = list(balances) * 13
    begin = time.process_time()
    for i in range(requests):
        key = keys[i]
        balances[key] = balances[key] - 1
    return time.process_time() - begin


def run_rating_baseline(requests: int) -> float:
    plan = builtin_catalog().get("payg")
    usages = [
        UsageEvent(ServiceKind.VOICE, 120, START, 100, "33140000000"),
        UsageEvent(ServiceKind.DATA, 2_000_000, START, 10, None),
        UsageEvent(ServiceKind.SMS, 1, START, 200, "33140000000"),
    ]
    begin = time.process_time()
    for i in range(requests):
        rate(usages[i % 3], plan)
    return time.process_time() - begin


def memory_per_subscriber(plan_id: str, subscribers: int = 20_000) -> float:
    """Bytes of domain state per provisioned subscriber (account, buckets, indexes), not
    counting the subscriber id string the caller already holds."""
    plan = builtin_catalog().get(plan_id)
    ids = [f"+3361{i:07d}" for i in range(subscribers)]
    state = ShardState()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    for i, sid in enumerate(ids):
        provision_subscriber(
            state,
            subscriber_id=sid,
            vshard=i % 1024,
            plan=plan,
            payment_mode=None,
            initial_balance_micros=EUR,
            credit_limit_micros=0 if plan_id == "payg" else EUR,
            currency=None,
            now=START,
        )
        if i % 100 == 99:
            state.take_changes()
    state.take_changes()
    after = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    return (after - before) / subscribers


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--subscribers", type=int, default=10_000)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument(
        "--digest", type=int, metavar="N", help="print the workload's SHA-256 for N subscribers"
    )
    args = parser.parse_args()
    if args.digest:
        print(f"sha256 {digest(args.digest)} ({args.digest} subscribers)")
        return
    audited = verify(args.subscribers)
    domain, owner, owner_heap, dict_rates, rating_rates = [], [], [], [], []
    requests = failures = 0
    for _ in range(args.runs):
        elapsed, requests, failures = run_domain(args.subscribers)
        domain.append(requests / elapsed)
        elapsed, requests, failures = run_domain(args.subscribers, owner_gc=True)
        owner.append(requests / elapsed)
        elapsed, requests, failures = run_domain(args.subscribers, freeze_requests=True)
        owner_heap.append(requests / elapsed)
        dict_rates.append(requests / run_dict_baseline(requests))
        rating_rates.append(requests / run_rating_baseline(requests))
    d, f, o, b, r = (
        statistics.median(x) for x in (domain, owner, owner_heap, dict_rates, rating_rates)
    )
    print(
        f"subscribers {args.subscribers}, requests per run {requests}, non-2001 answers {failures}"
    )
    print(f"verified: every answer 2001, all sessions ended, {audited:,} journal lines audited")
    print("requests per CPU second, median of", args.runs, "runs:")
    print(f"domain, owner gc settings {f:12,.0f} /s   (actors._gc: thresholds, frozen after load)")
    print(f"baseline: default gc      {d:12,.0f} /s   owner gc/default = {f / d:.2f}")
    print(f"baseline: default gc, requests frozen {o:,.0f} /s   (collector sees the owner's heap)")
    print(f"baseline rate() alone     {r:12,.0f} /s   owner gc/rating = {f / r:.2f}")
    print(f"baseline dict update      {b:12,.0f} /s   owner gc/dict   = {f / b:.4f}")
    for plan_id in ("payg", "postpaid-monthly"):
        print(f"state per subscriber ({plan_id}): {memory_per_subscriber(plan_id):,.0f} bytes")


if __name__ == "__main__":
    main()
