"""Stored answers are pruned by their owner past the database retention: the answers table stays
bounded, while the journal (and so the exactly-once guarantee for money) keeps every key."""

from __future__ import annotations

import time
from typing import Any

import psycopg
import pytest

from billing.protocol import RequestType, ResultCode

from ._owner_helpers import answered, provision, running_cluster, submit, voice

pytestmark = pytest.mark.integration

SUB = "4917000400"


def _count(dsn: str, sql: str) -> int:
    with psycopg.connect(dsn) as conn:
        row = conn.execute(sql).fetchone()
    assert row is not None
    return int(row[0])


def test_owner_prunes_stored_answers_past_retention(ray_cluster: Any, pg_dsn: str) -> None:
    config = {
        "sweep_interval_s": 0.2,
        "answer_retention_s": 1.0,
        "answer_db_retention_s": 1.0,
        "answer_db_prune_interval_s": 0.5,
    }
    with running_cluster(pg_dsn, **config) as handles:
        answered(provision(handles, SUB, balance=5_000_000))
        start = answered(submit(handles, [voice("p-1", SUB, 0, RequestType.INITIAL)])[0])
        assert start.result_code == ResultCode.SUCCESS
        end = answered(
            submit(handles, [voice("p-1", SUB, 1, RequestType.TERMINATION, used_s=30)])[0]
        )
        assert end.result_code == ResultCode.SUCCESS
        key = "'cc:p-1#1'"
        assert _count(pg_dsn, f"SELECT count(*) FROM answers WHERE idempotency_key = {key}") == 1
        deadline = time.monotonic() + 30
        while _count(pg_dsn, f"SELECT count(*) FROM answers WHERE idempotency_key = {key}") and (
            time.monotonic() < deadline
        ):
            time.sleep(0.2)
        assert _count(pg_dsn, f"SELECT count(*) FROM answers WHERE idempotency_key = {key}") == 0
        # The money movement itself is never forgotten.
        assert _count(pg_dsn, f"SELECT count(*) FROM journal WHERE idempotency_key = {key}") >= 1
