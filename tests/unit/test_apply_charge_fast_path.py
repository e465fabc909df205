"""apply_one's fast path for a classified charging request (actors/_apply.py ``_apply_charge``)
answers and changes exactly what the general path does: the vshard held or not, the account
held or not, a known or unknown subscriber, a session's INITIAL / UPDATE / TERMINATION and an SMS
event, a refused request, and a domain failure (InternalError)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from actors._apply import InternalError, Step, apply_one
from actors.messages import ChargeRequest
from billing.accounts import provision_subscriber
from billing.protocol import (
    CreditControlRequest,
    RequestedAction,
    RequestType,
    ServiceUsage,
    Units,
    UsedUnits,
)
from billing.state import ShardState
from billing.tariff import builtin_catalog
from sharding.vshard import vshard_of

VSHARDS = 64
AT = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
HOME, MEMBER, ABSENT = "491700000001", "491700000002", "491799999999"


def _state() -> tuple[ShardState, dict[int, int]]:
    state = ShardState()
    plan = builtin_catalog().get("payg")
    for sid in (HOME, MEMBER):
        provision_subscriber(
            state,
            subscriber_id=sid,
            vshard=vshard_of(sid, VSHARDS),
            plan=plan,
            payment_mode=None,
            initial_balance_micros=50_000_000,
            credit_limit_micros=0,
            currency=None,
            now=AT,
        )
    state.take_changes()
    # MEMBER's account is said to live on a vshard this owner does not hold.
    state.subscribers[MEMBER].account_vshard = (vshard_of(MEMBER, VSHARDS) + 1) % VSHARDS
    held = {vshard_of(s, VSHARDS): 1 for s in (HOME, MEMBER, ABSENT)}
    return state, held


def _step(state: ShardState, epochs: dict[int, int], at: datetime) -> Step:
    return Step(state, builtin_catalog(), epochs, VSHARDS, 7, at, set())


def _voice(sid: str, n: int, kind: RequestType, used: int = 0) -> ChargeRequest:
    return ChargeRequest(
        CreditControlRequest(
            session_id=f"v-{sid}",
            request_type=kind,
            request_number=n,
            subscriber_id=sid,
            event_time=AT,
            services=(
                ServiceUsage(
                    rating_group=100,
                    requested=None if kind is RequestType.TERMINATION else Units(time_s=60),
                    used=(UsedUnits(Units(time_s=used)),) if used else (),
                ),
            ),
        )
    )


def _sms(sid: str, key: str) -> ChargeRequest:
    return ChargeRequest(
        CreditControlRequest(
            session_id=f"sms-{key}",
            request_type=RequestType.EVENT,
            request_number=0,
            subscriber_id=sid,
            event_time=AT,
            services=(ServiceUsage(rating_group=200, used=(UsedUnits(Units(service_units=1)),)),),
            requested_action=RequestedAction.DIRECT_DEBITING,
        )
    )


REQUESTS = [
    _voice(HOME, 0, RequestType.INITIAL),
    _sms(HOME, "1"),
    _voice(HOME, 1, RequestType.UPDATE, used=30),
    _voice(HOME, 1, RequestType.UPDATE, used=30),  # a repeat: the stored answer
    _voice(HOME, 0, RequestType.UPDATE),  # malformed: refused
    _voice(HOME, 2, RequestType.TERMINATION, used=10),
    _sms(MEMBER, "2"),  # the account is not held here
    _sms(ABSENT, "3"),  # unknown subscriber
]


def _run(fast: bool, epochs_of: Any) -> tuple[list[Any], Any, ShardState]:
    state, held = _state()
    replies = []
    for i, item in enumerate(REQUESTS):
        step = _step(state, epochs_of(held), AT + timedelta(seconds=i))
        vshard = vshard_of(item.routing_key, VSHARDS)
        replies.append(apply_one(step, item, vshard) if fast else apply_one(step, item))
    return replies, state.take_changes(), state


@pytest.mark.parametrize("epochs_of", [lambda held: held, lambda held: {}], ids=["held", "moved"])
def test_the_fast_path_answers_and_changes_what_the_general_path_does(epochs_of: Any) -> None:
    fast, fast_changes, fast_state = _run(True, epochs_of)
    slow, slow_changes, slow_state = _run(False, epochs_of)
    assert fast == slow
    assert fast_changes == slow_changes
    assert fast_state.answers == slow_state.answers
    assert fast_state.sessions == slow_state.sessions
    assert {k: fast_state.accounts[k] for k in (HOME, MEMBER)} == {
        k: slow_state.accounts[k] for k in (HOME, MEMBER)
    }
    kinds = {type(r).__name__ for r in fast}
    if epochs_of({1: 1}):
        assert kinds == {"Answered", "Unavailable"}  # every branch above was taken
    else:
        assert kinds == {"NotOwner"}


def test_a_domain_failure_on_the_fast_path_is_an_internal_error() -> None:
    state, held = _state()
    step = _step(state, held, AT)
    step.catalog = None  # type: ignore[assignment]  # the domain trips over it
    item = _sms(HOME, "x")
    with pytest.raises(InternalError):
        apply_one(step, item, vshard_of(HOME, VSHARDS))
