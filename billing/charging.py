"""Online charging: the credit-control state machine, and the public API of the pure domain.

:func:`handle` answers one :class:`~billing.protocol.CreditControlRequest` against a
:class:`~billing.state.ShardState`, with the time passed in (the domain never reads a clock). One
call is one synchronous step: it mutates the state, records every touched object, journal line
and answer in ``state.pending``, and returns the answer, which the caller must not send before
that step is durable (DESIGN.md invariant 2).

Order of decisions: a repeated idempotency key (session id + request number) returns the stored
answer and moves nothing; then malformed input (5004/5005, field named); then UPDATE/TERMINATION
of an unknown, ended or expired session (5002); unknown subscriber (5030); unusable plan (5031);
then the session or event flow (:mod:`billing.sessions`, :mod:`billing.events`).
"""

from __future__ import annotations

from datetime import datetime

from billing.accounts import (
    BalanceView,
    BucketView,
    ChargingError,
    apply_balance,
    balance_view,
    expire_buckets,
    provision_subscriber,
)
from billing.events import handle_event
from billing.protocol import (
    CreditControlAnswer,
    CreditControlRequest,
    RequestType,
    ResultCode,
    ServiceUsage,
    Units,
)
from billing.quota import spending, version_profile
from billing.rating import RatingError
from billing.sessions import (
    continue_session,
    end_session,
    open_session,
    prune_answers,
    release_orphans,
)
from billing.state import Session, ShardState
from billing.tariff import Catalog, Plan, TariffError

__all__ = [
    "BalanceView",
    "BucketView",
    "ChargingError",
    "apply_balance",
    "balance_view",
    "expire_buckets",
    "handle",
    "provision_subscriber",
    "prune_answers",
    "release_orphans",
    "validate",
]

MAX_SERVICES = 64  # service entries per request
MAX_USED_PARTS = 8  # used-units reports per service entry
MAX_UNITS = 2**50 - 1  # any single unit amount (about 1.1e15)
_INITIAL = RequestType.INITIAL
_UPDATE = RequestType.UPDATE
_TERMINATION = RequestType.TERMINATION
_EVENT = RequestType.EVENT
_UNIT_FIELDS = (
    "time_s",
    "total_octets",
    "input_octets",
    "output_octets",
    "service_units",
    "money_micros",
)


def _units_problem(units: Units) -> str | None:
    """The first amount of ``units`` outside ``[0, MAX_UNITS]`` as ``"<field>: what is wrong"``.

    The caller prefixes the path of the units in the request; the path is only formatted for a
    malformed request, never on the common, valid one.
    """
    # Bitwise OR of the amounts is negative iff one is, and (MAX_UNITS being 2**50 - 1) above
    # MAX_UNITS iff one is: one comparison for the common, valid case.
    combined = (
        units.time_s
        | units.total_octets
        | units.input_octets
        | units.output_octets
        | units.service_units
        | units.money_micros
    )
    if 0 <= combined <= MAX_UNITS:
        return None
    for name in _UNIT_FIELDS:
        value = getattr(units, name)
        if not 0 <= value <= MAX_UNITS:
            return f"{name}: must be in [0, {MAX_UNITS}], got {value}"
    return None  # pragma: no cover - the combined check above is exact


def validate(request: CreditControlRequest) -> tuple[ResultCode, str] | None:
    """The first thing malformed in ``request`` as (5004 or 5005, message naming the field)."""
    if not request.session_id:
        return ResultCode.MISSING_AVP, "session_id is missing"
    if not request.subscriber_id:
        return ResultCode.MISSING_AVP, "subscriber_id is missing"
    if request.event_time.tzinfo is None:
        return ResultCode.INVALID_AVP_VALUE, "event_time must be timezone-aware"
    number = request.request_number
    kind = request.request_type
    if number < 0:
        return ResultCode.INVALID_AVP_VALUE, f"request_number must be >= 0, got {number}"
    if kind is _INITIAL:
        if number != 0:
            return (
                ResultCode.INVALID_AVP_VALUE,
                f"request_number must be 0 for INITIAL, got {number}",
            )
    elif (kind is _UPDATE or kind is _TERMINATION) and number == 0:
        return (
            ResultCode.INVALID_AVP_VALUE,
            f"request_number must be >= 1 for {kind.name}, got 0",
        )
    if kind is _EVENT:
        if request.requested_action is None:
            return ResultCode.MISSING_AVP, "requested_action is missing (required for EVENT)"
    elif request.requested_action is not None:
        return (
            ResultCode.INVALID_AVP_VALUE,
            f"requested_action applies to EVENT only, not {kind.name}",
        )
    services = request.services
    count = len(services)
    if count == 1:  # the common case: nothing to compare identities with
        return _check_entry(services[0], 0)
    if count > MAX_SERVICES:
        return (
            ResultCode.INVALID_AVP_VALUE,
            f"services: at most {MAX_SERVICES} entries, got {count}",
        )
    seen: set[tuple[int | None, int | None]] = set()
    for index, entry in enumerate(services):
        ident = (entry.rating_group, entry.service_identifier)
        if ident != (None, None):
            if ident in seen:
                return (
                    ResultCode.INVALID_AVP_VALUE,
                    f"services[{index}]: rating group {ident[0]} appears twice",
                )
            seen.add(ident)
        problem = _check_entry(entry, index)
        if problem is not None:
            return problem
    return None


