"""billing._frozen.fast_init builds through a twin class of the same slots: the result is an
instance of the frozen class itself (never of the twin), for subclasses too, and behaves as one
built by the dataclass's own ``__init__`` (equality, hash, repr, copy, pickle, frozen)."""

from __future__ import annotations

import copy
import dataclasses
import pickle
from datetime import UTC, datetime

import pytest

from billing._frozen import fast_init
from billing.protocol import ResultCode, ServiceGrant, Units
from billing.state import EntryKind, JournalEntry

AT = datetime(2026, 1, 1, tzinfo=UTC)


@fast_init
@dataclasses.dataclass(frozen=True, slots=True)
class _Fast:
    a: int
    b: str = "x"


@dataclasses.dataclass(frozen=True, slots=True)
class _Plain:
    a: int
    b: str = "x"


@dataclasses.dataclass(frozen=True, slots=True)
class _Sub(_Fast):
    c: int = 0


def test_instances_are_of_the_frozen_class_not_the_twin() -> None:
    fast = _Fast(1)
    grant = ServiceGrant(1, None, ResultCode.SUCCESS)
    units = Units(time_s=1)
    assert (type(fast), type(grant), type(units)) == (_Fast, ServiceGrant, Units)
    assert isinstance(grant, ServiceGrant) and dataclasses.is_dataclass(grant)
    with pytest.raises(dataclasses.FrozenInstanceError):
        fast.a = 2  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        grant.cost_micros = 2  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        units.time_s = 2  # type: ignore[misc]


def test_same_values_repr_and_hash_as_the_dataclass_init() -> None:
    fast, plain = _Fast(3, "y"), _Plain(3, "y")
    assert (fast.a, fast.b) == (plain.a, plain.b)
    assert repr(fast).replace("_Fast", "_Plain") == repr(plain)
    assert hash(fast) == hash(_Fast(3, "y")) and fast == _Fast(3, "y") and fast != _Fast(3, "z")


def test_a_subclass_is_built_as_itself() -> None:
    sub = _Sub(1, "y", 5)
    assert type(sub) is _Sub
    assert (sub.a, sub.b, sub.c) == (1, "y", 5)
    assert sub != _Fast(1, "y")


def test_journal_entry_copies_and_pickles() -> None:
    entry = JournalEntry(3, "acc", "k", 0, EntryKind.DEBIT, -5, None, 0, AT, "s", 1, 100, None, "")
    for other in (copy.copy(entry), copy.deepcopy(entry), pickle.loads(pickle.dumps(entry))):
        assert type(other) is JournalEntry and other == entry
    assert dataclasses.replace(entry, line=1).line == 1


def test_refuses_a_class_whose_layout_cannot_be_shared() -> None:
    @dataclasses.dataclass(frozen=True)
    class NoSlots:
        a: int

    with pytest.raises(TypeError):
        fast_init(NoSlots)
