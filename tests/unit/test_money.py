"""Integer money: exact parsing, formatting, and every rounding mode at its boundaries."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from billing.money import MICROS_PER_UNIT, Rounding, divide, format_money, parse_money


@pytest.mark.parametrize(
    ("numerator", "denominator", "rounding", "expected"),
    [
        (7, 2, Rounding.UP, 4),
        (7, 2, Rounding.DOWN, 3),
        (7, 2, Rounding.HALF_UP, 4),
        (7, 2, Rounding.HALF_EVEN, 4),
        (5, 2, Rounding.HALF_EVEN, 2),
        (5, 2, Rounding.HALF_UP, 3),
        (6, 4, Rounding.HALF_EVEN, 2),
        (10, 4, Rounding.HALF_EVEN, 2),
        (1, 3, Rounding.HALF_UP, 0),
        (2, 3, Rounding.HALF_UP, 1),
        (9, 3, Rounding.UP, 3),
        (-7, 2, Rounding.UP, -4),
        (-7, 2, Rounding.DOWN, -3),
        (0, 5, Rounding.UP, 0),
    ],
)
def test_divide_rounds_as_told(
    numerator: int, denominator: int, rounding: Rounding, expected: int
) -> None:
    assert divide(numerator, denominator, rounding) == expected


@pytest.mark.parametrize("denominator", [0, -1])
def test_divide_rejects_non_positive_denominator(denominator: int) -> None:
    with pytest.raises(ValueError, match="denominator"):
        divide(1, denominator, Rounding.UP)


@settings(derandomize=True, max_examples=300)
@given(st.integers(-(10**15), 10**15), st.integers(1, 10**9), st.sampled_from(list(Rounding)))
def test_divide_is_within_one_of_the_exact_quotient(n: int, d: int, rounding: Rounding) -> None:
    q = divide(n, d, rounding)
    # |q*d - n| < d: the result is one of the two integers around the exact quotient.
    assert abs(q * d - n) < d
    if rounding is Rounding.UP:
        assert abs(q) * d >= abs(n)
    if rounding is Rounding.DOWN:
        assert abs(q) * d <= abs(n)
    if rounding in (Rounding.HALF_UP, Rounding.HALF_EVEN):
        assert 2 * abs(q * d - n) <= d


@pytest.mark.parametrize(
    ("text", "micros"),
    [
        ("0", 0),
        ("12.5", 12_500_000),
        ("0.000001", 1),
        ("-3.25", -3_250_000),
        (" 7.10 ", 7_100_000),
        (4, 4 * MICROS_PER_UNIT),
    ],
)
def test_parse_money_is_exact(text: str | int, micros: int) -> None:
    assert parse_money(text) == micros


@pytest.mark.parametrize("text", ["", "1.0000001", "abc", "1,5", "1e3", "--1", ".5"])
def test_parse_money_rejects_what_is_not_an_exact_amount(text: str) -> None:
    with pytest.raises(ValueError, match="decimal amount"):
        parse_money(text)


def test_parse_money_rejects_bool() -> None:
    with pytest.raises(ValueError, match="not an amount"):
        parse_money(True)


@settings(derandomize=True)
@given(st.integers(-(10**15), 10**15))
def test_format_then_parse_round_trips(micros: int) -> None:
    assert parse_money(format_money(micros)) == micros


def test_format_money_with_currency() -> None:
    assert format_money(-1_250_000, "EUR") == "-1.250000 EUR"
