"""Checking a registered kind against its contract (kinds.py): every callable the core will call is
bound to a call shaped exactly as the core makes it. Called once per kind by the plugin host: a
plugin's kinds when collected, a built-in kind at its first lookup.
"""

from __future__ import annotations

import inspect
import sys
import types
import typing
from typing import Any, Protocol


class _AnyAttributes:
    """Stands for `torch`/`nn` in the contracts' annotations: every name reads as `Any`."""

    def __getattr__(self, name: str) -> object:
        return Any


def _type_hints(obj: object) -> dict[str, Any]:
    """`typing.get_type_hints` without loading torch: `kinds.py` names torch in annotations only, and the
    check needs only which members are callables, so a torch type is as good as `Any` here."""
    return typing.get_type_hints(obj, localns={"torch": _AnyAttributes(), "nn": _AnyAttributes()})


def contract_problems(kind: object, contract: type) -> list[str]:
    """Why `kind` does not fit `contract` (a Protocol or record class above); empty when it fits.

    Every callable the core calls is bound (`inspect.Signature.bind`) to a call shaped exactly as
    the core makes it (positional or keyword, as the Protocol declares), so a kind that would fail
    at call time fails here. Called by the plugin host once per registered kind.
    """
    if _is_callable_contract(contract):
        problem = _call_problem(kind, contract.__call__)  # type: ignore[operator]
        return [f"does not fit {contract.__name__}: {problem}"] if problem else []
    problems: list[str] = []
    hints = _type_hints(contract)
    methods = {}
    for member, value in vars(contract).items():
        if isinstance(value, property) and value.fget is not None:
            hints[member] = _type_hints(value.fget).get("return", Any)
        elif inspect.isfunction(value) and not member.startswith("_"):
            methods[member] = value
    for member, hint in hints.items():
        if not hasattr(kind, member):
            problems.append(f"has no '{member}' ({contract.__name__})")
            continue
        value = getattr(kind, member)
        fitting, optional = _callable_in(hint)
        if fitting is None or (value is None and optional):
            continue
        problem = "is None" if value is None else _call_problem(value, fitting.__call__)
        if problem:
            problems.append(f"'{member}' does not fit {fitting.__name__}: {problem}")
    for member, template in methods.items():
        problem = _call_problem(getattr(kind, member, None), template)
        if problem:
            problems.append(f"'{member}' does not fit {contract.__name__}.{member}: {problem}")
    return problems


def _is_callable_contract(t: object) -> bool:
    return isinstance(t, type) and Protocol in t.__mro__ and "__call__" in vars(t)


def _callable_in(hint: Any) -> tuple[type | None, bool]:
    """The callable Protocol a type hint names (also inside `X | None`) and whether None is allowed."""
    args = typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, types.UnionType) else (hint,)
    found = next((a for a in args if _is_callable_contract(a)), None)
    return found, type(None) in args


def _call_problem(function: object, template: Any) -> str | None:
    """None if `function` accepts the call `template` (a Protocol method, `self` first) describes."""
    if not callable(function):
        return f"{function!r} is not callable"
    # An nn.Module's __call__ takes anything; its forward says what it really accepts.
    nn = sys.modules.get("torch.nn")  # an nn.Module exists only once torch is loaded: never load it here
    target = function.forward if nn is not None and isinstance(function, nn.Module) else function
    params = list(inspect.signature(template).parameters.values())[1:]
    positional = [p.name for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    keywords = [p.name for p in params if p.kind is p.KEYWORD_ONLY]
    try:
        signature = inspect.signature(target)
    except (TypeError, ValueError):  # builtins without introspectable signatures: nothing to check
        return None
    try:
        signature.bind(*positional, **dict.fromkeys(keywords))
    except TypeError as exc:
        call = ", ".join([*positional, *(["*"] if keywords else []), *keywords])
        return f"cannot be called as ({call}): {exc}"
    return None
