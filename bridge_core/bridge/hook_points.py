"""Hook points as users see them: a name, a place, and the hook functions attached to it.

A `HookPoint` is the `hook` argument of every hook function (`fn(tensor, hook)`), as in
TransformerLens: it has `.name`, `.layer()` and a `.ctx` dict that lives as long as the bridge.
`checked_return` is the one rule for what a hook function may return, at every kind of point.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import field
from typing import Any, Literal, NamedTuple

import torch

from ..errors import HookDeviceError, HookDtypeError, HookReturnShapeError, HookReturnTypeError
from ..records import record
from .places import Place

HookFunction = Callable[[torch.Tensor, "HookPoint"], torch.Tensor | None]
Direction = Literal["fwd", "bwd"]

_LAYER = re.compile(r"(?:^|\.)(\d+)\.")


@record(eq=False)
class HookPoint:
    """A named place in the model where hook functions run."""

    name: str
    place: Place
    ctx: dict[str, Any] = field(default_factory=dict, repr=False)

    def layer(self) -> int:
        """The block index in the name (`blocks.3.attn.hook_q` -> 3); errors for names without one."""
        match = _LAYER.search(self.name)
        if match is None:
            raise ValueError(f"hook point '{self.name}' is not inside a block")
        return int(match.group(1))

    def __repr__(self) -> str:
        return f"HookPoint({self.name!r})"


class HookEntry(NamedTuple):
    """One hook function attached to one point, forward or backward.

    A named tuple, not a frozen dataclass: `run_with_cache` makes one per cached point on every call, and
    a frozen dataclass's `__init__` costs twice as much (about 1 µs per entry, 39 entries on tiny GPT-2).
    """

    point: HookPoint
    fn: HookFunction
    direction: Direction = "fwd"
    # The bridge's own cache functions: they never edit (no edit check is needed) and store by point
    # name, so calling one again for the same point replaces its value (norm_values.py relies on it).
    reads_only: bool = False


def checked_return(point: HookPoint, result: Any, tensor: torch.Tensor) -> torch.Tensor:
    """`result` as a replacement for `tensor` at `point`, or a typed error naming the point.

    The rule: a tensor of the same shape, on the same device (never meta); a floating tensor of another
    floating dtype is cast to the point's dtype (what an in-place edit would store); any other dtype
    (integer, bool, complex at a floating point) is refused rather than truncated or promoted.
    """
    name = point.name
    if not isinstance(result, torch.Tensor):
        raise HookReturnTypeError(name, type(result).__name__, f"a tensor of shape {tuple(tensor.shape)} or None")
    if result.is_meta and not tensor.is_meta:
        raise HookDeviceError(name, "a meta tensor (it holds no values)", f"a tensor on {tensor.device}")
    if result.shape != tensor.shape:
        raise HookReturnShapeError(name, f"shape {tuple(result.shape)}", f"a tensor of shape {tuple(tensor.shape)}")
    if result.device != tensor.device:
        raise HookDeviceError(
            name, f"a tensor on {result.device}", f"one on {tensor.device}", f"; move it with .to('{tensor.device}')"
        )
    if result.dtype != tensor.dtype:
        if not (result.is_floating_point() and tensor.is_floating_point()):
            raise HookDtypeError(name, f"dtype {result.dtype}", f"{tensor.dtype} (or another floating dtype, cast)")
        result = result.to(tensor.dtype)
    return result


def same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Bitwise equality (NaN equals NaN, -0.0 differs from 0.0): whether an in-place edit changed anything."""
    as_int = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}.get(a.element_size())
    if as_int is None or a.dtype == torch.bool or a.is_complex():
        return torch.equal(a, b)
    return torch.equal(a.view(as_int), b.view(as_int))
