"""Records: dataclasses whose methods are shared, not compiled per class (docs/decisions/0032).

`dataclasses.dataclass` writes each class its own `__init__`, `__repr__`, `__eq__`, `__hash__` and
(frozen) `__setattr__`/`__delattr__` as source text and compiles each with `exec`: about 0.5 ms for
a frozen class on Python 3.11. The 49 record classes a first bridge imports cost 21 ms that way,
two thirds of the cold-start budget. `record` lets `dataclasses` do everything but the compiling
(fields, defaults, `fields()`, `replace()`, `asdict()`, `__match_args__` work as before) and gives
the class the methods below, written once. They read the class's field table, so they behave as
the generated ones do: the same positional and keyword arguments, defaults and default factories,
`repr=False` / `compare=False` fields, `FrozenInstanceError` on assignment, `__post_init__`, and
`__eq__`/`__hash__` over the compared fields for `eq=True` (unhashable unless frozen). Not supported:
`kw_only` fields (refused) and `InitVar`.

Building an instance walks the table in Python rather than running straight-line code: about 1 µs
more per record. Records are built when a model is bound and when a set of hooks is first planned
(`dispatch.py`'s attention routes), not on every forward.
"""

from __future__ import annotations

import dataclasses
import reprlib
from collections.abc import Callable
from operator import attrgetter
from typing import Any, TypeVar, dataclass_transform

T = TypeVar("T", bound=type)

_MISSING = dataclasses.MISSING


class _Table:
    """One record class's fields, read by the shared methods."""

    __slots__ = ("compared", "hashed", "init", "late", "name", "names", "post_init", "repr")

    def __init__(self, cls: type) -> None:
        fields = dataclasses.fields(cls)
        self.name = cls.__qualname__
        # (name, default, factory) in declaration order, parents' first: the positional order
        self.init = tuple((f.name, f.default, f.default_factory) for f in fields if f.init)
        self.late = tuple((f.name, f.default, f.default_factory) for f in fields if not f.init)
        self.names = frozenset(name for name, _, _ in self.init)
        self.repr = tuple(f.name for f in fields if f.repr)
        compared = [f.name for f in fields if f.compare]
        hashed = [f.name for f in fields if (f.compare if f.hash is None else f.hash)]
        self.compared = _getter(compared)
        self.hashed = _getter(hashed)
        self.post_init = hasattr(cls, "__post_init__")
        keyword_only = [f.name for f in fields if f.kw_only is True]
        if keyword_only:  # not needed so far; refused rather than taken positionally
            raise TypeError(f"{cls.__qualname__}: record does not support kw_only fields ({', '.join(keyword_only)})")


def _getter(names: list[str]) -> Callable[[Any], tuple]:
    """The tuple of these attributes (`attrgetter` of one name returns the value, not a 1-tuple)."""
    if len(names) == 1:
        one = attrgetter(names[0])
        return lambda obj: (one(obj),)
    if not names:
        return lambda obj: ()
    return attrgetter(*names)


def _init(self: Any, *args: Any, **kwargs: Any) -> None:
    table: _Table = type(self).__record__
    fields = table.init
    if len(args) > len(fields):
        most = len(fields) + 1  # counting self, as Python's own message does
        least = 1 + sum(default is _MISSING and factory is _MISSING for _, default, factory in fields)
        takes = f"{most}" if least == most else f"from {least} to {most}"
        plural = "s" if most > 1 else ""
        given = f"{len(args) + 1} {'was' if len(args) == 0 else 'were'} given"
        raise TypeError(f"{table.name}.__init__() takes {takes} positional argument{plural} but {given}")
    put = object.__setattr__
    for (name, _, _), value in zip(fields, args, strict=False):
        put(self, name, value)
    missing = []
    for name, default, factory in fields[len(args) :]:
        if name in kwargs:
            value = kwargs.pop(name)
        elif factory is not _MISSING:
            value = factory()
        elif default is not _MISSING:
            value = default
        else:
            missing.append(f"'{name}'")
            continue
        put(self, name, value)
    if missing:
        listed = (
            missing[0]
            if len(missing) == 1
            else ", ".join(missing[:-1]) + f"{',' * (len(missing) > 2)} and {missing[-1]}"
        )
        plural = "s" if len(missing) > 1 else ""
        raise TypeError(
            f"{table.name}.__init__() missing {len(missing)} required positional argument{plural}: {listed}"
        )
    if kwargs:
        name = next(iter(kwargs))
        if name in table.names:
            raise TypeError(f"{table.name}.__init__() got multiple values for argument '{name}'")
        raise TypeError(f"{table.name}.__init__() got an unexpected keyword argument '{name}'")
    for name, default, factory in table.late:
        if factory is not _MISSING:
            put(self, name, factory())
        elif default is not _MISSING:
            put(self, name, default)
    if table.post_init:
        self.__post_init__()


@reprlib.recursive_repr()
def _repr(self: Any) -> str:
    table: _Table = type(self).__record__
    return f"{type(self).__qualname__}({', '.join(f'{n}={getattr(self, n)!r}' for n in table.repr)})"


def _eq(self: Any, other: Any) -> bool:
    if other.__class__ is not self.__class__:
        return NotImplemented
    compared = type(self).__record__.compared
    return compared(self) == compared(other)


def _hash(self: Any) -> int:
    return hash(type(self).__record__.hashed(self))


def _frozen_setattr(self: Any, name: str, value: Any) -> None:
    raise dataclasses.FrozenInstanceError(f"cannot assign to field '{name}'")


def _frozen_delattr(self: Any, name: str) -> None:
    raise dataclasses.FrozenInstanceError(f"cannot delete field '{name}'")


@dataclass_transform(field_specifiers=(dataclasses.field,))
def record(cls: T | None = None, /, *, frozen: bool = False, eq: bool = True, repr: bool = True) -> Any:
    """`@dataclass` with the same meaning of `frozen`, `eq` and `repr`, and nothing compiled.

    A method the class defines itself (a hand-written `__repr__`) is kept, as `dataclass` keeps it.
    """

    def wrap(cls: T) -> T:
        own = dict(cls.__dict__)
        # a `__hash__ = None` Python put there because the class wrote `__eq__` is not a choice
        explicit_hash = "__hash__" in own and not (own["__hash__"] is None and "__eq__" in own)
        cls = dataclasses.dataclass(cls, init=False, repr=False, eq=False)  # fields only
        cls.__record__ = _Table(cls)
        methods: dict[str, Any] = {"__init__": _init}
        if repr:
            methods["__repr__"] = _repr
        if eq:
            methods["__eq__"] = _eq
        if frozen:
            methods["__setattr__"] = _frozen_setattr
            methods["__delattr__"] = _frozen_delattr
        for name, method in methods.items():
            if name not in own:
                setattr(cls, name, method)
        if eq and not explicit_hash:
            cls.__hash__ = _hash if frozen else None  # as dataclass: mutable and compared by value
        return cls

    return wrap if cls is None else wrap(cls)
