"""Credit-control sessions: INITIAL / UPDATE / TERMINATION, orphans, and the answer store.

A session lives on its account's vshard and holds one :class:`~billing.state.Reservation` per
rating group. Each report of used units for a rating group closes that rating group's current
grant: the hold is released, the usage is charged (at the rates in force when the grant's window
began, and after a tariff switch at the new rate), and a new grant is reserved if one was asked
for. So each request's effect depends only on its own content plus the balance, which is what lets
pipelined or out-of-order updates each be answered and charged exactly once (the idempotency key
``session id + request number`` guards the "once").

Answers are kept in ``state.answers`` (and ``state.pending.answers`` for persistence) so a repeated
request gets the identical answer; :func:`prune_answers` drops those of ended sessions past a
retention horizon to bound memory.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from billing.accounts import Poster
from billing.protocol import (
    CreditControlAnswer,
    CreditControlRequest,
    FinalUnitAction,
    FinalUnitIndication,
    ReportingReason,
    RequestType,
    ResultCode,
    ServiceGrant,
    ServiceUsage,
    TariffChangeUsage,
    Units,
)
from billing.quota import Funds, charge, release, reserve, tariff_switch
from billing.rating import RatingError
from billing.state import Account, Session, ShardState
from billing.tariff import ServiceTerms

# (unit kind, amount) -> Units: granted amounts repeat (the default or asked quota), and a Units is
# an immutable value, so equal grants share one instance (less to build, less for the cyclic GC).
_GRANTED_UNITS: dict[tuple[str, int], Units] = {}
_UNIT_MAKERS = {
    "time_s": lambda n: Units(time_s=n),
    "total_octets": lambda n: Units(total_octets=n),
    "input_octets": lambda n: Units(input_octets=n),
    "output_octets": lambda n: Units(output_octets=n),
    "service_units": lambda n: Units(service_units=n),
    "money_micros": lambda n: Units(money_micros=n),
}
_TERMINATION = RequestType.TERMINATION
_AFTER = TariffChangeUsage.AFTER
# Enum members bound once: a member looked up on its class costs ~60 ns in Python 3.11.
_SUCCESS = ResultCode.SUCCESS
_NOT_APPLICABLE = ResultCode.CREDIT_CONTROL_NOT_APPLICABLE
_REDIRECT = FinalUnitAction.REDIRECT
_ = ReportingReason  # reporting reasons are informational: every report is charged alike


def units_of(units: Units, unit: str) -> int:
    """The amount of ``units`` in the service's unit kind (octets: total, else input + output)."""
    value: int = getattr(units, unit)
    if not value and unit == "total_octets":
        return units.input_octets + units.output_octets
    return value


def make_units(unit: str, amount: int) -> Units:
    """``Units`` with ``amount`` in the ``unit`` field (a shared immutable value)."""
    known = _GRANTED_UNITS.get((unit, amount))
    if known is None:
        known = _UNIT_MAKERS[unit](amount)
        if len(_GRANTED_UNITS) > 4096:
            _GRANTED_UNITS.clear()
        _GRANTED_UNITS[(unit, amount)] = known
    return known


def reservation_key(entry: ServiceUsage, terms: ServiceTerms) -> int:
    """The rating group a service entry's reservation is kept under."""
    if entry.rating_group is not None:
        return entry.rating_group
    if terms.rating_groups:
        return terms.rating_groups[0]
    return -1 - (entry.service_identifier or 0)


def store_answer(
    state: ShardState, key: str, vshard: int, answer: CreditControlAnswer, now: datetime
) -> None:
    """Keep an answer for idempotency, and hand it to persistence with the step."""
    state.answers[key] = answer
    state.pending.answers[key] = (vshard, answer)
    state.answer_log.append((now, key))


