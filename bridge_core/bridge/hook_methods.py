"""Hook registration on a bridge: hook names, `add_hook` / `reset_hooks` (permanent hooks too), and
the `hooks()` context. A mixin of `Bridge`; what runs the hooks on a call is `dispatch.HookSession`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any

from ..errors import HookNameError, InputError, close_matches
from .hook_points import Direction, HookEntry, HookFunction, HookPoint
from .places import ModuleOutput

NameOrFilter = str | Callable[[str], bool]


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
        """Remove every hook added with `add_hook` (and by any open `hooks()` context), keeping the
        permanent ones unless `including_permanent` (TransformerLens's default)."""
        if including_permanent:
            self._permanent.clear()
        self._entries = [entry for entry in self._entries if id(entry) in self._permanent]

    @contextmanager
    def hooks(
        self,
        fwd_hooks: Iterable[tuple[NameOrFilter, HookFunction]] = (),
        bwd_hooks: Iterable[tuple[NameOrFilter, HookFunction]] = (),
        reset_hooks_end: bool = True,
    ) -> Iterator[Any]:
        """Hooks attached for the body of a `with` block; at its end exactly those are removed (hooks
        added with `add_hook` inside the block stay, as in TransformerLens)."""
        mine: list[HookEntry] = []
        for direction, pairs in (("fwd", fwd_hooks), ("bwd", bwd_hooks)):
            for name, fn in _pairs(pairs, f"{direction}_hooks"):
                mine = self._add(mine, name, fn, direction, False)
        self._entries = [*self._entries, *mine]
        try:
            yield self
        finally:
            if reset_hooks_end:
                ids = {id(entry) for entry in mine}
                self._entries = [entry for entry in self._entries if id(entry) not in ids]


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
