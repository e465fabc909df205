"""The plain-PostgreSQL group commit since migration 0004: how it writes, and on what connection.

billing_commit UPDATEs accounts and upserts only the rows it did not find; a batch mixing
existing and new rows must write both, exactly as the upsert did. Answers are stored as
the compact JSON text the store sent. Writer connections plan billing_commit's statements once
(generic plans that stay index lookups) and reach a local server over its unix-domain socket.
"""

from __future__ import annotations

import asyncio

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict

from billing.state import Changes, ShardState
from sharding import _samples as sample
from sharding._codec import dumps
from sharding._rows import answer_data
from sharding.store import DuplicateKey, NotOwner, Store

pytestmark = pytest.mark.integration


def _loaded(aio: asyncio.Runner, store: Store, vshards: list[int]) -> ShardState:
    st = ShardState()
    aio.run(store.load(vshards, st))
    return st


def test_a_batch_of_existing_and_new_accounts_and_buckets_writes_both(
    store: Store, aio: asyncio.Runner
) -> None:
    epochs = aio.run(store.take_over([3, 4], "owner-a"))
    first = Changes()
    first.accounts["a-1"] = sample.account("a-1", 3, balance_micros=5_000)
    first.buckets["b-1"] = sample.bucket("b-1", "a-1", 3, units=100)
    aio.run(store.commit(first, epochs))
    mixed = Changes()
    a1 = sample.account("a-1", 3, balance_micros=4_000, reserved_micros=7)
    a2 = sample.account("a-2", 4, balance_micros=9_000)
    b1 = sample.bucket("b-1", "a-1", 3, units=90, reserved_units=3)
    b2 = sample.bucket("b-2", "a-2", 4, units=50)
    mixed.accounts.update({"a-1": a1, "a-2": a2})
    mixed.buckets.update({"b-1": b1, "b-2": b2})
    aio.run(store.commit(mixed, epochs))
    got = _loaded(aio, store, [3, 4])
    assert got.accounts == {"a-1": a1, "a-2": a2}
    assert got.buckets == {"b-1": b1, "b-2": b2}


def test_same_account_id_on_another_vshard_is_another_row(
    store: Store, aio: asyncio.Runner
) -> None:
    """The UPDATE matches the whole key (vshard, id): a row on another vshard is not touched."""
    epochs = aio.run(store.take_over([3, 4], "owner-a"))
    ch = Changes()
    ch.accounts["a-1"] = sample.account("a-1", 3, balance_micros=1)
    aio.run(store.commit(ch, epochs))
    ch = Changes()
    ch.accounts["a-1"] = sample.account("a-1", 4, balance_micros=2)
    aio.run(store.commit(ch, epochs))
    assert _loaded(aio, store, [3]).accounts["a-1"].balance_micros == 1
    assert _loaded(aio, store, [4]).accounts["a-1"].balance_micros == 2


def test_answers_are_stored_as_the_json_text_sent(
    store: Store, aio: asyncio.Runner, pg_dsn: str
) -> None:
    epochs = aio.run(store.take_over([3], "owner-a"))
    ch = Changes()
    answer = sample.answer("sess-1", 0)
    ch.answers["cc:sess-1#0"] = (3, answer)
    ch.balance_results["top-1"] = (3, sample.balance_result("top-1", "a-1", 10))
    aio.run(store.commit(ch, epochs))
    with psycopg.connect(pg_dsn) as conn:
        row = conn.execute("SELECT answer FROM answers WHERE idempotency_key = 'cc:sess-1#0'")
        assert row.fetchone() == (dumps(answer_data(answer)),)
    got = _loaded(aio, store, [3])
    assert got.answers == {"cc:sess-1#0": answer}
    assert got.balance_results == {"top-1": ch.balance_results["top-1"][1]}


