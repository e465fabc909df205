"""Event charging (stateless, one request): DIRECT_DEBITING, REFUND_ACCOUNT, CHECK_BALANCE,
PRICE_ENQUIRY.

Events are priced at their ``event_time``. A direct debit is all-or-nothing per service entry:
covered by usable bucket units and available money, or answered 4012 with nothing moved. A
refund credits an amount (``requested.money_micros``) or the price of the described service.
CHECK_BALANCE and PRICE_ENQUIRY never touch a balance. The answer is stored under the request's
idempotency key (session id + request number), so a repeat moves nothing.
"""

from __future__ import annotations

from datetime import datetime

from billing.accounts import AMOUNT_MAX_MICROS, Poster, available_micros
from billing.protocol import (
    CheckBalanceResult,
    CreditControlAnswer,
    CreditControlRequest,
    RequestedAction,
    ResultCode,
    ServiceGrant,
    ServiceUsage,
)
from billing.quota import Funds, apply_usage, matching_buckets, price_usage
from billing.rating import RatingError, UsageEvent, affordable_units, rate, reservation_price
from billing.sessions import command_result, make_units, reservation_key, store_answer, units_of
from billing.state import EntryKind
from billing.tariff import ServiceTerms


def _event_units(entry: ServiceUsage, terms: ServiceTerms) -> int:
    """Units an event entry describes: requested (or the default quota if empty), else used."""
    if entry.requested is not None:
        return units_of(entry.requested, terms.unit) or terms.default_quota
    return sum(units_of(u.units, terms.unit) for u in entry.used)


def handle_event(funds: Funds, request: CreditControlRequest, now: datetime) -> CreditControlAnswer:
    """Answer one EVENT request and store the answer; see the module docstring."""
    action = request.requested_action
    assert action is not None, "validated before"
    state = funds.state
    account = funds.account
    at = request.event_time
    poster = Poster(
        state,
        funds.key,
        now,
        session_id=request.session_id,
        request_number=request.request_number,
    )
    grants: list[ServiceGrant] = []
    budget = available_micros(account, funds.floor)
    enough = True
    for index, entry in enumerate(request.services):
        rg, sid = entry.rating_group, entry.service_identifier
        try:
            terms = funds.version.service_terms(rg, sid)
        except RatingError as err:
            grants.append(ServiceGrant(rg, sid, ResultCode.RATING_FAILED, error_message=str(err)))
            enough = False
            continue
        if terms.credit_control == "free":
            grants.append(ServiceGrant(rg, sid, ResultCode.CREDIT_CONTROL_NOT_APPLICABLE))
            continue
        if terms.credit_control == "denied":
            grants.append(
                ServiceGrant(
                    rg,
                    sid,
                    ResultCode.END_USER_SERVICE_DENIED,
                    error_message=f"service {terms.service} is denied by the plan",
                )
            )
            enough = False
            continue
        units = _event_units(entry, terms)
        key = reservation_key(entry, terms)
        if not units and not (
            action is RequestedAction.REFUND_ACCOUNT
            and entry.requested is not None
            and entry.requested.money_micros
        ):
            grants.append(
                ServiceGrant(
                    rg,
                    sid,
                    ResultCode.MISSING_AVP,
                    error_message=f"services[{index}]: requested or used units are missing",
                )
            )
            enough = False
            continue
        try:
            if action is RequestedAction.CHECK_BALANCE:
                covered, budget = _coverable(funds, terms, key, units, at, budget)
                enough = enough and covered
                grants.append(ServiceGrant(rg, sid, ResultCode.SUCCESS))
            elif action is RequestedAction.PRICE_ENQUIRY:
                usage = UsageEvent(
                    terms.service, units, at, key, funds.destination, funds.visited_plmn
                )
                cost = rate(usage, funds.plan, at=at).cost_micros
                grants.append(
                    ServiceGrant(
                        rg,
                        sid,
                        ResultCode.SUCCESS,
                        granted=make_units(terms.unit, units),
                        cost_micros=cost,
                    )
                )
            elif action is RequestedAction.REFUND_ACCOUNT:
                grants.append(_refund(funds, poster, entry, terms, key, units, at, index))
            else:
                grants.append(_direct_debit(funds, poster, entry, terms, key, units, at))
        except RatingError as err:
            grants.append(ServiceGrant(rg, sid, ResultCode.RATING_FAILED, error_message=str(err)))
            enough = False
    code, message = command_result(grants)
    check = None
    if action is RequestedAction.CHECK_BALANCE:
        if not request.services:
            enough = funds.rated_only or budget > 0
        check = CheckBalanceResult.ENOUGH_CREDIT if enough else CheckBalanceResult.NO_CREDIT
    answer = CreditControlAnswer(
        session_id=request.session_id,
        request_number=request.request_number,
        result_code=code,
        services=tuple(grants),
        cost_micros=sum(g.cost_micros for g in grants),
        check_balance_result=check,
        error_message=message,
        balance_after_micros=None
        if funds.rated_only
        else account.balance_micros - account.reserved_micros,
    )
    store_answer(state, funds.key, account.vshard, answer, now)
    return answer


