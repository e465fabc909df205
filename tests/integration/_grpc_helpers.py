"""Helpers for the gRPC integration tests (not a test module): front doors in threads, databases.

A front door serves from its own event-loop thread so tests can use the synchronous gRPC client.
"""

from __future__ import annotations

import asyncio
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

from cluster.frontdoor import FrontDoor
from cluster.pb import billing_pb2 as pb

RG_VOICE, RG_SMS, RG_DATA = 100, 200, 10


class DoorThread:
    """A front door on its own event loop thread."""

    def __init__(self, **options: Any) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.door: FrontDoor | None = None
        self.options = options

    def start(self) -> str:
        from cluster.bootstrap import start_frontdoor

        self.thread.start()
        future = asyncio.run_coroutine_threadsafe(start_frontdoor(**self.options), self.loop)
        self.door = future.result(60)
        return self.door.address

    def stop(self) -> None:
        if self.door is not None:
            asyncio.run_coroutine_threadsafe(self.door.stop(0), self.loop).result(30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


@contextmanager
def database(pg_server: str) -> Iterator[str]:
    """A fresh database of its own on the test server (DSN), dropped afterwards."""
    import psycopg
    from psycopg.conninfo import conninfo_to_dict, make_conninfo

    name = f"t_grpc_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(pg_server, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"'.encode())
    params = conninfo_to_dict(pg_server)
    params["dbname"] = name
    try:
        yield make_conninfo(**params)
    finally:
        with psycopg.connect(pg_server, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'.encode())


def audit(dsn: str) -> list[str]:
    """Store.audit: the journal reproduces every balance and bucket ([] = conserved)."""
    from sharding.store import Store

    async def run() -> list[str]:
        async with Store(dsn, min_size=1, max_size=1) as store:
            return await store.audit()

    return asyncio.run(run())


def cc(
    session: str,
    sid: str,
    kind: int,
    number: int,
    *,
    rg: int = RG_VOICE,
    request_s: int | None = 60,
    used_s: int | None = None,
    action: int = 0,
    at: datetime | None = None,
    destination: str = "4930123456",
    retransmission: bool = False,
) -> pb.CreditControlRequest:
    """A credit-control request with one service entry (units by the rating group's kind)."""
    msg = pb.CreditControlRequest(
        session_id=session,
        request_type=kind,  # type: ignore[arg-type]
        request_number=number,
        subscriber_id=sid,
        requested_action=action,  # type: ignore[arg-type]
        destination=destination,
        retransmission=retransmission,
    )
    msg.event_time.FromDatetime(at or datetime.now(UTC))
    entry = msg.services.add(rating_group=rg)
    if request_s is not None:
        if rg == RG_VOICE:
            entry.requested.time_s = request_s
        elif rg == RG_SMS:
            entry.requested.service_units = request_s
        else:
            entry.requested.total_octets = request_s
    if used_s is not None:
        used = entry.used.add()
        if rg == RG_VOICE:
            used.units.time_s = used_s
        else:
            used.units.total_octets = used_s
    return msg
