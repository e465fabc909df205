"""What several benchmarks share: a scratch database, a one-SMS direct debit, percentiles."""

from __future__ import annotations

import contextlib
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from actors.messages import ChargeRequest
from billing.protocol import (
    CreditControlRequest,
    RequestedAction,
    RequestType,
    ServiceUsage,
    Units,
    UsedUnits,
)
from cluster.loadgen import subscriber_id


@contextlib.contextmanager
def scratch_database(admin: str | None, prefix: str) -> Iterator[str]:
    """The DSN of a new database named ``<prefix>_<random>`` on the server at ``admin``, or on
    an embedded server started here when ``admin`` is None; dropped (and the embedded server
    stopped, its files removed) afterwards."""
    from sharding.pgserver import EmbeddedPostgres

    base = Path(tempfile.mkdtemp(prefix=f"{prefix.replace('_', '-')}-"))
    base.chmod(0o755)
    server = None
    try:
        if not admin:
            server = EmbeddedPostgres(base / "pg")
            admin = server.start()
        name = f"{prefix}_{uuid.uuid4().hex[:8]}"
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"'.encode())
        try:
            params = conninfo_to_dict(admin)
            params["dbname"] = name
            yield make_conninfo("", **params)
        finally:
            with psycopg.connect(admin, autocommit=True) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'.encode())
    finally:
        if server is not None:
            server.stop()
        shutil.rmtree(base, ignore_errors=True)


def sms_event(index: int, prefix: str) -> ChargeRequest:
    """A one-SMS direct debit (an EVENT) of subscriber ``index``, in a session of its own."""
    return ChargeRequest(
        CreditControlRequest(
            session_id=f"{prefix}-{uuid.uuid4().hex}",
            request_type=RequestType.EVENT,
            request_number=0,
            subscriber_id=subscriber_id(index),
            event_time=datetime.now(UTC),
            services=(ServiceUsage(rating_group=200, used=(UsedUnits(Units(service_units=1)),)),),
            requested_action=RequestedAction.DIRECT_DEBITING,
        )
    )


def percentiles(seconds: list[float]) -> tuple[float, float, float]:
    """p50, p95, p99 of ``seconds`` (nearest rank)."""
    ordered = sorted(seconds)
    n = len(ordered)
    p50, p95, p99 = (ordered[min(n - 1, int(n * q))] for q in (0.5, 0.95, 0.99))
    return p50, p95, p99