def test_a_failure_after_the_update_leaves_the_accounts_as_they_were(
    store: Store, aio: asyncio.Runner
) -> None:
    """The accounts are UPDATEd before the answers are written: a repeated answer key after
    that must still leave every account untouched (one statement, one transaction)."""
    epochs = aio.run(store.take_over([3], "owner-a"))
    ch = Changes()
    ch.accounts["a-1"] = sample.account("a-1", 3, balance_micros=5_000)
    ch.answers["cc:x#0"] = (3, sample.answer("x", 0))
    aio.run(store.commit(ch, epochs))
    again = Changes()
    again.accounts["a-1"] = sample.account("a-1", 3, balance_micros=1)
    again.accounts["a-9"] = sample.account("a-9", 3, balance_micros=1)
    again.answers["cc:x#0"] = (3, sample.answer("x", 0))
    with pytest.raises(DuplicateKey, match="answers"):
        aio.run(store.commit(again, epochs))
    assert _loaded(aio, store, [3]).accounts == {"a-1": ch.accounts["a-1"]}


def test_fence_with_many_leases_still_names_the_stale_vshard(
    store: Store, aio: asyncio.Runner
) -> None:
    """The fence reads the leases through ``vshard = ANY(...)`` (a generic plan): with many
    leases stored it still checks every touched vshard and names the first stale one."""
    epochs = aio.run(store.take_over(list(range(300)), "owner-a"))
    aio.run(store.take_over([120], "owner-b"))
    ch = Changes()
    for v in (7, 120, 250):
        ch.accounts[f"a-{v}"] = sample.account(f"a-{v}", v, balance_micros=1)
    with pytest.raises(NotOwner) as err:
        aio.run(store.commit(ch, epochs))
    assert (err.value.vshard, err.value.expected_epoch, err.value.actual_epoch) == (120, 1, 2)
    assert _loaded(aio, store, [7, 120, 250]).accounts == {}


def test_writer_uses_generic_plans_and_the_local_unix_socket(
    store: Store, aio: asyncio.Runner, pg_dsn: str
) -> None:
    async def writer_facts() -> tuple[str, object, str]:
        conn = await store._writer()
        try:
            cur = await conn.execute(
                "SELECT current_setting('plan_cache_mode') || ' ' || current_setting('enable_seqscan')"
                " || ' ' || current_setting('enable_hashjoin') || ' ' || current_setting('enable_mergejoin'),"
                " inet_server_addr(), current_setting('unix_socket_directories')"
            )
            row = await cur.fetchone()
            assert row is not None
            return str(row[0]), row[1], str(row[2])
        finally:
            await conn.close()

    mode, address, sockets = aio.run(writer_facts())
    assert mode == "force_generic_plan off off off"
    host = conninfo_to_dict(pg_dsn).get("host")
    if host in ("127.0.0.1", "localhost") and sockets.startswith("/"):
        assert address is None  # a unix-domain socket has no server address
        assert conninfo_to_dict(store._writer_dsn)["host"] == sockets.split(",")[0].strip()


def test_a_remote_looking_dsn_keeps_tcp(pg_dsn: str, aio: asyncio.Runner) -> None:
    """Only a loopback DSN is moved to the socket; anything else is used as given."""
    params = conninfo_to_dict(pg_dsn)
    if params.get("host") != "127.0.0.1":
        pytest.skip("the test server is not reached over 127.0.0.1")
    params["hostaddr"] = "127.0.0.1"
    params["host"] = "db.invalid"  # hostaddr is used to connect, host only names it
    dsn = " ".join(f"{k}={v}" for k, v in params.items())
    store = Store(dsn, min_size=1, max_size=1)
    aio.run(store.open())
    try:
        assert store._writer_dsn == dsn
    finally:
        aio.run(store.close())


def test_a_vanished_socket_falls_back_to_the_dsn(store: Store, aio: asyncio.Runner) -> None:
    """The socket found at open() may go away (the server reconfigured): writers reconnect with
    the DSN as given, and the commit goes through."""
    store._writer_dsn = "host=/nonexistent-billing-socket-dir port=5 dbname=nowhere"
    epochs = aio.run(store.take_over([3], "owner-a"))
    ch = Changes()
    ch.accounts["a-1"] = sample.account("a-1", 3, balance_micros=5)
    aio.run(store.commit(ch, epochs))
    assert store._writer_dsn == store.dsn
    assert _loaded(aio, store, [3]).accounts == {"a-1": ch.accounts["a-1"]}
