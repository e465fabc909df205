"""Reading untrusted tariff YAML: a strict loader and a reader that collects problems.

:class:`StrictLoader` is PyYAML's safe loader that also records keys repeated in one mapping.
:class:`Reader` reads values of an expected shape; a wrong value records a
:class:`~billing._tariff_errors.TariffProblem` (file, field path, what is wrong) and yields
``None``, so reading goes on and every problem of a file is found in one pass. Nothing here walks
or prints a value deeper than its expected shape (problem texts use a bounded repr).
"""

from __future__ import annotations

import re
import reprlib
from collections.abc import Callable
from enum import StrEnum
from typing import Any, TypeVar

import yaml

from billing._tariff_errors import TariffProblem
from billing.money import parse_money

_E = TypeVar("_E", bound=StrEnum)
_T = TypeVar("_T")
NAME = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,63}$")
DIGITS = re.compile(r"^\d{1,15}$")
PLMN = re.compile(r"^\d{3}-?\d{2,3}$")
TIME = re.compile(r"^(\d{2}):(\d{2})$")
CURRENCY = re.compile(r"^[A-Z]{3}$")
MISSING = object()  # a required key that is absent: reported once, then skipped


class Reader:
    """Collects problems while reading untrusted YAML values; every getter returns ``None`` (and
    records a problem) when a value is wrong, so reading continues and all problems are found."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.problems: list[TariffProblem] = []

    def fail(self, path: str, message: str) -> None:
        self.problems.append(TariffProblem(self.source, path or "<top>", message))

    def mapping(
        self, value: object, path: str, required: set[str], optional: set[str]
    ) -> dict[str, Any] | None:
        if value is MISSING:
            return None
        if not isinstance(value, dict):
            self.fail(path, f"must be a mapping, got {kind(value)}")
            return None
        out: dict[str, Any] = {}
        for key, item in value.items():
            if not isinstance(key, str):
                self.fail(path, f"keys must be strings, got {key!r}")
            elif key not in required and key not in optional:
                allowed = ", ".join(sorted(required | optional))
                self.fail(join(path, key), f"unknown key (allowed: {allowed})")
            else:
                out[key] = item
        for key in sorted(required - out.keys()):
            self.fail(join(path, key), "is required")
            out[key] = MISSING  # reported once here; every getter skips it silently
        return out

    def items(self, value: object, path: str) -> list[Any] | None:
        if value is MISSING:
            return None
        if not isinstance(value, list):
            self.fail(path, f"must be a list, got {kind(value)}")
            return None
        return value

    def integer(
        self, value: object, path: str, minimum: int | None = None, maximum: int | None = None
    ) -> int | None:
        if value is MISSING:
            return None
        if isinstance(value, bool) or not isinstance(value, int):
            self.fail(path, f"must be an integer, got {kind(value)}")
            return None
        if minimum is not None and value < minimum:
            self.fail(path, f"must be >= {minimum}, got {value}")
            return None
        if maximum is not None and value > maximum:
            self.fail(path, f"must be <= {maximum}, got {value}")
            return None
        return value

    def text(self, value: object, path: str, pattern: re.Pattern[str] | None = None) -> str | None:
        if value is MISSING:
            return None
        if not isinstance(value, str):
            self.fail(path, f"must be a string, got {kind(value)}")
            return None
        if pattern is not None and not pattern.match(value):
            self.fail(path, f"{value!r} is not valid (expected {describe(pattern)})")
            return None
        return value

    def name(self, value: object, path: str) -> str | None:
        return self.text(value, path, NAME)

    def choice(self, value: object, path: str, enum: type[_E]) -> _E | None:
        if value is MISSING:
            return None
        try:
            if not isinstance(value, str):
                raise ValueError(value)
            return enum(value)
        except ValueError:
            allowed = ", ".join(m.value for m in enum)
            self.fail(path, f"{value!r} is not one of: {allowed}")
            return None

    def word(self, value: object, path: str, allowed: tuple[str, ...]) -> str | None:
        if value is MISSING:
            return None
        if value not in allowed:
            self.fail(path, f"{value!r} is not one of: {', '.join(allowed)}")
            return None
        return str(value)

    def money(self, value: object, path: str) -> int | None:
        if value is MISSING:
            return None
        if isinstance(value, float):
            self.fail(
                path,
                f"money must be a quoted decimal string such as '0.10', not the "
                f"float {value!r} (floats are not exact)",
            )
            return None
        if isinstance(value, bool) or not isinstance(value, (str, int)):
            self.fail(path, f"must be a decimal amount string, got {kind(value)}")
            return None
        try:
            micros = parse_money(value)
        except ValueError as exc:
            self.fail(path, str(exc))
            return None
        if micros < 0:
            self.fail(path, f"must not be negative, got {value!r}")
            return None
        return micros

    def list_of(
        self,
        value: object,
        path: str,
        read: Callable[[object, str], _T | None],
        unique: bool = True,
    ) -> tuple[_T, ...] | None:
        raw = self.items(value, path)
        if raw is None:
            return None
        out: list[_T] = []
        ok = True
        for i, item in enumerate(raw):
            got = read(item, f"{path}[{i}]")
            if got is None:
                ok = False
            elif unique and got in out:
                self.fail(f"{path}[{i}]", f"duplicate {got!r}")
                ok = False
            else:
                out.append(got)
        return tuple(out) if ok else None


class StrictLoader(yaml.SafeLoader):
    """PyYAML's safe loader, stricter: a key repeated in one mapping (which YAML would silently
    resolve to the last value) is recorded as a problem. Anchors and aliases (``&x`` / ``*x``,
    ``<<: *x``) are allowed; they share one object, and nothing here walks or prints a value
    deeper than its expected shape, so an alias bomb cannot blow up."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self.duplicates: list[tuple[str, str]] = []

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[object, str] = {}
        for key_node, _ in node.value:
            if isinstance(key_node, yaml.ScalarNode):
                where = mark_text(key_node.start_mark)
                if key_node.value in seen:
                    self.duplicates.append(
                        (
                            where,
                            f"duplicate key {key_node.value!r} (first at {seen[key_node.value]})",
                        )
                    )
                else:
                    seen[key_node.value] = where
        return super().construct_mapping(node, deep)


def mark_text(mark: Any) -> str:
    return f"line {mark.line + 1} column {mark.column + 1}"


def join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


_REPR = reprlib.Repr()
_REPR.maxlevel = 2
_REPR.maxstring = 40
_REPR.maxother = 40


def kind(value: object) -> str:
    """A short description of an unexpected value (bounded: never a full repr)."""
    if value is None:
        return "nothing"
    if isinstance(value, bool):
        return f"a boolean ({value})"
    return f"{type(value).__name__} {_REPR.repr(value)}"


def describe(pattern: re.Pattern[str]) -> str:
    return {
        NAME.pattern: "lower-case letters, digits, '_', '.', '-'",
        DIGITS.pattern: "digits only",
        PLMN.pattern: "an MCC-MNC such as '20801'",
        CURRENCY.pattern: "an ISO 4217 code such as 'EUR'",
    }.get(pattern.pattern, pattern.pattern)
