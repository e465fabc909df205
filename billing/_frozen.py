"""A faster ``__init__`` for the frozen slots dataclasses built on every request.

A frozen dataclass's generated ``__init__`` sets each field with ``object.__setattr__(self,
name, value)`` (its own ``__setattr__`` refuses), which looks the attribute up by name for every
field: for the ten or so records built per credit-control request (answer, grant, journal line,
usage event, rating) that was several microseconds. :func:`fast_init` replaces the generated
``__init__`` with one of the same signature that stores the fields without that detour.

How: the new instance is moved, for the length of ``__init__``, into a twin class with the same
``__slots__`` (the same memory layout) and no ``__setattr__`` of its own, so each field is a plain
attribute store (the interpreter's fastest kind); the last statement moves it back into the frozen
class. ``__class__`` assignment between two classes of one layout is what CPython checks and
allows (it refuses otherwise, and :func:`fast_init` checks it once at import). Nothing can fail
between the two moves (only stores of the arguments), and the instance is not visible to anyone
else yet. An instance of a subclass (which may have other slots) is filled through the frozen
class's own slot descriptors instead (``_set0``, ``_set1``, ...).

Nothing else changes: the instance is still frozen (assignment after construction raises
``FrozenInstanceError``), equality, hashing, ``repr``, pickling and ``dataclasses.fields`` are the
dataclass's own. Only classes whose ``__init__`` does nothing but assign its parameters qualify
(no ``default_factory``, no ``init=False`` field, no ``__post_init__``); anything else is refused
at import time so a later change to such a class cannot be silently mis-initialised.
"""

from __future__ import annotations

import dataclasses
from typing import Any, TypeVar

T = TypeVar("T")
# ``object.__class__``'s setter, called directly: the frozen class's ``__setattr__`` refuses.
_SET_CLASS = object.__dict__["__class__"].__set__


def fast_init(cls: type[T]) -> type[T]:
    """Give the frozen slots dataclass ``cls`` an equivalent ``__init__`` that is cheaper to run.

    Raises ``TypeError`` when ``cls`` is not a frozen slots dataclass whose ``__init__`` only
    assigns its parameters in field order.
    """
    params = getattr(cls, "__dataclass_params__", None)
    if params is None or not params.frozen or "__slots__" not in cls.__dict__:
        raise TypeError(f"{cls.__name__}: fast_init needs a frozen slots dataclass")
    if hasattr(cls, "__post_init__"):
        raise TypeError(f"{cls.__name__}: fast_init cannot run __post_init__")
    twin = type(f"_{cls.__name__}Fields", (), {"__slots__": cls.__slots__})  # type: ignore[attr-defined]
    namespace: dict[str, Any] = {"_cls": cls, "_twin": twin, "_set_class": _SET_CLASS}
    args: list[str] = []
    stores: list[str] = []
    setters: list[str] = []
    for index, field in enumerate(dataclasses.fields(cls)):  # type: ignore[arg-type]
        if not field.init or field.kw_only or field.default_factory is not dataclasses.MISSING:
            raise TypeError(f"{cls.__name__}.{field.name}: fast_init supports plain fields only")
        setter = f"_set{index}"
        namespace[setter] = getattr(cls, field.name).__set__
        if field.default is dataclasses.MISSING:
            args.append(field.name)
        else:
            namespace[f"_default{index}"] = field.default
            args.append(f"{field.name}=_default{index}")
        stores.append(f"        self.{field.name} = {field.name}")
        setters.append(f"        {setter}(self, {field.name})")
    source = (
        f"def __init__(self, {', '.join(args)}):\n"
        "    if type(self) is _cls:\n"
        "        _set_class(self, _twin)\n"
        + "\n".join(stores)
        + "\n        self.__class__ = _cls\n"
        "    else:\n" + "\n".join(setters or ["        pass"])
    )
    exec(source, namespace)
    init = namespace["__init__"]
    init.__qualname__ = f"{cls.__qualname__}.__init__"
    init.__doc__ = cls.__init__.__doc__
    init.__annotations__ = dict(cls.__init__.__annotations__)
    cls.__init__ = init  # type: ignore[method-assign]
    probe = object.__new__(cls)
    _SET_CLASS(probe, twin)  # raises TypeError here if the layouts differ
    _SET_CLASS(probe, cls)
    return cls
