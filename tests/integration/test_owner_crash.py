"""An owner process killed in the middle of load: after Ray restarts it (takeover: epoch bump,
bulk load), every answer that said success is in the journal, and no idempotency key is charged
twice (the caller retries unknown outcomes with the same key, like a front door)."""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import time
from typing import Any

import psycopg
import pytest

from actors.messages import Answered
from billing.protocol import CreditControlAnswer, RequestType, ResultCode
from sharding.store import Store

from ._owner_helpers import answered, provision, running_cluster, submit, voice

pytestmark = pytest.mark.integration

SUBSCRIBERS = [f"49170009{i:04d}" for i in range(16)]
ROUNDS = 12


def _drive(
    handles: Any, done: list[tuple[str, CreditControlAnswer]], stop: threading.Event
) -> None:
    """Sessions of every subscriber, request by request, each retried with its own key."""
    for round_ in range(ROUNDS):
        if stop.is_set():
            return
        steps = [
            [
                voice(f"c{round_}-{s}", s, 0, RequestType.INITIAL, request_s=120)
                for s in SUBSCRIBERS
            ],
            [
                voice(f"c{round_}-{s}", s, 1, RequestType.UPDATE, request_s=60, used_s=40)
                for s in SUBSCRIBERS
            ],
            [
                voice(f"c{round_}-{s}", s, 2, RequestType.TERMINATION, request_s=None, used_s=25)
                for s in SUBSCRIBERS
            ],
        ]
        for batch in steps:
            for request, reply in zip(batch, submit(handles, batch, attempts=200), strict=True):
                if isinstance(reply, Answered):
                    done.append((request.request.idempotency_key, reply.payload))


def test_killed_owner_loses_nothing_and_charges_nothing_twice(
    ray_cluster: Any, pg_dsn: str
) -> None:
    with running_cluster(pg_dsn) as handles:
        for s in SUBSCRIBERS:
            answered(provision(handles, s, balance=50_000_000))
        victim = handles.get_map().owner_of_key(SUBSCRIBERS[0])
        before = {st.name: st for st in handles.statuses()}[victim]
        done: list[tuple[str, CreditControlAnswer]] = []
        stop = threading.Event()
        driver = threading.Thread(target=_drive, args=(handles, done, stop), daemon=True)
        driver.start()
        deadline = time.monotonic() + 60
        while len(done) < 3 * len(SUBSCRIBERS) and time.monotonic() < deadline:
            time.sleep(0.05)
        os.kill(before.pid, signal.SIGKILL)
        driver.join(timeout=240)
        stop.set()
        assert not driver.is_alive()
        after = {st.name: st for st in handles.statuses()}[victim]
        assert after.pid != before.pid and after.ready
        assert set(after.vshards) == set(before.vshards)
        assert all(after.epochs[v] > before.epochs[v] for v in after.vshards)
        assert len(done) == ROUNDS * 3 * len(SUBSCRIBERS)  # every request got a durable answer

    with psycopg.connect(pg_dsn) as conn:
        rows = conn.execute(
            "SELECT idempotency_key, sum(amount_micros), count(*) FROM journal"
            " WHERE idempotency_key LIKE 'cc:%' GROUP BY idempotency_key"
        ).fetchall()
    journal = {key: (int(total), int(lines)) for key, total, lines in rows}
    seen: dict[str, CreditControlAnswer] = {}
    for key, answer in done:
        assert seen.setdefault(key, answer) == answer  # one answer per key, however often asked
        if answer.result_code == ResultCode.SUCCESS and answer.cost_micros:
            assert key in journal, f"acknowledged {key} is not in the journal"
            assert -journal[key][0] == answer.cost_micros, key
    charged_keys = {k for k, (total, _) in journal.items() if total}
    assert charged_keys <= set(seen)  # nothing charged that was not answered

    async def audit() -> list[str]:
        async with Store(pg_dsn) as store:
            return await store.audit()

    assert asyncio.run(audit()) == []
