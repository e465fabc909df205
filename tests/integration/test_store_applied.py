"""Store.applied_answers against a real PostgreSQL: which idempotency keys were committed, with
their stored answers, even past the load horizon; a key whose answer was pruned is still known."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import psycopg
import pytest

from billing.state import Changes, ShardState
from sharding import _samples as sample
from sharding.store import Store

pytestmark = pytest.mark.integration


def committed(store: Store, aio: asyncio.Runner) -> Changes:
    epochs = aio.run(store.take_over([3, 4], "owner-a"))
    ch = Changes()
    ch.accounts["a-1"] = sample.account("a-1", 3, balance_micros=10_000)
    ch.journal.append(sample.entry(3, "a-1", "open:a-1", amount_micros=4_000))
    ch.journal.append(sample.entry(3, "a-1", "top-1", amount_micros=6_000))
    ch.journal.append(sample.entry(3, "a-1", "cc:gone#0", amount_micros=0))
    ch.answers["cc:sess-1#0"] = (3, sample.answer("sess-1", 0))
    ch.balance_results["top-1"] = (3, sample.balance_result("top-1", "a-1", 6_000))
    ch.answers["cc:gone#0"] = (3, sample.answer("gone", 0))
    aio.run(store.commit(ch, epochs))
    return ch


def test_applied_answers_reports_stored_answers_and_pruned_keys(
    store: Store, aio: asyncio.Runner, pg_dsn: str
) -> None:
    ch = committed(store, aio)
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        # The answer of one key was pruned from the database; its journal lines stay.
        conn.execute("DELETE FROM answers WHERE idempotency_key = 'cc:gone#0'")
        # Past the load horizon: load() no longer brings it back, applied_answers still does.
        conn.execute(
            "UPDATE answers SET committed_at = now() - interval '3 days'"
            " WHERE idempotency_key = 'cc:sess-1#0'"
        )
    found = aio.run(
        store.applied_answers(
            [
                (3, "cc:sess-1#0"),
                (3, "top-1"),
                (3, "cc:gone#0"),
                (3, "never"),
                (4, "top-1"),  # the same key on another vshard is another key
                (3, "top-1"),  # repeated: asked once
            ]
        )
    )
    assert found == {
        (3, "cc:sess-1#0"): ch.answers["cc:sess-1#0"][1],
        (3, "top-1"): ch.balance_results["top-1"][1],
        (3, "cc:gone#0"): None,
    }
    state = ShardState()
    aio.run(store.load([3], state))
    assert "cc:sess-1#0" not in state.answers  # beyond the horizon for load
    assert aio.run(store.applied_answers([])) == {}


def test_applied_answers_of_an_empty_database(store: Store, aio: asyncio.Runner) -> None:
    assert aio.run(store.applied_answers([(1, "cc:x#0"), (2, "k")])) == {}
    assert store.answer_horizon == timedelta(days=1)
