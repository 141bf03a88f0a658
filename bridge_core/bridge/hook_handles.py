"""HookedTransformer's hook points as attributes: `bridge.blocks[0].attn.hook_z.add_hook(fn)`.

A `HookHandle` stands for one bridge hook point; its `add_hook` / `remove_hooks` only edit the
bridge's own hook entries (no PyTorch hook exists until a call), so they obey `reset_hooks` too.
"""

from __future__ import annotations

from typing import Any

from .hook_points import Direction, HookFunction, HookPoint


class HookHandle:
    """The bridge's hook point `name`, with TransformerLens's `HookPoint` methods."""

    def __init__(self, bridge: Any, point: HookPoint) -> None:
        self._bridge = bridge
        self.point = point

    @property
    def name(self) -> str:
        return self.point.name

    @property
    def ctx(self) -> dict[str, Any]:
        return self.point.ctx

    def layer(self) -> int:
        return self.point.layer()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.__dict__["point"], name)

    def add_hook(
        self,
        hook: HookFunction,
        dir: Direction = "fwd",
        is_permanent: bool = False,
        level: int | None = None,
        prepend: bool = False,
    ) -> None:
        """Attach `hook(tensor, hook_point)` here until removed (as `bridge.add_hook(self.name, ...)`)."""
        # `level` is TransformerLens's context bookkeeping; the bridge's `hooks()` context tracks its own entries
        self._bridge.add_hook(self.point.name, hook, dir=dir, prepend=prepend, is_permanent=is_permanent)

    def remove_hooks(self, dir: str = "fwd", including_permanent: bool = False, level: int | None = None) -> None:
        """Remove this point's hooks in direction `dir` ("fwd", "bwd" or "both"), permanent ones only if asked."""
        if dir not in ("fwd", "bwd", "both"):
            raise ValueError(f"dir must be 'fwd', 'bwd' or 'both', got {dir!r}")
        bridge = self._bridge
        kept = []
        for entry in bridge._entries:
            mine = entry.point is self.point and dir in ("both", entry.direction)
            if mine and (including_permanent or id(entry) not in bridge._permanent):
                bridge._permanent.discard(id(entry))
                continue
            kept.append(entry)
        bridge._entries = kept

    def __repr__(self) -> str:
        return f"HookPoint({self.point.name!r})"


class HookScope:
    """A level of the hook name tree (`ln_final`, `blocks.0.ln1` ...) whose `hook_*` attributes are handles."""

    def __init__(self, bridge: Any, prefix: str, weights: Any = None) -> None:
        self._bridge = bridge
        self._prefix = prefix
        self._weights = weights  # weight views (`w`, `b`) of the same component, when it has them

    def __getattr__(self, name: str) -> Any:
        if name.startswith("hook_"):
            return hook_attribute(self.__dict__["_bridge"], self.__dict__["_prefix"], name)
        weights = self.__dict__.get("_weights")
        if weights is not None:
            return getattr(weights, name)
        raise AttributeError(f"'{self.__dict__['_prefix']}' has no attribute '{name}'")

    def __repr__(self) -> str:
        return f"HookScope({self._prefix!r})"


def hook_attribute(bridge: Any, prefix: str, name: str) -> HookHandle:
    """The handle of hook point `prefix.name` (or `name` at the top), an AttributeError if there is none."""
    full = f"{prefix}.{name}" if prefix else name
    point = bridge.__dict__.get("_points", {}).get(full)
    if point is None:
        raise AttributeError(f"this model has no hook point '{full}'")
    return handle(bridge, point)


def handle(bridge: Any, point: HookPoint) -> HookHandle:
    """One handle per point, kept on the bridge, so `hook_dict[n] is bridge.blocks[i]...` holds."""
    handles = bridge.__dict__.setdefault("_handles", {})
    found = handles.get(id(point))
    if found is None or found.point is not point:
        found = handles[id(point)] = HookHandle(bridge, point)
    return found


def attach(bridge: Any) -> None:
    """Let the weight views of each block answer `hook_*` attributes with the block's hook points."""
    stacks = (
        [("blocks", bridge.blocks)]
        if bridge.encoder is None
        else [("encoder", bridge.encoder), ("decoder", bridge.blocks)]
    )
    for stack, views in stacks:
        for index, block in enumerate(views):
            prefix = f"{stack}.{index}"
            block._hook_prefix = (bridge, prefix)
            for part in ("attn", "mlp", "ln1", "ln2", "ln3", "cross_attn"):
                view = getattr(block, part, None)
                if view is not None:
                    view._hook_prefix = (bridge, f"{prefix}.{part}")
