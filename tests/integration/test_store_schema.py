"""The live schema keeps the Citus rules, and migrations are idempotent and race-free."""

from __future__ import annotations

import asyncio

import psycopg
import pytest

from sharding._sql import migrations as _migrations
from sharding.store import Store

pytestmark = pytest.mark.integration

SUBSCRIBER_OWNED = {
    "shard_leases",
    "subscribers",
    "accounts",
    "buckets",
    "sessions",
    "journal",
    "answers",
}
REFERENCE = {"plans", "shard_map", "schema_migrations"}


def _constraints(dsn: str) -> list[tuple[str, str, str, list[str]]]:
    """(table, constraint, type, columns in key order) of every PK/unique/FK in public."""
    with psycopg.connect(dsn) as conn:
        rows = conn.execute(
            """
            SELECT c.conrelid::regclass::text, c.conname, c.contype,
                   array_agg(a.attname ORDER BY k.ord)
            FROM pg_constraint c
            JOIN pg_namespace n ON n.oid = c.connamespace AND n.nspname = 'public'
            CROSS JOIN LATERAL unnest(c.conkey) WITH ORDINALITY AS k(attnum, ord)
            JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = k.attnum
            WHERE c.contype IN ('p', 'u', 'f')
            GROUP BY 1, 2, 3
            """
        ).fetchall()
    return [(t, n, ty, list(cols)) for t, n, ty, cols in rows]


def test_every_table_is_known_and_keys_lead_with_vshard(store: Store, pg_dsn: str) -> None:
    with psycopg.connect(pg_dsn) as conn:
        tables = {
            r[0]
            for r in conn.execute(
                "SELECT tablename FROM pg_tables WHERE schemaname = 'public'"
            ).fetchall()
        }
        unique_indexes = conn.execute(
            "SELECT tablename, indexname, indexdef FROM pg_indexes WHERE schemaname = 'public'"
        ).fetchall()
    assert tables == SUBSCRIBER_OWNED | REFERENCE, "a new table must be classified here"
    keys = [c for c in _constraints(pg_dsn) if c[0] in SUBSCRIBER_OWNED and c[2] in "pu"]
    assert {c[0] for c in keys} == SUBSCRIBER_OWNED  # each has a primary key
    for table, name, _, columns in keys:
        assert columns[0] == "vshard", f"{table}.{name} must start with vshard: {columns}"
    for table, name, definition in unique_indexes:
        if table in SUBSCRIBER_OWNED:
            cols = definition.split("(", 1)[1]
            assert cols.startswith("vshard"), f"index {name} on {table} must lead with vshard"


def test_no_foreign_keys_between_subscriber_owned_tables(store: Store, pg_dsn: str) -> None:
    """Citus allows only colocated FKs; we keep none (the owner keeps integrity, audit checks)."""
    fks = [c for c in _constraints(pg_dsn) if c[2] == "f"]
    for table, name, _, columns in fks:
        assert table not in SUBSCRIBER_OWNED or columns[0] == "vshard", (table, name)
    assert fks == []


def test_migrations_are_idempotent(store: Store, aio: asyncio.Runner, pg_dsn: str) -> None:
    assert aio.run(store.migrate()) == []  # the fixture applied them already
    with psycopg.connect(pg_dsn) as conn:
        applied = [r[0] for r in conn.execute("SELECT version FROM schema_migrations ORDER BY 1")]
    assert applied == [v for v, _ in _migrations()]
    assert applied[0] == "0001_schema"


def test_concurrent_starters_apply_each_migration_once(pg_dsn: str, aio: asyncio.Runner) -> None:
    async def race() -> list[list[str]]:
        stores = [Store(pg_dsn) for _ in range(4)]
        for s in stores:
            await s.open()
        try:
            return list(await asyncio.gather(*(s.migrate() for s in stores)))
        finally:
            for s in stores:
                await s.close()

    results = aio.run(race())
    applied = sorted(v for r in results for v in r)
    assert applied == sorted(v for v, _ in _migrations())


def test_migration_files_are_numbered_and_ordered() -> None:
    versions = [v for v, _ in _migrations()]
    assert versions == sorted(versions)
    for v in versions:
        assert v[:4].isdigit() and v[4] == "_", v
    assert len({v[:4] for v in versions}) == len(versions), "two migrations share a number"