def session_entry(
    funds: Funds,
    poster: Poster,
    session: Session,
    entry: ServiceUsage,
    request_type: RequestType,
    now: datetime,
) -> ServiceGrant:
    """Charge one service entry's reported usage and grant it new quota if it asks.

    Result codes: 5031 unknown rating group or unratable usage; 4011 free service (nothing
    charged); 4010 denied service (reported usage still charged, nothing granted); 4012 nothing
    can be granted (reported usage still charged); else 2001 with the grant, its validity time,
    quota threshold, tariff switch time and, when it is less than a normal grant, the plan's
    final unit indication.
    """
    rg, sid = entry.rating_group, entry.service_identifier
    try:
        terms = funds.version.service_terms(rg, sid)
    except RatingError as err:
        return ServiceGrant(rg, sid, ResultCode.RATING_FAILED, error_message=str(err))
    if terms.credit_control == "free":
        return ServiceGrant(rg, sid, ResultCode.CREDIT_CONTROL_NOT_APPLICABLE)
    key = rg if rg is not None else reservation_key(entry, terms)
    asks = entry.requested is not None and request_type is not _TERMINATION
    old = None
    if entry.used or asks:
        old = session.reservations.pop(key, None)
        if old is not None:
            release(funds.state, funds.account, old)
    cost = uncharged = 0
    if entry.used:
        begin = old.granted_at if old is not None and old.granted_at is not None else now
        switch = old.tariff_switch_at if old is not None else None
        parts: list[tuple[int, datetime]] = []
        unit = terms.unit
        for used in entry.used:
            amount = units_of(used.units, unit)
            if amount:
                after = used.tariff_change_usage is _AFTER and switch is not None
                start = switch if after and switch is not None else begin
                if parts and parts[-1][1] == start:  # reports of one stretch are rated as one
                    amount += parts.pop()[0]
                parts.append((amount, start))
        if parts:
            try:
                cost, uncharged = charge(funds, poster, terms, key, parts)
            except RatingError as err:
                return ServiceGrant(rg, sid, ResultCode.RATING_FAILED, error_message=str(err))
    if terms.credit_control == "denied":
        return ServiceGrant(
            rg,
            sid,
            ResultCode.END_USER_SERVICE_DENIED,
            cost_micros=cost,
            uncharged_micros=uncharged,
            error_message=f"service {terms.service} (rating group {rg}) is denied by the plan",
        )
    if not asks or entry.requested is None:
        return ServiceGrant(rg, sid, _SUCCESS, cost_micros=cost, uncharged_micros=uncharged)
    wanted = units_of(entry.requested, terms.unit) or terms.default_quota
    try:
        reservation, validity = reserve(funds, terms, key, wanted, now)
    except RatingError as err:
        return ServiceGrant(
            rg,
            sid,
            ResultCode.RATING_FAILED,
            cost_micros=cost,
            uncharged_micros=uncharged,
            error_message=str(err),
        )
    granted = reservation.granted_units
    if not granted:
        return ServiceGrant(
            rg,
            sid,
            ResultCode.CREDIT_LIMIT_REACHED,
            cost_micros=cost,
            uncharged_micros=uncharged,
            error_message=f"nothing of rating group {key} can be granted: funds exhausted",
        )
    session.reservations[key] = reservation
    switch_at = tariff_switch(funds.plan, terms.service, now, reservation.expires_at)
    reservation.tariff_switch_at = switch_at
    final = None
    if granted < wanted:
        action = terms.final_unit_action
        final = FinalUnitIndication(action, terms.redirect_address if action is _REDIRECT else None)
    pct = terms.quota_threshold_percent
    return ServiceGrant(  # positional, in field order: the common answer
        rg,
        sid,
        _SUCCESS,
        make_units(terms.unit, granted),
        validity,
        final,
        switch_at,
        granted * pct // 100 if pct else None,
        cost,
        "",
        uncharged,
    )


def command_result(grants: Sequence[ServiceGrant]) -> tuple[ResultCode, str]:
    """The command-level result: success if any entry succeeded; 4011 if all are free; else the
    first failure (a non-success command result overrides the entries)."""
    if not grants:
        return ResultCode.SUCCESS, ""
    failure = None
    for grant in grants:
        code = grant.result_code
        if code is _SUCCESS:
            return _SUCCESS, ""
        if failure is None and code is not _NOT_APPLICABLE:
            failure = grant
    if failure is None:
        return ResultCode.CREDIT_CONTROL_NOT_APPLICABLE, ""
    return failure.result_code, failure.error_message


def run_session_request(
    funds: Funds, session: Session, request: CreditControlRequest, now: datetime
) -> CreditControlAnswer:
    """Apply one INITIAL/UPDATE/TERMINATION to ``session``: every entry, then the answer."""
    poster = Poster(funds.state, funds.key, now, request.session_id, request.request_number)
    services = request.services
    grants: tuple[ServiceGrant, ...]
    if len(services) == 1:  # the common case: no comprehension, the entry's result is the command's
        grant = session_entry(funds, poster, session, services[0], request.request_type, now)
        grants = (grant,)
        code = grant.result_code
        if code is _SUCCESS:
            message = ""
        else:
            code, message = command_result(grants)
    else:
        grants = tuple(
            [
                session_entry(funds, poster, session, entry, request.request_type, now)
                for entry in services
            ]
        )
        code, message = command_result(grants)
    account = funds.account
    return CreditControlAnswer(  # positional, in field order: one per request
        request.session_id,
        request.request_number,
        code,
        grants,
        grants[0].cost_micros if len(grants) == 1 else sum(g.cost_micros for g in grants),
        None,
        message,
        None if funds.rated_only else account.balance_micros - account.reserved_micros,
    )


