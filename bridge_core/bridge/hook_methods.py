"""Hook registration on a bridge: hook names, `add_hook` / `reset_hooks` (permanent hooks too), and
the `hooks()` context. A mixin of `Bridge`; what runs the hooks on a call is `dispatch.HookSession`.
`add_hook` entries are bridge-wide (every thread's calls run them); a `hooks()` context's entries are
the calling thread's (context's) only, kept in a context variable.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from types import MappingProxyType
from typing import Any

from ..errors import HookNameError, InputError, close_matches
from .hook_points import Direction, HookEntry, HookFunction, HookPoint
from .places import ModuleOutput

NameOrFilter = str | Callable[[str], bool]

# id(bridge) -> the entries of the `hooks()` contexts open in this context (thread, task). An open
# context holds its bridge, so an id here never names another bridge.
_LOCAL: ContextVar[Mapping[int, tuple[HookEntry, ...]]] = ContextVar(
    "bridge_core_local_hooks", default=MappingProxyType({})
)
_ENTRIES_LOCK = threading.Lock()  # add_hook / reset_hooks from several threads: no lost update


class HookMethods:
    """Needs `model`, `_points`, `_module_points`, `_entries` and `_permanent` (set by `Bridge`)."""

    model: Any
    _points: dict[str, HookPoint]
    _module_points: dict[str, HookPoint]
    _entries: list[HookEntry]
    _permanent: set[int]

    def hook_names(self) -> list[str]:
        """Every hook point guaranteed to fire once on a plain forward, in the order they fire."""
        return list(self._points)

    @property
    def hook_dict(self) -> dict[str, HookPoint]:
        return dict(self._points)

    def hook_point(self, name: str) -> HookPoint:
        """The point called `name`: a hook name, or any HF module path (its output)."""
        point = self._points.get(name) or self._module_points.get(name)
        if point is not None:
            return point
        if name:
            module = dict(self.model.named_modules()).get(name)
            if module is not None:
                point = self._module_points[name] = HookPoint(name, ModuleOutput(module, name))
                return point
        raise HookNameError(name, close_matches(name, list(self._points)))

    def _select(self, name: NameOrFilter) -> list[HookPoint]:
        if callable(name):
            return [p for n, p in self._points.items() if name(n)]
        return [self.hook_point(name)]

    def add_hook(
        self,
        name: NameOrFilter,
        hook: HookFunction,
        dir: Direction = "fwd",
        prepend: bool = False,
        is_permanent: bool = False,
    ) -> None:
        """Attach `hook(tensor, hook_point)` to a point (or every point a filter accepts) until reset.

        A permanent hook survives `reset_hooks()` unless it is called with `including_permanent=True`.
        """
        new = self._add([], name, hook, dir, prepend)
        with _ENTRIES_LOCK:
            if is_permanent:
                self._permanent.update(id(entry) for entry in new)
            self._entries = new + self._entries if prepend else self._entries + new

    def _add(
        self, entries: list[HookEntry], name: NameOrFilter, hook: HookFunction, direction: str, prepend: bool
    ) -> list[HookEntry]:
        if direction not in ("fwd", "bwd"):
            raise InputError(f"dir must be 'fwd' or 'bwd', got {direction!r}")
        if not (isinstance(name, str) or callable(name)):
            got = f"{type(name).__name__} {name!r}"
            raise InputError(f"a hook is added by name (str) or by a filter function, got {got}")
        if not callable(hook):
            # refused here: a non-callable on the bridge would break every later call
            raise InputError(
                f"the hook for {name if isinstance(name, str) else 'a name filter'!r} must be a function "
                f"fn(tensor, hook), got {type(hook).__name__} {hook!r}"
            )
        new = [HookEntry(point, hook, direction) for point in self._select(name)]
        return new + entries if prepend else entries + new

    def reset_hooks(self, including_permanent: bool = False) -> None:
        """Remove every hook added with `add_hook` (and by the calling thread's open `hooks()` contexts),
        keeping the permanent ones unless `including_permanent` (TransformerLens's default)."""
        with _ENTRIES_LOCK:
            if including_permanent:
                self._permanent.clear()
            self._entries = [entry for entry in self._entries if id(entry) in self._permanent]
        self._set_local(())

    def _local_entries(self) -> tuple[HookEntry, ...]:
        """The entries of the `hooks()` contexts open in the calling thread (context)."""
        return _LOCAL.get().get(id(self), ())

    def _set_local(self, entries: tuple[HookEntry, ...]) -> None:
        local = {**_LOCAL.get(), id(self): entries}
        if not entries:
            del local[id(self)]
        _LOCAL.set(local)

    @contextmanager
    def hooks(
        self,
        fwd_hooks: Iterable[tuple[NameOrFilter, HookFunction]] = (),
        bwd_hooks: Iterable[tuple[NameOrFilter, HookFunction]] = (),
        reset_hooks_end: bool = True,
    ) -> Iterator[Any]:
        """Hooks attached for the body of a `with` block, for calls made by this thread only; at its end
        exactly those are removed (hooks added with `add_hook` inside the block stay, as in
        TransformerLens). With `reset_hooks_end=False` they then stay bridge-wide, as `add_hook` ones."""
        mine: list[HookEntry] = []
        for direction, pairs in (("fwd", fwd_hooks), ("bwd", bwd_hooks)):
            for name, fn in _pairs(pairs, f"{direction}_hooks"):
                mine = self._add(mine, name, fn, direction, False)
        self._set_local((*self._local_entries(), *mine))
        try:
            yield self
        finally:
            ids = {id(entry) for entry in mine}
            still = [entry for entry in self._local_entries() if id(entry) in ids]  # unless reset_hooks ran
            self._set_local(tuple(entry for entry in self._local_entries() if id(entry) not in ids))
            if not reset_hooks_end:
                with _ENTRIES_LOCK:
                    self._entries = [*self._entries, *still]


def _pairs(pairs: Any, what: str) -> list[tuple[Any, Any]]:
    """`pairs` as a list of `(name, fn)` pairs, or an `InputError` showing the item that is not one."""
    if isinstance(pairs, (str, bytes)) or (isinstance(pairs, tuple) and len(pairs) == 2 and callable(pairs[1])):
        raise InputError(f"{what} must be a list of (name, fn) pairs, got a single {type(pairs).__name__} {pairs!r}")
    try:
        items = list(pairs)
    except TypeError:
        raise InputError(f"{what} must be a list of (name, fn) pairs, got {type(pairs).__name__}") from None
    for index, item in enumerate(items):
        if not isinstance(item, (tuple, list)) or len(item) != 2:
            raise InputError(f"{what}[{index}] must be a (name, fn) pair, got {item!r}")
    return [(name, fn) for name, fn in items]
