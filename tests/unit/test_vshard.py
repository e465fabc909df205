"""vshard hashing: fixed vectors (the mapping must never change), range, spread, bad input."""

from __future__ import annotations

import collections

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sharding.vshard import VSHARD_COUNT_DEFAULT, stable_hash, vshard_of

# Recorded once; if any of these changes, every deployed vshard would move: never update them.
KNOWN = [
    ("491700000001", 12794784185734031916, 556, 1),
    ("a", 4681665781835383343, 559, 2),
    ("sub-0", 2177044582469897386, 170, 1),
    ("shared-acc-1", 16294571386023473314, 162, 2),
    ("ü-é", 12858036504280283874, 738, 5),
]


@pytest.mark.parametrize(("key", "digest", "v1024", "v7"), KNOWN)
def test_known_vectors(key: str, digest: int, v1024: int, v7: int) -> None:
    assert stable_hash(key) == digest
    assert vshard_of(key, 1024) == v1024
    assert vshard_of(key, 7) == v7


def test_default_count() -> None:
    assert VSHARD_COUNT_DEFAULT == 1024


@settings(derandomize=True, max_examples=200)
@given(key=st.text(min_size=1, max_size=40), count=st.integers(min_value=1, max_value=1 << 20))
def test_in_range_and_deterministic(key: str, count: int) -> None:
    vshard = vshard_of(key, count)
    assert 0 <= vshard < count
    assert vshard == vshard_of(key, count)


def test_spread_is_even_enough() -> None:
    counts = collections.Counter(vshard_of(f"4917{i:08d}", 64) for i in range(64_000))
    assert len(counts) == 64
    assert max(counts.values()) < 1.2 * 1000
    assert min(counts.values()) > 0.8 * 1000


@pytest.mark.parametrize("count", [0, -1, (1 << 20) + 1])
def test_bad_count_is_an_error_naming_the_field(count: int) -> None:
    with pytest.raises(ValueError, match="vshard_count"):
        vshard_of("x", count)


def test_bad_ids_are_errors() -> None:
    with pytest.raises(ValueError, match="subscriber_id"):
        vshard_of("", 8)
    with pytest.raises(TypeError, match="subscriber_id"):
        vshard_of(12, 8)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="vshard_count"):
        vshard_of("x", True)