def open_session(
    funds: Funds, request: CreditControlRequest, subscriber_id: str, now: datetime
) -> CreditControlAnswer:
    """INITIAL: create the session, grant its entries; keep it only if the answer is a success."""
    state = funds.state
    account = funds.account
    session = Session(
        session_id=request.session_id,
        vshard=account.vshard,
        subscriber_id=subscriber_id,
        account_id=account.account_id,
        plan_id=funds.plan.plan_id,
        destination=request.destination,
        visited_plmn=request.visited_plmn,
        started_at=now,
        last_seen_at=now,
        expires_at=now + funds.profile.orphan_span,
        next_request_number=1,
    )
    answer = run_session_request(funds, session, request, now)
    if answer.result_code is _SUCCESS:
        state.sessions[session.session_id] = session
        state.pending.sessions[session.session_id] = session
    else:
        end_session(state, account, session)
    store_answer(state, funds.key, account.vshard, answer, now)
    return answer


def continue_session(
    funds: Funds, session: Session, request: CreditControlRequest, now: datetime
) -> CreditControlAnswer:
    """UPDATE / TERMINATION of an open session; TERMINATION also releases the rest and ends it."""
    state = funds.state
    answer = run_session_request(funds, session, request, now)
    if request.request_type is _TERMINATION:
        end_session(state, funds.account, session)
    else:
        session.last_seen_at = now
        session.expires_at = now + funds.profile.orphan_span
        if request.request_number >= session.next_request_number:
            session.next_request_number = request.request_number + 1
        state.pending.sessions[session.session_id] = session
    store_answer(state, funds.key, session.vshard, answer, now)
    return answer


def end_session(state: ShardState, account: Account | None, session: Session) -> None:
    """Release everything the session holds and forget it (nothing is charged here)."""
    if account is not None:
        for reservation in session.reservations.values():
            release(state, account, reservation)
    session.reservations.clear()
    if state.sessions.pop(session.session_id, None) is not None:
        state.pending.ended_sessions[session.session_id] = session.vshard
    state.pending.sessions.pop(session.session_id, None)


def release_orphans(state: ShardState, *, now: datetime) -> list[str]:
    """Release and remove sessions silent past their orphan deadline (``expires_at <= now``).

    Their reservations go back to the account; nothing is charged that was not reported.
    Returns the released session ids.
    """
    released = [s for s in state.sessions.values() if s.expires_at <= now]
    for session in released:
        end_session(state, state.accounts.get(session.account_id), session)
    return [s.session_id for s in released]


def prune_answers(
    state: ShardState, older_than: datetime, *, keep_at_most: int | None = None
) -> int:
    """Forget stored answers (and balance command results) given before ``older_than``, and the
    oldest beyond ``keep_at_most`` (a bound on memory whatever the request rate), except those of
    sessions still open.

    Answers of open sessions are kept (their retransmissions must still be recognised). Returns
    how many were pruned. Forgetting an answer here never lets a request apply twice: the owner
    looks a flagged retransmission (or an out-of-order report) up in the database, and the
    journal's unique idempotency key refuses any other repeat at commit.
    """
    if keep_at_most is not None and keep_at_most < 0:
        raise ValueError(f"keep_at_most must be >= 0, got {keep_at_most}")
    log = state.answer_log
    kept: list[tuple[datetime, str]] = []
    pruned = 0
    limit = len(log) if keep_at_most is None else keep_at_most
    while log and (log[0][0] < older_than or len(log) + len(kept) > limit):
        entry = log.popleft()
        key = entry[1]
        session_id = key[3 : key.rindex("#")] if key.startswith("cc:") and "#" in key else None
        if session_id is not None and session_id in state.sessions:
            kept.append(entry)
            continue
        if state.answers.pop(key, None) is not None:
            pruned += 1
        if state.balance_results.pop(key, None) is not None:
            pruned += 1
    log.extend(kept)
    return pruned
