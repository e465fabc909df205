"""Directory.freeze_all packs every hot pair except the kept ones, the warm set's included."""

from __future__ import annotations

from datetime import UTC, datetime

from actors.compact import Directory
from billing.accounts import provision_subscriber
from billing.tariff import builtin_catalog

AT = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)


def _directory(count: int) -> Directory:
    directory = Directory()
    state = directory.new_state()
    plan = builtin_catalog().get("payg")
    for i in range(count):
        provision_subscriber(
            state,
            subscriber_id=f"s{i}",
            vshard=i % 8,
            plan=plan,
            payment_mode=None,
            initial_balance_micros=1_000_000,
            credit_limit_micros=0,
            currency=None,
            now=AT,
        )
    state.take_changes()
    return directory


def test_freeze_all_keeps_both_kept_sets_hot_and_packs_the_rest() -> None:
    directory = _directory(6)
    warm = {"s1": 0.0, "s2": 0.0}.keys()  # what the owner passes: its warm set's keys
    frozen = directory.freeze_all(keep={"s3"}, also_keep=warm)
    assert frozen == 3
    assert set(directory.hot_subscribers) == {"s1", "s2", "s3"}
    assert set(directory.cold) == {"s0", "s4", "s5"}
    assert directory.subscribers["s4"].subscriber_id == "s4"  # packed, still readable


def test_freeze_all_without_kept_sets_packs_everything() -> None:
    directory = _directory(3)
    assert directory.freeze_all() == 3
    assert directory.hot_subscribers == {}
