"""Session charging (INITIAL / UPDATE / TERMINATION) on the built-in templates: every result code
path, grants, final unit indications, overuse, tariff switches, idempotency, orphans."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from billing.charging import prune_answers, release_orphans
from billing.ledger import audit
from billing.protocol import (
    CreditControlRequest,
    FinalUnitAction,
    PaymentMode,
    RequestedAction,
    RequestType,
    ResultCode,
    ServiceUsage,
    Units,
    UsedUnits,
)
from billing.scenario import Scenario, entry
from billing.state import EntryKind
from billing.tariff import Catalog, builtin_catalog, load_plan, template_text

# Monday 2 March 2026, 10:00 UTC = 11:00 in Paris: peak for payg voice (0.10/min, 60/60).
PEAK = datetime(2026, 3, 2, 10, 0, tzinfo=UTC)
EUR = 1_000_000
NATIONAL = "33140000000"
SPAIN = "34910000000"


@pytest.fixture
def sc() -> Scenario:
    return Scenario(catalog=builtin_catalog(), now=PEAK)


def account(sc: Scenario, subscriber_id: str) -> tuple[int, int]:
    acc = sc.state.accounts[sc.state.subscribers[subscriber_id].account_id]
    return acc.balance_micros, acc.reserved_micros


def conserved(sc: Scenario) -> None:
    assert audit(sc.state, sc.journal) == []


# --- grants --------------------------------------------------------------------------------


def test_initial_grants_default_quota_and_reserves_its_worst_case_price(sc: Scenario) -> None:
    sc.subscriber("alice", "payg", balance=2 * EUR)
    answer = sc.initial("s1", "alice", entry(100, request=0))
    assert answer.result_code is ResultCode.SUCCESS
    (grant,) = answer.services
    assert grant.result_code is ResultCode.SUCCESS
    assert grant.granted == Units(time_s=300)  # payg voice default quota
    assert grant.validity_time_s == 600
    assert grant.quota_threshold == 60  # 20 % of the grant
    assert grant.final_unit is None
    assert account(sc, "alice") == (2 * EUR, 500_000)  # 5 min at 0.10, nothing charged yet
    assert answer.balance_after_micros == 1_500_000
    assert "s1" in sc.state.sessions
    conserved(sc)


def test_requested_amount_is_granted_when_covered(sc: Scenario) -> None:
    sc.subscriber("alice", "payg", balance=2 * EUR)
    answer = sc.initial("s1", "alice", entry(100, request=120))
    assert answer.services[0].granted == Units(time_s=120)
    assert account(sc, "alice") == (2 * EUR, 200_000)


def test_grant_capped_by_funds_carries_final_unit_terminate(sc: Scenario) -> None:
    sc.subscriber("alice", "payg", balance=300_000)
    grant = sc.initial("s1", "alice", entry(100, request=0)).services[0]
    assert grant.result_code is ResultCode.SUCCESS
    assert grant.granted == Units(time_s=180)  # 3 whole minutes are affordable
    assert grant.final_unit is not None
    assert grant.final_unit.action is FinalUnitAction.TERMINATE
    assert grant.final_unit.redirect_address is None
    assert account(sc, "alice") == (300_000, 300_000)


def test_data_final_unit_redirects_to_the_plans_address(sc: Scenario) -> None:
    sc.subscriber("alice", "payg", balance=50_000)  # 0.05 buys 5 MiB at 0.01 per MiB
    grant = sc.initial("s1", "alice", entry(10, request=0)).services[0]
    assert grant.granted == Units(total_octets=5 * 1048576)
    assert grant.final_unit is not None
    assert grant.final_unit.action is FinalUnitAction.REDIRECT
    assert grant.final_unit.redirect_address == "http://topup.example.net/"


def test_nothing_grantable_is_4012_and_opens_no_session(sc: Scenario) -> None:
    sc.subscriber("alice", "payg", balance=0)
    answer = sc.initial("s1", "alice", entry(100, request=0))
    assert answer.result_code is ResultCode.CREDIT_LIMIT_REACHED
    assert answer.services[0].result_code is ResultCode.CREDIT_LIMIT_REACHED
    assert "s1" not in sc.state.sessions
    assert sc.update("s1", 1, "alice", entry(100, used=10)).result_code is (
        ResultCode.UNKNOWN_SESSION_ID
    )


def test_4012_on_update_still_debits_reported_usage(sc: Scenario) -> None:
    sc.subscriber("alice", "payg", balance=500_000)
    sc.initial("s1", "alice", entry(100, request=0))
    sc.advance(300)
    answer = sc.update("s1", 1, "alice", entry(100, request=0, used=300))
    assert answer.result_code is ResultCode.CREDIT_LIMIT_REACHED
    assert answer.services[0].cost_micros == 500_000
    assert account(sc, "alice") == (0, 0)
    assert "s1" in sc.state.sessions  # the client terminates it
    conserved(sc)


def test_used_units_without_request_are_debited_and_grant_nothing(sc: Scenario) -> None:
    sc.subscriber("alice", "payg", balance=2 * EUR)
    sc.initial("s1", "alice", entry(100, request=0))
    sc.advance(100)
    grant = sc.update("s1", 1, "alice", entry(100, used=100)).services[0]
    assert grant.result_code is ResultCode.SUCCESS
    assert grant.granted is None
    assert grant.cost_micros == 200_000  # 2 started minutes
    assert account(sc, "alice") == (1_800_000, 0)  # the rest of the hold is released
    conserved(sc)


def test_several_services_in_one_request_are_granted_separately(sc: Scenario) -> None:
    sc.subscriber("alice", "payg", balance=2 * EUR)
    answer = sc.initial("s1", "alice", entry(100, request=60), entry(10, request=1048576))
    assert [g.rating_group for g in answer.services] == [100, 10]
    assert answer.services[0].granted == Units(time_s=60)
    assert answer.services[1].granted == Units(total_octets=1048576)
    assert account(sc, "alice") == (2 * EUR, 100_000 + 10_000)
    assert set(sc.state.sessions["s1"].reservations) == {100, 10}


def test_session_lives_on_its_accounts_vshard(sc: Scenario) -> None:
    sc.subscriber("alice", "payg", balance=EUR, vshard=7)
    sc.initial("s1", "alice", entry(100, request=0))
    assert sc.state.sessions["s1"].vshard == 7


# --- termination, idempotency, ordering ------------------------------------------------------


def test_termination_debits_final_usage_releases_rest_and_ends_session(sc: Scenario) -> None:
    sc.subscriber("alice", "payg", balance=2 * EUR)
    sc.initial("s1", "alice", entry(100, request=0))
    sc.advance(250)
    sc.update("s1", 1, "alice", entry(100, request=0, used=250))
    sc.advance(100)
    answer = sc.terminate("s1", 2, "alice", entry(100, used=100))
    assert answer.result_code is ResultCode.SUCCESS
    assert answer.cost_micros == 200_000
    assert account(sc, "alice") == (2 * EUR - 500_000 - 200_000, 0)
    assert "s1" not in sc.state.sessions
    later = sc.update("s1", 3, "alice", entry(100, used=10))
    assert later.result_code is ResultCode.UNKNOWN_SESSION_ID
    assert "s1" in later.error_message
    conserved(sc)


def test_termination_is_recorded_as_an_ended_session(sc: Scenario) -> None:
    sc.subscriber("alice", "payg", balance=2 * EUR)
    sc.initial("s1", "alice", entry(100, request=0))
    request = sc.request(RequestType.TERMINATION, "s1", 1, "alice", entry(100, used=10))
    from billing.charging import handle

    handle(sc.state, request, now=sc.now, catalog=sc.catalog)
    changes = sc.state.take_changes()
    assert changes.ended_sessions == {"s1": 0}
    assert "s1" not in changes.sessions
    assert set(changes.answers) == {"cc:s1#1"}
    assert [e.kind for e in changes.journal] == [EntryKind.DEBIT]
    assert "alice" in changes.accounts


@pytest.mark.parametrize("retransmission", [False, True])
def test_repeated_request_returns_stored_answer_and_moves_nothing(
    sc: Scenario, retransmission: bool
) -> None:
    sc.subscriber("alice", "payg", balance=2 * EUR)
    sc.initial("s1", "alice", entry(100, request=0))
    request = sc.request(RequestType.UPDATE, "s1", 1, "alice", entry(100, request=0, used=200))
    first = sc.send(request)
    before = (account(sc, "alice"), len(sc.journal))
    again = CreditControlRequest(
        **{**{f: getattr(request, f) for f in request.__slots__}, "retransmission": retransmission}
    )
    sc.advance(5)
    assert sc.send(again) is first
    assert (account(sc, "alice"), len(sc.journal)) == before
    assert sc.state.take_changes().is_empty()


def test_repeated_termination_after_the_session_ended_gets_the_original_answer(
    sc: Scenario,
) -> None:
    sc.subscriber("alice", "payg", balance=2 * EUR)
    sc.initial("s1", "alice", entry(100, request=0))
    first = sc.terminate("s1", 1, "alice", entry(100, used=30))
    assert sc.terminate("s1", 1, "alice", entry(100, used=30)) is first
    assert account(sc, "alice") == (2 * EUR - 100_000, 0)


def test_out_of_order_updates_are_each_answered_and_charged_once(sc: Scenario) -> None:
    sc.subscriber("alice", "payg", balance=5 * EUR)
    sc.initial("s1", "alice", entry(100, request=0))
    late = sc.update("s1", 2, "alice", entry(100, request=0, used=60))
    early = sc.update("s1", 1, "alice", entry(100, request=0, used=120))
    assert late.result_code is ResultCode.SUCCESS and early.result_code is ResultCode.SUCCESS
    assert late.cost_micros == 100_000 and early.cost_micros == 200_000
    assert sc.update("s1", 1, "alice", entry(100, request=0, used=120)) is early
    assert sc.update("s1", 2, "alice", entry(100, request=0, used=60)) is late
    balance, reserved = account(sc, "alice")
    assert balance == 5 * EUR - 300_000
    assert reserved == 500_000  # one live grant for the rating group
    assert sc.state.sessions["s1"].next_request_number == 3
    conserved(sc)


def test_pipelined_gap_is_accepted(sc: Scenario) -> None:
    sc.subscriber("alice", "payg", balance=5 * EUR)
    sc.initial("s1", "alice", entry(100, request=0))
    assert sc.update("s1", 5, "alice", entry(100, used=60)).result_code is ResultCode.SUCCESS
    assert sc.update("s1", 3, "alice", entry(100, used=60)).result_code is ResultCode.SUCCESS
    assert account(sc, "alice")[0] == 5 * EUR - 200_000


# --- overuse ----------------------------------------------------------------------------------


def test_prepaid_overuse_is_charged_up_to_the_balance_and_reported(sc: Scenario) -> None:
    sc.subscriber("alice", "payg", balance=EUR)
    sc.initial("s1", "alice", entry(100, request=0))
    sc.advance(900)
    grant = sc.terminate("s1", 1, "alice", entry(100, used=900)).services[0]
    assert grant.cost_micros == EUR  # 15 min would be 1.50
    assert grant.uncharged_micros == 500_000
    assert account(sc, "alice") == (0, 0)
    conserved(sc)


def test_prepaid_overuse_never_takes_other_sessions_holds(sc: Scenario) -> None:
    sc.subscriber("alice", "payg", balance=EUR)
    sc.initial("s1", "alice", entry(100, request=0))  # holds 0.50
    sc.initial("s2", "alice", entry(100, request=0))  # holds 0.50
    grant = sc.terminate("s1", 1, "alice", entry(100, used=1200)).services[0]
    assert grant.cost_micros == 500_000
    assert grant.uncharged_micros == 1_500_000
    assert account(sc, "alice") == (500_000, 500_000)
    grant = sc.terminate("s2", 1, "alice", entry(100, used=300)).services[0]
    assert grant.cost_micros == 500_000 and grant.uncharged_micros == 0
    assert account(sc, "alice") == (0, 0)
    conserved(sc)


def test_postpaid_overuse_is_charged_beyond_the_credit_limit(sc: Scenario) -> None:
    sc.subscriber("bob", "postpaid-monthly", credit_limit=EUR)
    grant = sc.initial("s1", "bob", entry(100, request=0), destination=SPAIN).services[0]
    assert grant.granted == Units(time_s=400)  # 1.00 at 0.15/min, per second
    assert grant.final_unit is not None
    grant = sc.terminate("s1", 1, "bob", entry(100, used=800)).services[0]
    assert grant.cost_micros == 2 * EUR and grant.uncharged_micros == 0
    assert account(sc, "bob") == (-2 * EUR, 0)
    again = sc.initial("s2", "bob", entry(100, request=0), destination=SPAIN)
    assert again.result_code is ResultCode.CREDIT_LIMIT_REACHED
    conserved(sc)


# --- tariff switch ----------------------------------------------------------------------------


def test_tariff_switch_in_grant_and_parts_priced_at_their_own_rates(sc: Scenario) -> None:
    sc.now = datetime(2026, 3, 2, 18, 55, tzinfo=UTC)  # 19:55 Paris: peak ends at 20:00
    sc.subscriber("alice", "payg", balance=5 * EUR)
    grant = sc.initial("s1", "alice", entry(100, request=0)).services[0]
    assert grant.tariff_time_change == datetime(2026, 3, 2, 19, 0, tzinfo=UTC)
    sc.advance(300)
    answer = sc.terminate("s1", 1, "alice", entry(100, used=120, after=180))
    # Before the switch 2 min at 0.10 (peak); after it 3 min at 0.05 (off-peak).
    assert answer.cost_micros == 200_000 + 150_000
    conserved(sc)


def test_usage_after_a_switch_not_reported_apart_is_priced_from_the_grant(sc: Scenario) -> None:
    sc.now = datetime(2026, 3, 2, 18, 59, tzinfo=UTC)
    sc.subscriber("alice", "payg", balance=5 * EUR)
    sc.initial("s1", "alice", entry(100, request=0))
    answer = sc.terminate("s1", 1, "alice", entry(100, used=120))
    assert answer.cost_micros == 100_000 + 50_000  # the rating splits the call at 20:00


def test_plan_version_switch_prices_sms_at_the_new_version(sc: Scenario) -> None:
    sc.now = datetime(2026, 6, 30, 21, 30, tzinfo=UTC)  # v2 (SMS 0.04) from 22:00 UTC
    sc.subscriber("alice", "payg", balance=5 * EUR)
    grant = sc.initial("s1", "alice", entry(200, request=10)).services[0]
    assert grant.tariff_time_change == datetime(2026, 6, 30, 22, 0, tzinfo=UTC)
    answer = sc.terminate("s1", 1, "alice", entry(200, used=2, after=3))
    assert answer.cost_micros == 2 * 50_000 + 3 * 40_000


def test_no_switch_no_tariff_time_change(sc: Scenario) -> None:
    sc.subscriber("alice", "payg", balance=5 * EUR)
    assert sc.initial("s1", "alice", entry(100, request=60)).services[0].tariff_time_change is None


# --- payment modes ----------------------------------------------------------------------------


def test_hybrid_uses_bundle_then_prepaid_money_then_credit(sc: Scenario) -> None:
    sc.subscriber("hana", "hybrid", balance=100_000, credit_limit=200_000)
    (bucket,) = [b for b in sc.state.buckets.values() if b.bundle_id == "minutes-100"]
    grant = sc.initial("s1", "hana", entry(100, request=6000)).services[0]
    assert grant.granted == Units(time_s=6000)
    assert bucket.reserved_units == 6000 and account(sc, "hana") == (100_000, 0)
    sc.terminate("s1", 1, "hana", entry(100, used=6000))
    assert bucket.units == 0
    # Now money: 0.30 available (0.10 prepaid + 0.20 credit) at 0.08/min peak in 30 s then 6 s
    # increments: 222 s cost 0.296, 228 s would cost 0.304.
    grant = sc.initial("s2", "hana", entry(100, request=0)).services[0]
    assert grant.granted == Units(time_s=222)
    assert grant.final_unit is not None
    sc.terminate("s2", 1, "hana", entry(100, used=222))
    assert account(sc, "hana") == (-196_000, 0)  # prepaid gone, then credit
    conserved(sc)


def test_rated_only_prices_and_touches_no_balance(sc: Scenario) -> None:
    sc.subscriber("rita", "payg", balance=0, payment_mode=PaymentMode.RATED_ONLY)
    grant = sc.initial("s1", "rita", entry(100, request=600)).services[0]
    assert grant.granted == Units(time_s=600)
    answer = sc.terminate("s1", 1, "rita", entry(100, used=600))
    assert answer.cost_micros == EUR
    assert answer.balance_after_micros is None
    assert account(sc, "rita") == (0, 0)
    assert [e.kind for e in sc.journal] == [EntryKind.OPENING]


def test_bundle_units_are_used_before_money_and_never_after_expiry(sc: Scenario) -> None:
    sc.subscriber("bob", "postpaid-monthly", credit_limit=10 * EUR)
    (bucket,) = [b for b in sc.state.buckets.values() if b.bundle_id == "minutes-500"]
    sc.initial("s1", "bob", entry(100, request=0))
    assert bucket.reserved_units == 600 and account(sc, "bob") == (0, 0)
    sc.terminate("s1", 1, "bob", entry(100, used=600))
    assert bucket.units == 30_000 - 600
    sc.advance(31 * 86_400)  # the bundle expired after 30 days
    grant = sc.initial("s2", "bob", entry(100, request=60)).services[0]
    assert grant.granted == Units(time_s=60)
    assert bucket.reserved_units == 0 and account(sc, "bob")[1] > 0
    sc.terminate("s2", 1, "bob", entry(100, used=60))
    assert bucket.units == 30_000 - 600 and account(sc, "bob")[0] < 0
    conserved(sc)


def test_grant_from_a_bucket_is_valid_no_longer_than_the_bucket(sc: Scenario) -> None:
    sc.subscriber("bob", "postpaid-monthly", credit_limit=10 * EUR)
    sc.advance(30 * 86_400 - 100)  # the bundles expire in 100 s
    grant = sc.initial("s1", "bob", entry(100, request=60)).services[0]
    assert grant.validity_time_s == 100


def test_shared_account_grants_never_exceed_what_it_covers(sc: Scenario) -> None:
    sc.subscriber("dev-1", "payg", balance=EUR, account_id="fleet")
    sc.subscriber("dev-2", "payg", account_id="fleet")
    sc.subscriber("dev-3", "payg", account_id="fleet")
    granted = 0
    for i, dev in enumerate(["dev-1", "dev-2", "dev-3"]):
        answer = sc.initial(f"s{i}", dev, entry(100, request=0))
        if answer.result_code is ResultCode.SUCCESS:
            granted += answer.services[0].granted.time_s  # type: ignore[union-attr]
    assert granted == 600  # 1.00 covers 10 minutes at 0.10, whoever asks
    assert account(sc, "dev-3") == (EUR, EUR)
    assert sc.initial("s9", "dev-3", entry(100, request=0)).result_code is (
        ResultCode.CREDIT_LIMIT_REACHED
    )
    conserved(sc)


# --- orphans ----------------------------------------------------------------------------------


def test_orphaned_session_is_released_after_factor_times_validity(sc: Scenario) -> None:
    sc.subscriber("alice", "payg", balance=2 * EUR)
    sc.initial("s1", "alice", entry(100, request=0))
    span = 2 * 3600  # payg: factor 2 x the longest validity time (SMS, 3600 s)
    sc.advance(span - 1)
    assert release_orphans(sc.state, now=sc.now) == []
    sc.advance(1)
    assert release_orphans(sc.state, now=sc.now) == ["s1"]
    sc.collect()
    assert account(sc, "alice") == (2 * EUR, 0)  # nothing charged that was not reported
    assert "s1" not in sc.state.sessions
    assert sc.update("s1", 1, "alice", entry(100, used=60)).result_code is (
        ResultCode.UNKNOWN_SESSION_ID
    )
    conserved(sc)


def test_update_keeps_a_session_alive(sc: Scenario) -> None:
    sc.subscriber("alice", "payg", balance=2 * EUR)
    sc.initial("s1", "alice", entry(100, request=0))
    sc.advance(7000)
    sc.update("s1", 1, "alice", entry(100, request=0, used=60))
    sc.advance(7000)
    assert release_orphans(sc.state, now=sc.now) == []


def test_update_of_an_expired_session_is_5002_and_releases_it(sc: Scenario) -> None:
    sc.subscriber("alice", "payg", balance=2 * EUR)
    sc.initial("s1", "alice", entry(100, request=0))
    sc.advance(2 * 3600)
    answer = sc.update("s1", 1, "alice", entry(100, used=60))
    assert answer.result_code is ResultCode.UNKNOWN_SESSION_ID
    assert account(sc, "alice") == (2 * EUR, 0)
    assert "s1" not in sc.state.sessions


def test_prune_answers_drops_ended_sessions_past_the_horizon(sc: Scenario) -> None:
    sc.subscriber("alice", "payg", balance=5 * EUR)
    sc.initial("s1", "alice", entry(100, request=0))
    sc.terminate("s1", 1, "alice", entry(100, used=60))
    sc.initial("s2", "alice", entry(100, request=0))
    horizon = sc.advance(60)
    sc.initial("s3", "alice", entry(100, request=0))
    assert prune_answers(sc.state, horizon) == 2
    assert set(sc.state.answers) == {"cc:s2#0", "cc:s3#0"}
    sc.terminate("s2", 1, "alice", entry(100, used=1))
    assert prune_answers(sc.state, sc.advance(1)) == 2
    assert set(sc.state.answers) == {"cc:s3#0"}


def test_prune_answers_keeps_at_most_the_newest_except_open_sessions(sc: Scenario) -> None:
    sc.subscriber("alice", "payg", balance=5 * EUR)
    for n in range(4):  # four ended sessions, two answers each, oldest first
        sc.initial(f"e{n}", "alice", entry(100, request=0))
        sc.terminate(f"e{n}", 1, "alice", entry(100, used=1))
        sc.advance(1)
    sc.initial("open", "alice", entry(100, request=0))  # still open: never pruned
    horizon = sc.now - timedelta(hours=1)  # nothing is past the time horizon
    assert prune_answers(sc.state, horizon, keep_at_most=9) == 0
    assert prune_answers(sc.state, horizon, keep_at_most=5) == 4  # the oldest: e0, e1
    assert set(sc.state.answers) == {"cc:e2#0", "cc:e2#1", "cc:e3#0", "cc:e3#1", "cc:open#0"}
    assert prune_answers(sc.state, horizon, keep_at_most=0) == 4
    assert set(sc.state.answers) == {"cc:open#0"}
    with pytest.raises(ValueError, match="keep_at_most"):
        prune_answers(sc.state, horizon, keep_at_most=-1)


# --- result codes for what cannot be charged --------------------------------------------------


def test_unknown_subscriber_is_5030(sc: Scenario) -> None:
    answer = sc.initial("s1", "nobody", entry(100, request=0))
    assert answer.result_code is ResultCode.USER_UNKNOWN
    assert "nobody" in answer.error_message
    assert sc.state.answers == {}


def test_unknown_rating_group_is_5031_naming_it(sc: Scenario) -> None:
    sc.subscriber("alice", "payg", balance=EUR)
    answer = sc.initial("s1", "alice", entry(999, request=0))
    assert answer.result_code is ResultCode.RATING_FAILED
    assert "999" in answer.error_message
    assert "999" in answer.services[0].error_message


def test_one_unknown_rating_group_does_not_fail_the_others(sc: Scenario) -> None:
    sc.subscriber("alice", "payg", balance=EUR)
    answer = sc.initial("s1", "alice", entry(100, request=0), entry(999, request=0))
    assert answer.result_code is ResultCode.SUCCESS
    assert [g.result_code for g in answer.services] == [
        ResultCode.SUCCESS,
        ResultCode.RATING_FAILED,
    ]


def variant_catalog() -> Catalog:
    """The built-in catalog plus ``payg-x``: payg with SMS denied, content free, and no roaming
    zone for networks outside the EU (so roaming there cannot be rated)."""
    text = template_text("payg").replace("plan_id: payg", "plan_id: payg-x")
    parts = text.split("credit_control: charged")
    assert len(parts) == 5  # voice, sms, data, content of version 1
    text = (
        parts[0]
        + "credit_control: charged"
        + parts[1]
        + "credit_control: denied"
        + parts[2]
        + "credit_control: charged"
        + parts[3]
        + "credit_control: free"
        + parts[4]
    )
    text = text.replace('world: ["*"]', 'world: ["310"]')
    return builtin_catalog().with_plan(load_plan(text, source="payg-x"))


def test_unratable_roaming_is_5031_naming_what_failed() -> None:
    sc = Scenario(catalog=variant_catalog(), now=PEAK)
    sc.subscriber("alice", "payg-x", balance=EUR)
    request = sc.request(RequestType.INITIAL, "s1", 0, "alice", entry(100, request=0))
    answer = sc.send(_with(request, visited_plmn="99999"))
    assert answer.result_code is ResultCode.RATING_FAILED
    assert "99999" in answer.error_message
    assert account(sc, "alice") == (EUR, 0)


def test_free_service_is_4011_and_charges_nothing() -> None:
    sc = Scenario(catalog=variant_catalog(), now=PEAK)
    sc.subscriber("alice", "payg-x", balance=EUR)
    answer = sc.initial("s1", "alice", entry(300, request=0))
    assert answer.result_code is ResultCode.CREDIT_CONTROL_NOT_APPLICABLE
    assert answer.services[0].result_code is ResultCode.CREDIT_CONTROL_NOT_APPLICABLE
    sc.initial("s2", "alice", entry(100, request=0))
    grant = sc.update("s2", 1, "alice", entry(300, used=5, request=0)).services[0]
    assert grant.result_code is ResultCode.CREDIT_CONTROL_NOT_APPLICABLE
    assert account(sc, "alice") == (EUR, 500_000)


def test_denied_service_is_4010_and_reported_usage_is_still_debited() -> None:
    sc = Scenario(catalog=variant_catalog(), now=PEAK)
    sc.subscriber("alice", "payg-x", balance=EUR)
    answer = sc.initial("s1", "alice", entry(200, request=0))
    assert answer.result_code is ResultCode.END_USER_SERVICE_DENIED
    assert "sms" in answer.error_message
    sc.initial("s2", "alice", entry(100, request=0))
    grant = sc.update("s2", 1, "alice", entry(200, used=2, request=0)).services[0]
    assert grant.result_code is ResultCode.END_USER_SERVICE_DENIED
    assert grant.cost_micros == 100_000 and grant.granted is None
    assert account(sc, "alice") == (900_000, 500_000)
    conserved(sc)


def test_update_of_unknown_session_is_5002(sc: Scenario) -> None:
    sc.subscriber("alice", "payg", balance=EUR)
    answer = sc.update("nope", 1, "alice", entry(100, used=1))
    assert answer.result_code is ResultCode.UNKNOWN_SESSION_ID
    assert sc.terminate("nope", 1, "alice").result_code is ResultCode.UNKNOWN_SESSION_ID


def test_update_naming_another_subscriber_is_5004(sc: Scenario) -> None:
    sc.subscriber("alice", "payg", balance=EUR)
    sc.subscriber("bob", "payg", balance=EUR)
    sc.initial("s1", "alice", entry(100, request=0))
    answer = sc.update("s1", 1, "bob", entry(100, used=1))
    assert answer.result_code is ResultCode.INVALID_AVP_VALUE
    assert "subscriber_id" in answer.error_message


def test_second_initial_with_new_session_data_for_an_open_session_is_5004(sc: Scenario) -> None:
    sc.subscriber("alice", "payg", balance=EUR)
    sc.initial("s1", "alice", entry(100, request=0))
    sc.state.answers.clear()  # as if the original answer were forgotten
    assert sc.initial("s1", "alice", entry(100, request=0)).result_code is (
        ResultCode.INVALID_AVP_VALUE
    )


def _with(request: CreditControlRequest, **changes: object) -> CreditControlRequest:
    return CreditControlRequest(
        **{**{f: getattr(request, f) for f in request.__slots__}, **changes}  # type: ignore[arg-type]
    )


@pytest.mark.parametrize(
    ("changes", "code", "named"),
    [
        ({"session_id": ""}, ResultCode.MISSING_AVP, "session_id"),
        ({"subscriber_id": ""}, ResultCode.MISSING_AVP, "subscriber_id"),
        ({"request_number": 1}, ResultCode.INVALID_AVP_VALUE, "request_number"),
        ({"request_number": -1}, ResultCode.INVALID_AVP_VALUE, "request_number"),
        ({"event_time": datetime(2026, 3, 2, 10)}, ResultCode.INVALID_AVP_VALUE, "event_time"),
        (
            {"requested_action": RequestedAction.DIRECT_DEBITING},
            ResultCode.INVALID_AVP_VALUE,
            "requested_action",
        ),
        (
            {"services": (ServiceUsage(rating_group=100, requested=Units(time_s=-1)),)},
            ResultCode.INVALID_AVP_VALUE,
            "services[0].requested.time_s",
        ),
        (
            {
                "services": (
                    ServiceUsage(rating_group=100, used=(UsedUnits(Units(total_octets=-5)),)),
                )
            },
            ResultCode.INVALID_AVP_VALUE,
            "services[0].used[0].units.total_octets",
        ),
        (
            {"services": (ServiceUsage(requested=Units()),)},
            ResultCode.MISSING_AVP,
            "rating_group",
        ),
        (
            {"services": (entry(100, request=0), entry(100, request=1))},
            ResultCode.INVALID_AVP_VALUE,
            "services[1]",
        ),
        (
            {"services": tuple(entry(i, request=0) for i in range(65))},
            ResultCode.INVALID_AVP_VALUE,
            "services",
        ),
        (
            {"services": (ServiceUsage(rating_group=100, requested=Units(time_s=10**16)),)},
            ResultCode.INVALID_AVP_VALUE,
            "time_s",
        ),
    ],
)
def test_malformed_initial_is_rejected_naming_the_field(
    sc: Scenario, changes: dict[str, object], code: ResultCode, named: str
) -> None:
    sc.subscriber("alice", "payg", balance=EUR)
    good = sc.request(RequestType.INITIAL, "s1", 0, "alice", entry(100, request=0))
    answer = sc.send(_with(good, **changes))
    assert answer.result_code is code
    assert named in answer.error_message
    assert account(sc, "alice") == (EUR, 0)
    assert sc.state.sessions == {} and sc.state.answers == {}


def test_update_with_request_number_zero_is_5004(sc: Scenario) -> None:
    sc.subscriber("alice", "payg", balance=EUR)
    sc.initial("s1", "alice", entry(100, request=0))
    request = sc.request(RequestType.UPDATE, "s2", 0, "alice", entry(100, used=1))
    answer = sc.send(request)
    assert answer.result_code is ResultCode.INVALID_AVP_VALUE
    assert "request_number" in answer.error_message


def test_event_without_requested_action_is_5005(sc: Scenario) -> None:
    sc.subscriber("alice", "payg", balance=EUR)
    answer = sc.send(sc.request(RequestType.EVENT, "e1", 0, "alice", entry(200, request=1)))
    assert answer.result_code is ResultCode.MISSING_AVP
    assert "requested_action" in answer.error_message


def test_unknown_plan_is_5031(sc: Scenario) -> None:
    sc.subscriber("alice", "payg", balance=EUR)
    sc.state.subscribers["alice"].plan_id = "gone"
    answer = sc.initial("s1", "alice", entry(100, request=0))
    assert answer.result_code is ResultCode.RATING_FAILED
    assert "gone" in answer.error_message


def test_plan_not_yet_effective_is_5031(sc: Scenario) -> None:
    sc.subscriber("alice", "payg", balance=EUR)
    sc.now = datetime(2019, 1, 1, tzinfo=UTC)
    answer = sc.initial("s1", "alice", entry(100, request=0))
    assert answer.result_code is ResultCode.RATING_FAILED


def test_account_held_elsewhere_is_5012(sc: Scenario) -> None:
    sc.subscriber("alice", "payg", balance=EUR)
    del sc.state.accounts["alice"]
    answer = sc.initial("s1", "alice", entry(100, request=0))
    assert answer.result_code is ResultCode.UNABLE_TO_COMPLY
    assert "alice" in answer.error_message


def test_session_level_request_without_services(sc: Scenario) -> None:
    sc.subscriber("alice", "payg", balance=EUR)
    assert sc.initial("s1", "alice").result_code is ResultCode.SUCCESS
    assert sc.terminate("s1", 1, "alice").result_code is ResultCode.SUCCESS
    assert sc.state.sessions == {}


def test_pending_changes_hold_every_touched_object(sc: Scenario) -> None:
    sc.subscriber("alice", "payg", balance=EUR)
    request = sc.request(RequestType.INITIAL, "s1", 0, "alice", entry(100, request=0))
    from billing.charging import handle

    answer = handle(sc.state, request, now=sc.now, catalog=sc.catalog)
    changes = sc.state.take_changes()
    assert changes.answers == {"cc:s1#0": (0, answer)}
    assert set(changes.sessions) == {"s1"} and set(changes.accounts) == {"alice"}
    assert changes.journal == []  # a grant moves no balance
    assert sc.state.answers["cc:s1#0"] is answer


def test_started_at_and_timestamps(sc: Scenario) -> None:
    sc.subscriber("alice", "payg", balance=EUR)
    sc.initial("s1", "alice", entry(100, request=0))
    session = sc.state.sessions["s1"]
    assert session.started_at == PEAK and session.expires_at == PEAK + timedelta(hours=2)


def test_final_unit_action_restrict_access_from_the_plan() -> None:
    text = template_text("payg").replace("plan_id: payg", "plan_id: payg-r")
    text = text.replace("final_unit_action: terminate", "final_unit_action: restrict_access", 1)
    catalog = builtin_catalog().with_plan(load_plan(text, source="payg-r"))
    sc = Scenario(catalog=catalog, now=PEAK)
    sc.subscriber("alice", "payg-r", balance=100_000)
    grant = sc.initial("s1", "alice", entry(100, request=0)).services[0]
    assert grant.granted == Units(time_s=60)
    assert grant.final_unit is not None
    assert grant.final_unit.action is FinalUnitAction.RESTRICT_ACCESS
    assert grant.final_unit.redirect_address is None


def test_several_reports_of_one_stretch_are_rated_together(sc: Scenario) -> None:
    sc.subscriber("alice", "payg", balance=2 * EUR)
    sc.initial("s1", "alice", entry(100, request=0))
    two_reports = ServiceUsage(
        rating_group=100, used=(UsedUnits(Units(time_s=30)), UsedUnits(Units(time_s=30)))
    )
    answer = sc.terminate("s1", 1, "alice", two_reports)
    assert answer.cost_micros == 100_000  # one started minute, not two


def test_plan_spending_money_before_bundles_is_refused_not_reordered(sc: Scenario) -> None:
    text = template_text("hybrid").replace("plan_id: hybrid", "plan_id: money-first")
    text = text.replace(
        "consumption_order: [bundles, prepaid, credit]",
        "consumption_order: [prepaid, bundles, credit]",
    )
    assert "[prepaid, bundles, credit]" in text
    plan = load_plan(text, source="money-first")
    from billing.accounts import ChargingError

    with pytest.raises(ChargingError, match="before bundles"):
        Scenario(catalog=sc.catalog.with_plan(plan), now=PEAK).subscriber("x", "money-first")
    # A subscriber provisioned before the plan changed gets 5031 naming the order.
    sc.subscriber("hana", "hybrid", balance=EUR)
    sc.catalog = sc.catalog.with_plan(
        load_plan(text.replace("plan_id: money-first", "plan_id: hybrid"), source="hybrid-2")
    )
    answer = sc.initial("s1", "hana", entry(100, request=0))
    assert answer.result_code is ResultCode.RATING_FAILED
    assert "before bundles" in answer.error_message
