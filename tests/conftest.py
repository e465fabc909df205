"""Shared fixtures: a real PostgreSQL for the whole test session, a fresh database per test.

- ``pg_server`` (session): the admin DSN of a server. ``BILLING_TEST_DSN`` selects an existing
  server (it must allow CREATE DATABASE); otherwise an embedded server is started exactly as
  `billing db up` starts it (sharding.pgserver.EmbeddedPostgres) in a temporary directory and
  stopped at the end, so a fresh machine with PostgreSQL binaries needs nothing else.
- ``pg_dsn``: the DSN of a new, empty database, dropped after the test.
- ``aio``: an ``asyncio.Runner`` for the test (no async pytest plugin is needed):
  ``aio.run(store.commit(...))``.
- ``store``: a ``sharding.store.Store`` on ``pg_dsn``, opened and migrated, closed after.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from sharding.pgserver import EmbeddedPostgres
    from sharding.store import Store


@pytest.fixture(scope="session")
def pg_embedded() -> Iterator[EmbeddedPostgres | None]:
    """The embedded server (None when BILLING_TEST_DSN points at an external one)."""
    if os.environ.get("BILLING_TEST_DSN"):
        yield None
        return
    from sharding.pgserver import EmbeddedPostgres

    base = Path(tempfile.mkdtemp(prefix="billing-test-pg-"))
    base.chmod(0o755)  # the server runs as an unprivileged user when we are root
    server = EmbeddedPostgres(base / "data")
    try:
        server.start()
        yield server
    finally:
        server.stop()
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="session")
def pg_server(pg_embedded: EmbeddedPostgres | None) -> str:
    """Admin DSN (database ``postgres``) of the test server."""
    from psycopg.conninfo import conninfo_to_dict, make_conninfo

    if pg_embedded is not None:
        dsn = str(pg_embedded.status()["dsn"])
    else:
        dsn = os.environ["BILLING_TEST_DSN"]
    params = conninfo_to_dict(dsn)
    params["dbname"] = "postgres"
    return make_conninfo(**params)


@pytest.fixture
def pg_dsn(pg_server: str) -> Iterator[str]:
    """DSN of a fresh, empty database of its own, dropped after the test."""
    import psycopg
    from psycopg.conninfo import conninfo_to_dict, make_conninfo

    name = f"t_{uuid.uuid4().hex[:16]}"
    with psycopg.connect(pg_server, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"'.encode())
    params = conninfo_to_dict(pg_server)
    params["dbname"] = name
    try:
        yield make_conninfo(**params)
    finally:
        with psycopg.connect(pg_server, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'.encode())


@pytest.fixture
def aio() -> Iterator[asyncio.Runner]:
    """One event loop for the test: run coroutines with ``aio.run(...)``."""
    with asyncio.Runner() as runner:
        yield runner


@pytest.fixture
def store(pg_dsn: str, aio: asyncio.Runner) -> Iterator[Store]:
    """An open, migrated ``Store`` on a fresh database (use it through ``aio.run``)."""
    from sharding.store import Store

    s = Store(pg_dsn, min_size=1, max_size=4)
    aio.run(s.open())
    aio.run(s.migrate())
    try:
        yield s
    finally:
        aio.run(s.close())
