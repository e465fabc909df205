"""Compact JSON for domain values: answers, reservations, and fields without a column yet.

A dataclass becomes a JSON object of its fields, leaving out those equal to their default; an
enum becomes its value; a datetime its ISO 8601 text (with offset); a tuple or list an array; a
dict an object (int keys as text). Decoding follows the dataclass's type hints, so a value comes
back *identical* (same types, same enums, same tuples) — the recovery tests compare with ``==``.

Encoders and decoders are built once per type and cached: the group commit encodes one answer per
request, so this is on the hot path.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import types
import typing
from collections.abc import Callable
from datetime import datetime
from functools import cache
from typing import Any

import orjson

__all__ = ["CodecError", "decode_json", "decoder", "dumps", "encode_json", "encoder"]

Encode = Callable[[Any], Any]
Decode = Callable[[Any], Any]
_MISSING: Any = dataclasses.MISSING


class CodecError(ValueError):
    """A value that cannot be encoded, or stored text that does not decode to the type."""


def _identity(value: Any) -> Any:
    return value


def _optional_inner(tp: Any) -> Any | None:
    """``X`` for ``X | None``; None if ``tp`` is not an optional of exactly one type."""
    origin = typing.get_origin(tp)
    if origin is typing.Union or origin is types.UnionType:
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1 and len(typing.get_args(tp)) == 2:
            return args[0]
        raise CodecError(f"unsupported union type {tp!r}: only `X | None` is encodable")
    return None


def _encode_datetime(value: datetime) -> str:
    return value.isoformat()


@cache
def encoder(tp: Any) -> Encode:
    """Return a function turning a value of type ``tp`` into JSON-able data."""
    inner = _optional_inner(tp)
    if inner is not None:
        enc = encoder(inner)
        return lambda v: None if v is None else enc(v)
    if tp in (int, str, bool, float, Any, type(None)):
        return _identity
    if tp is datetime:
        return _encode_datetime
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return lambda v: v.value
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        return _dataclass_encoder(tp)
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (tuple, list, set, frozenset):
        if origin is tuple and args and args[-1] is not Ellipsis:
            encs = [encoder(a) for a in args]
            return lambda v: [e(x) for e, x in zip(encs, v, strict=True)]
        enc = encoder(args[0]) if args else _identity
        return lambda v: [enc(x) for x in v]
    if origin is dict:
        kenc, venc = encoder(args[0]), encoder(args[1])
        return lambda v: {str(kenc(k)): venc(x) for k, x in v.items()}
    raise CodecError(f"no JSON encoding for type {tp!r}")


def _dataclass_encoder(cls: type) -> Encode:
    """The encoder of dataclass ``cls``: a function generated for it, one statement per field.

    A field equal to its default, or empty and equal to its factory's value, is left out; the
    others are encoded in field order (tests/property/test_codec_generated.py checks this against
    the plain loop over the fields it replaced), without the loop, the tuple unpacking and the per-field encoder calls for plain
    values, enums and datetimes: the group commit encodes one answer (with its grants) and one
    session row per request, and this was ~5 µs of an owner's ~85 µs per unary request.
    """
    hints = typing.get_type_hints(cls)
    fields = dataclasses.fields(cls)
    namespace: dict[str, Any] = {"_cls": cls}
    lines = ["def encode(v):", "    out = {}"]
    for i, f in enumerate(fields):
        tp = hints[f.name]
        enc = encoder(tp)
        var = f"x{i}"
        if enc is _identity:
            value = var
        elif tp is datetime:
            value = f"{var}.isoformat()"
        elif isinstance(tp, type) and issubclass(tp, enum.Enum):
            value = f"{var}.value"
        else:
            namespace[f"e{i}"] = enc
            value = f"e{i}({var})"
        store = f"out[{f.name!r}] = {value}"
        lines.append(f"    {var} = v.{f.name}")
        if f.default is not _MISSING:
            namespace[f"d{i}"] = f.default
            test = f"{var} is not None" if f.default is None else f"not {var} == d{i}"
            lines.append(f"    if {test}:")
            lines.append(f"        {store}")
        elif f.default_factory is not _MISSING:
            namespace[f"f{i}"] = f.default_factory
            lines.append(f"    if {var} or not {var} == f{i}():")
            lines.append(f"        {store}")
        else:
            lines.append(f"    {store}")
    lines.append("    return out")
    exec(compile("\n".join(lines), f"<encoder of {cls.__qualname__}>", "exec"), namespace)
    encode: Encode = namespace["encode"]
    return encode


def _decode_int(value: Any) -> int:
    if type(value) is not int:
        raise CodecError(f"expected an integer, got {value!r}")
    return value


def _decode_str(value: Any) -> str:
    if type(value) is not str:
        raise CodecError(f"expected text, got {value!r}")
    return value


def _decode_datetime(value: Any) -> datetime:
    return datetime.fromisoformat(_decode_str(value))


@cache
def decoder(tp: Any) -> Decode:
    """Return a function turning JSON data (from :func:`encoder`) back into a ``tp`` value."""
    inner = _optional_inner(tp)
    if inner is not None:
        dec = decoder(inner)
        return lambda v: None if v is None else dec(v)
    if tp is int:
        return _decode_int
    if tp is str:
        return _decode_str
    if tp in (bool, float, Any, type(None)):
        return _identity
    if tp is datetime:
        return _decode_datetime
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return tp
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        return _dataclass_decoder(tp)
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is tuple:
        if args and args[-1] is not Ellipsis:
            decs = [decoder(a) for a in args]
            return lambda v: tuple(d(x) for d, x in zip(decs, v, strict=True))
        dec = decoder(args[0]) if args else _identity
        return lambda v: tuple(dec(x) for x in v)
    if origin in (list, set, frozenset):
        dec = decoder(args[0]) if args else _identity
        return lambda v: origin(dec(x) for x in v)
    if origin is dict:
        key_tp = args[0]
        kdec: Decode
        if key_tp is int:
            kdec = int
        elif isinstance(key_tp, type) and issubclass(key_tp, enum.Enum):
            kdec = key_tp
        else:
            kdec = decoder(key_tp)
        vdec = decoder(args[1])
        return lambda v: {kdec(k): vdec(x) for k, x in v.items()}
    raise CodecError(f"no JSON decoding for type {tp!r}")


def _dataclass_decoder(cls: type) -> Decode:
    hints = typing.get_type_hints(cls)
    decs = {f.name: decoder(hints[f.name]) for f in dataclasses.fields(cls)}

    def decode(value: Any) -> Any:
        if not isinstance(value, dict):
            raise CodecError(f"expected an object for {cls.__name__}, got {value!r}")
        try:
            return cls(**{k: decs[k](v) for k, v in value.items()})
        except KeyError as e:
            raise CodecError(f"{cls.__name__} has no field {e.args[0]!r}") from None
        except TypeError as e:
            raise CodecError(f"cannot rebuild {cls.__name__}: {e}") from None

    return decode


def _default(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    raise CodecError(f"cannot write {type(value).__name__} value {value!r} to the database")


def dumps_reference(value: Any) -> str:
    """The standard library's compact JSON of ``value`` (datetimes as ``isoformat()``).

    What :func:`dumps` falls back to, and the JSON value it must always equal.
    """
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, default=_default)


def dumps(value: Any) -> str:
    """Compact JSON text of ``value``: the same JSON value as :func:`dumps_reference`.

    ``orjson`` (~5-10x faster on the group commit's rows) where it writes exactly that value:
    str/int/bool/None, lists, tuples, str-keyed dicts, enums (their value), and datetimes in
    UTC or whole-minute offsets (RFC 3339 text equal to ``isoformat()``; orjson would drop an
    offset's seconds, so :mod:`sharding._rows` hands such datetimes over as text already).
    Whatever orjson refuses (ints beyond 64 bits, non-str keys, surrogates, dataclasses, other
    types) goes through :func:`dumps_reference`, which also raises :class:`CodecError` as before.
    Not covered, as no record holds them (typed rows; money is int micros): floats (orjson
    writes NaN/infinity as null, the reference as text PostgreSQL refuses), and the date, time,
    UUID and plain-enum values orjson writes where the reference raises.
    """
    try:
        return orjson.dumps(value, option=orjson.OPT_PASSTHROUGH_DATACLASS).decode()
    except orjson.JSONEncodeError:
        return dumps_reference(value)


def encode_json(tp: Any, value: Any) -> str:
    """Compact JSON text for ``value`` of type ``tp``."""
    return dumps(encoder(tp)(value))


def decode_json(tp: Any, text: str | bytes) -> Any:
    """The ``tp`` value that :func:`encode_json` wrote as ``text``."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise CodecError(f"stored {getattr(tp, '__name__', tp)} is not JSON: {e}") from None
    return decoder(tp)(data)