def _coverable(
    funds: Funds, terms: ServiceTerms, key: int, units: int, at: datetime, budget: int
) -> tuple[bool, int]:
    """Whether ``units`` could be granted now (buckets, then money within ``budget``), and the
    budget left for the next entry. Reserves nothing."""
    if funds.rated_only:
        return True, budget
    left = units
    if funds.use_buckets:
        for bucket in matching_buckets(funds, terms.service, key, at):
            left -= min(left, bucket.units - bucket.reserved_units)
            if not left:
                return True, budget
    if not funds.use_money:
        return False, budget
    usage = UsageEvent(terms.service, left, at, key, funds.destination, funds.visited_plmn)
    if affordable_units(usage, funds.plan, budget, at=at) < left:
        return False, budget
    return True, budget - reservation_price(usage, funds.plan, at=at)


def _direct_debit(
    funds: Funds,
    poster: Poster,
    entry: ServiceUsage,
    terms: ServiceTerms,
    key: int,
    units: int,
    at: datetime,
) -> ServiceGrant:
    rg, sid = entry.rating_group, entry.service_identifier
    priced = price_usage(funds, terms, key, [(units, at)])
    if not funds.rated_only and priced.money_units:
        free = available_micros(funds.account, funds.floor)
        if not funds.use_money or priced.cost_micros > free:
            return ServiceGrant(
                rg,
                sid,
                ResultCode.CREDIT_LIMIT_REACHED,
                cost_micros=0,
                error_message=f"cost {priced.cost_micros} exceeds the {free} micros available",
            )
    charged, _ = apply_usage(funds, poster, terms, key, priced)
    return ServiceGrant(
        rg, sid, ResultCode.SUCCESS, granted=make_units(terms.unit, units), cost_micros=charged
    )


def _refund(
    funds: Funds,
    poster: Poster,
    entry: ServiceUsage,
    terms: ServiceTerms,
    key: int,
    units: int,
    at: datetime,
    index: int,
) -> ServiceGrant:
    rg, sid = entry.rating_group, entry.service_identifier
    amount = entry.requested.money_micros if entry.requested is not None else 0
    if not amount:
        usage = UsageEvent(terms.service, units, at, key, funds.destination, funds.visited_plmn)
        amount = rate(usage, funds.plan, at=at).cost_micros
    if amount > AMOUNT_MAX_MICROS:
        return ServiceGrant(
            rg,
            sid,
            ResultCode.INVALID_AVP_VALUE,
            error_message=f"services[{index}].requested.money_micros: refund above {AMOUNT_MAX_MICROS}",
        )
    if amount and not funds.rated_only:
        poster.money(funds.account, EntryKind.REFUND, amount, rating_group=key)
    return ServiceGrant(rg, sid, ResultCode.SUCCESS, granted=make_units("money_micros", amount))
