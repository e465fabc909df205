"""Migration 0005 drops journal_account, applies on a database at 0004, and keeps what is read.

The index was only paid for (an insert at a random place per journal line, every commit);
nothing reads the journal per account. What the store does read stays indexed: the journal's
primary key (a repeated idempotency key is refused; the applied-keys lookup) and answers_recent
(the takeover's recent-answers load and the answers pruning).
"""

from __future__ import annotations

import asyncio

import psycopg
import pytest

from sharding import _samples as sample
from sharding._sql import migrations
from sharding.store import DuplicateKey, Store

pytestmark = pytest.mark.integration


def _indexes(dsn: str, table: str) -> set[str]:
    with psycopg.connect(dsn) as conn:
        rows = conn.execute(
            "SELECT indexname FROM pg_indexes WHERE schemaname = 'public' AND tablename = %s",
            (table,),
        ).fetchall()
    return {r[0] for r in rows}


def _migrate_to_0004(dsn: str) -> None:
    """A database as every deployment before 0005 has it (recorded as Store.migrate does)."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(
            "CREATE TABLE schema_migrations ("
            " version text PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
        )
        for version, sql in migrations():
            if version[:4] > "0004":
                break
            with conn.transaction():
                conn.execute(sql.encode())
                conn.execute("INSERT INTO schema_migrations (version) VALUES (%s)", (version,))


def test_a_migrated_database_has_no_journal_account_but_keeps_what_is_read(
    store: Store, pg_dsn: str
) -> None:
    assert _indexes(pg_dsn, "journal") == {"journal_pkey"}
    assert _indexes(pg_dsn, "answers") == {"answers_pkey", "answers_recent"}


def test_0005_applies_on_a_database_at_0004_with_data(pg_dsn: str, aio: asyncio.Runner) -> None:
    _migrate_to_0004(pg_dsn)
    assert "journal_account" in _indexes(pg_dsn, "journal")

    async def scenario() -> list[str]:
        async with Store(pg_dsn) as s:
            epochs = await s.take_over([3], "owner-a")
            await s.commit(sample.debit_batch([sample.account("a-1", 3)], "k"), epochs)
            applied = await s.migrate()
            # After the migration the commit still writes, and still refuses a repeated key.
            await s.commit(sample.debit_batch([sample.account("a-1", 3)], "k2"), epochs)
            with pytest.raises(DuplicateKey):
                await s.commit(sample.debit_batch([sample.account("a-1", 3)], "k2"), epochs)
            return applied

    applied = aio.run(scenario())
    assert [v for v in applied if v[:4] == "0005"] == ["0005_journal_account"]
    assert "journal_account" not in _indexes(pg_dsn, "journal")
    with psycopg.connect(pg_dsn) as conn:
        row = conn.execute("SELECT count(*) FROM journal WHERE account_id = 'a-1'").fetchone()
    assert row is not None and row[0] >= 2
