"""Integer money: every amount is an ``int`` of micros (1 currency unit = 1,000,000 micros).

No float ever touches money. Division happens only through :func:`divide`, which rounds the way
the tariff says, so every rounding decision is explicit and testable.
"""

from __future__ import annotations

import re
from enum import StrEnum

MICROS_PER_UNIT = 1_000_000

_DECIMAL = re.compile(r"^(?P<sign>-?)(?P<whole>\d+)(?:\.(?P<frac>\d{1,6}))?$")


class Rounding(StrEnum):
    """How a division that does not come out even is resolved."""

    UP = "up"  # away from zero: the operator never undercharges
    DOWN = "down"  # toward zero: the subscriber never overpays
    HALF_UP = "half_up"  # to nearest, ties away from zero
    HALF_EVEN = "half_even"  # to nearest, ties to even (banker's rounding)


def divide(numerator: int, denominator: int, rounding: Rounding) -> int:
    """Return ``numerator / denominator`` rounded as ``rounding`` says, in integers only.

    >>> divide(7, 2, Rounding.HALF_EVEN), divide(5, 2, Rounding.HALF_EVEN), divide(-7, 2, Rounding.UP)
    (4, 2, -4)
    """
    if denominator <= 0:
        raise ValueError(f"denominator must be positive, got {denominator}")
    sign = -1 if numerator < 0 else 1
    quotient, remainder = divmod(abs(numerator), denominator)
    if remainder:
        if rounding is Rounding.UP:
            quotient += 1
        elif rounding is Rounding.HALF_UP:
            quotient += 2 * remainder >= denominator
        elif rounding is Rounding.HALF_EVEN:
            twice = 2 * remainder
            quotient += twice > denominator or (twice == denominator and quotient % 2 == 1)
    return sign * quotient


def parse_money(text: str | int) -> int:
    """Parse a decimal amount such as ``"12.50"`` into micros, exactly.

    Integers are taken as whole currency units. More than six decimal places is an error, not a
    silent rounding.
    """
    if isinstance(text, bool):
        raise ValueError(f"not an amount: {text!r}")
    if isinstance(text, int):
        return text * MICROS_PER_UNIT
    match = _DECIMAL.match(text.strip())
    if match is None:
        raise ValueError(f"not a decimal amount with at most 6 decimals: {text!r}")
    frac = (match["frac"] or "").ljust(6, "0")
    micros = int(match["whole"]) * MICROS_PER_UNIT + int(frac or "0")
    return -micros if match["sign"] else micros


def format_money(micros: int, currency: str = "") -> str:
    """Render micros as a decimal string with six places, e.g. ``-1.250000 EUR``."""
    sign = "-" if micros < 0 else ""
    whole, frac = divmod(abs(micros), MICROS_PER_UNIT)
    text = f"{sign}{whole}.{frac:06d}"
    return f"{text} {currency}" if currency else text