def _check_entry(entry: ServiceUsage, index: int) -> tuple[ResultCode, str] | None:
    """What is malformed in the service entry at ``index`` (identity, amounts, report count)."""
    if entry.rating_group is None and entry.service_identifier is None:
        return (
            ResultCode.MISSING_AVP,
            f"services[{index}]: rating_group or service_identifier is missing",
        )
    requested = entry.requested
    if requested is not None:
        problem = _units_problem(requested)
        if problem is not None:
            return ResultCode.INVALID_AVP_VALUE, f"services[{index}].requested.{problem}"
    used = entry.used
    if used:
        if len(used) > MAX_USED_PARTS:
            return (
                ResultCode.INVALID_AVP_VALUE,
                f"services[{index}].used: at most {MAX_USED_PARTS} reports",
            )
        for part, report in enumerate(used):
            problem = _units_problem(report.units)
            if problem is not None:
                return (
                    ResultCode.INVALID_AVP_VALUE,
                    f"services[{index}].used[{part}].units.{problem}",
                )
    return None


def _failure(request: CreditControlRequest, code: ResultCode, message: str) -> CreditControlAnswer:
    return CreditControlAnswer(
        session_id=request.session_id,
        request_number=request.request_number,
        result_code=code,
        error_message=message,
    )


def handle(
    state: ShardState, request: CreditControlRequest, *, now: datetime, catalog: Catalog
) -> CreditControlAnswer:
    """Answer one credit-control request; see the module docstring for the order of decisions.

    Failures before the request reaches an account (5002, 5004, 5005, 5030, 5031 for the plan,
    5012) change nothing and are not stored; every other answer is stored for idempotency.
    """
    key = request.idempotency_key
    stored = state.answers.get(key)
    if stored is not None:
        return stored
    problem = validate(request)
    if problem is not None:
        return _failure(request, *problem)
    kind = request.request_type
    session: Session | None = None
    if kind is _UPDATE or kind is _TERMINATION:
        session = state.sessions.get(request.session_id)
        if session is None:
            return _failure(
                request,
                ResultCode.UNKNOWN_SESSION_ID,
                f"session {request.session_id!r} is unknown, ended or expired",
            )
        account = state.accounts.get(session.account_id)
        if session.expires_at <= now or account is None:
            end_session(state, account, session)
            return _failure(
                request,
                ResultCode.UNKNOWN_SESSION_ID,
                f"session {request.session_id!r} expired (silent since {session.last_seen_at})",
            )
        if request.subscriber_id != session.subscriber_id:
            return _failure(
                request,
                ResultCode.INVALID_AVP_VALUE,
                f"subscriber_id {request.subscriber_id!r} does not match session "
                f"{request.session_id!r}",
            )
        plan_id = session.plan_id
    else:
        subscriber = state.subscribers.get(request.subscriber_id)
        if subscriber is None:
            return _failure(
                request, ResultCode.USER_UNKNOWN, f"subscriber {request.subscriber_id!r} is unknown"
            )
        account = state.accounts.get(subscriber.account_id)
        if account is None:
            return _failure(
                request,
                ResultCode.UNABLE_TO_COMPLY,
                f"account {subscriber.account_id!r} (vshard {subscriber.account_vshard}) "
                "is not held by this owner",
            )
        if kind is _INITIAL and request.session_id in state.sessions:
            return _failure(
                request,
                ResultCode.INVALID_AVP_VALUE,
                f"session {request.session_id!r} is already open",
            )
        plan_id = subscriber.plan_id
    try:
        plan: Plan = catalog.get(plan_id)
        version = plan.version_at(now)
    except (TariffError, RatingError, KeyError) as err:
        return _failure(request, ResultCode.RATING_FAILED, f"plan {plan_id!r}: {err}")
    profile = version_profile(version)
    refused = profile.order_problem
    if refused is not None:
        return _failure(request, ResultCode.RATING_FAILED, f"plan {plan_id!r}: {refused}")
    destination, visited_plmn = request.destination, request.visited_plmn
    if session is not None:
        # The called party is fixed when the session starts; the visited network may change.
        destination = session.destination if session.destination is not None else destination
        visited_plmn = visited_plmn if visited_plmn is not None else session.visited_plmn
    funds = spending(state, key, account, plan, profile, destination, visited_plmn)
    if kind is _INITIAL:
        return open_session(funds, request, request.subscriber_id, now)
    if kind is _EVENT:
        return handle_event(funds, request, now)
    assert session is not None, "UPDATE/TERMINATION found its session above"
    return continue_session(funds, session, request, now)
