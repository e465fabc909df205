"""The owner's orphan sweep: a session that goes silent past its timeout has its reservation
released by the owner's timer (committed like any batch), and nothing is charged for it."""

from __future__ import annotations

import re
import time
from typing import Any

import pytest

from actors.messages import Answered, QueryRequest
from billing.protocol import RequestType, ResultCode
from billing.tariff import template_text

from ._owner_helpers import answered, provision, running_cluster, submit, voice

pytestmark = pytest.mark.integration

SUB = "4917000300"


def _quick_orphans_plan() -> str:
    text = template_text("payg").replace("plan_id: payg", "plan_id: payg-quick", 1)
    text = text.replace("orphan_timeout_factor: 2", "orphan_timeout_factor: 1")
    return re.sub(r"validity_time_s: \d+", "validity_time_s: 1", text)  # orphan: factor x longest


def test_silent_session_is_released_by_the_sweep(ray_cluster: Any, pg_dsn: str) -> None:
    with running_cluster(pg_dsn, sweep_interval_s=0.2) as handles:
        loaded = ray_cluster.get(handles.manager.load_plan.remote(_quick_orphans_plan()))
        assert isinstance(loaded, Answered), loaded
        answered(provision(handles, SUB, balance=5_000_000, plan="payg-quick"))
        start = answered(submit(handles, [voice("o-1", SUB, 0, RequestType.INITIAL)])[0])
        assert start.result_code == ResultCode.SUCCESS
        held = answered(submit(handles, [QueryRequest("balance", SUB)])[0])
        assert held.reserved_micros > 0
        deadline = time.monotonic() + 60
        while True:
            view = answered(submit(handles, [QueryRequest("balance", SUB)])[0])
            if view.reserved_micros == 0 or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert view.reserved_micros == 0
        assert view.balance_micros == 5_000_000  # nothing charged that was not reported
        late = answered(submit(handles, [voice("o-1", SUB, 1, RequestType.UPDATE, used_s=10)])[0])
        assert late.result_code == ResultCode.UNKNOWN_SESSION_ID
