"""Hook points as users see them: a name, a place, and the hook functions attached to it.

A `HookPoint` is the `hook` argument of every hook function (`fn(tensor, hook)`), as in
TransformerLens: it has `.name`, `.layer()` and a `.ctx` dict that lives as long as the bridge.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import torch

from .places import Place

HookFunction = Callable[[torch.Tensor, "HookPoint"], torch.Tensor | None]
Direction = Literal["fwd", "bwd"]

_LAYER = re.compile(r"(?:^|\.)(\d+)\.")


@dataclass(eq=False)
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


@dataclass(frozen=True)
class HookEntry:
    """One hook function attached to one point, forward or backward."""

    point: HookPoint
    fn: HookFunction
    direction: Direction = "fwd"
