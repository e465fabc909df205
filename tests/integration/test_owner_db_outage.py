"""No answer before commit: with PostgreSQL unreachable a request fails Unavailable and nothing
is acknowledged; when PostgreSQL is back the owner reloads by itself and the same request
succeeds once.

The outage is made by refusing connections to the test's database and terminating its sessions
(the shared test server keeps running for the other tests; a stopped embedded server may come
back on another port, see the report)."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict

from actors.messages import Unavailable
from billing.protocol import RequestType, ResultCode

from ._owner_helpers import answered, provision, running_cluster, submit, voice

pytestmark = pytest.mark.integration

SUB = "4917000100"


def _journal_rows(dsn: str, key: str) -> int:
    with psycopg.connect(dsn) as conn:
        row = conn.execute(
            "SELECT count(*) FROM journal WHERE idempotency_key = %s", (key,)
        ).fetchone()
    assert row is not None
    return int(row[0])


def _set_reachable(admin_dsn: str, dsn: str, reachable: bool) -> None:
    name = conninfo_to_dict(dsn)["dbname"]
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        conn.execute(
            sql.SQL("ALTER DATABASE {} ALLOW_CONNECTIONS {}").format(
                sql.Identifier(str(name)), sql.SQL("true" if reachable else "false")
            )
        )
        if not reachable:
            conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s",
                (name,),
            )


def test_db_down_means_unavailable_then_resumes(
    ray_cluster: Any, pg_dsn: str, pg_server: str
) -> None:
    with running_cluster(pg_dsn) as handles:
        answered(provision(handles, SUB, balance=5_000_000))
        start = answered(submit(handles, [voice("db-1", SUB, 0, RequestType.INITIAL)])[0])
        assert start.result_code == ResultCode.SUCCESS
        owner = handles.owner(handles.get_map().owner_of_key(SUB))
        update = voice("db-1", SUB, 1, RequestType.UPDATE, used_s=60)
        _set_reachable(pg_server, pg_dsn, False)
        try:
            [reply] = ray_cluster.get(owner.submit.remote([update]), timeout=120)
            assert isinstance(reply, Unavailable), reply
            [still] = ray_cluster.get(owner.submit.remote([update]), timeout=120)
            assert isinstance(still, Unavailable), still
        finally:
            _set_reachable(pg_server, pg_dsn, True)
        assert _journal_rows(pg_dsn, update.request.idempotency_key) == 0
        done = answered(submit(handles, [update])[0])
        assert done.result_code == ResultCode.SUCCESS
        assert done.cost_micros > 0
        lines = _journal_rows(pg_dsn, update.request.idempotency_key)
        assert lines >= 1
        again = answered(submit(handles, [update])[0])
        assert again == done
        assert _journal_rows(pg_dsn, update.request.idempotency_key) == lines
        statuses = handles.statuses()
        assert sum(s.loads for s in statuses) > len(statuses)  # the owner reloaded after the outage
