"""billing._frozen.fast_init: same construction as the dataclass's own __init__, still frozen."""

from __future__ import annotations

import dataclasses
import inspect
import pickle
from datetime import UTC, datetime

import pytest

from billing._frozen import fast_init
from billing.protocol import CreditControlAnswer, ResultCode, ServiceGrant, Units
from billing.rating import RatedItem, Rating, UsageEvent
from billing.state import EntryKind, JournalEntry


@dataclasses.dataclass(frozen=True, slots=True)
class _Plain:
    a: int
    b: str = "x"
    c: tuple[int, ...] = ()


@fast_init
@dataclasses.dataclass(frozen=True, slots=True)
class _Fast:
    a: int
    b: str = "x"
    c: tuple[int, ...] = ()


def test_same_signature_defaults_and_values_as_the_dataclass_init() -> None:
    assert str(inspect.signature(_Fast)) == str(inspect.signature(_Plain))
    for args, kwargs in [((1,), {}), ((1, "y"), {"c": (2,)}), ((), {"a": 3, "b": "z"})]:
        fast, plain = _Fast(*args, **kwargs), _Plain(*args, **kwargs)  # type: ignore[arg-type]
        assert (fast.a, fast.b, fast.c) == (plain.a, plain.b, plain.c)


def test_argument_errors_like_the_dataclass_init() -> None:
    with pytest.raises(TypeError):
        _Fast()  # type: ignore[call-arg]
    with pytest.raises(TypeError):
        _Fast(1, a=2)  # type: ignore[misc]
    with pytest.raises(TypeError):
        _Fast(1, d=2)  # type: ignore[call-arg]


def test_still_frozen_equal_hashable_and_picklable() -> None:
    grant = ServiceGrant(100, None, ResultCode.SUCCESS, granted=Units(time_s=60), cost_micros=5)
    with pytest.raises(dataclasses.FrozenInstanceError):
        grant.cost_micros = 6  # type: ignore[misc]
    same = ServiceGrant(100, None, ResultCode.SUCCESS, granted=Units(time_s=60), cost_micros=5)
    assert grant == same and hash(grant) == hash(same)
    assert pickle.loads(pickle.dumps(grant)) == grant
    assert dataclasses.replace(grant, cost_micros=7).cost_micros == 7
    answer = CreditControlAnswer("s", 1, ResultCode.SUCCESS, services=(grant,))
    assert pickle.loads(pickle.dumps(answer)) == answer


@pytest.mark.parametrize(
    "cls", [Units, ServiceGrant, CreditControlAnswer, JournalEntry, UsageEvent, RatedItem, Rating]
)
def test_hot_records_use_it(cls: type) -> None:
    assert cls.__init__.__qualname__ == f"{cls.__qualname__}.__init__"
    assert dataclasses.is_dataclass(cls)
    assert "_set0" in cls.__init__.__code__.co_names  # stores through the slot descriptors


def test_journal_entry_fields_in_order() -> None:
    at = datetime(2026, 1, 1, tzinfo=UTC)
    entry = JournalEntry(3, "acc", "k", 0, EntryKind.DEBIT, -5, None, 0, at, rating_group=100)
    assert dataclasses.astuple(entry)[:9] == (3, "acc", "k", 0, EntryKind.DEBIT, -5, None, 0, at)
    assert entry.rating_group == 100 and entry.note == ""


def test_refuses_classes_it_cannot_reproduce() -> None:
    @dataclasses.dataclass(frozen=True, slots=True)
    class WithFactory:
        a: list[int] = dataclasses.field(default_factory=list)

    @dataclasses.dataclass(frozen=True, slots=True)
    class WithPostInit:
        a: int

        def __post_init__(self) -> None:
            pass

    @dataclasses.dataclass(slots=True)
    class NotFrozen:
        a: int

    for cls in (WithFactory, WithPostInit, NotFrozen):
        with pytest.raises(TypeError):
            fast_init(cls)
