"""Tensor-parallel models (transformers `tp_plan`): hook points keep showing global heads and neurons.

Between a colwise projection's output and the next rowwise projection's input each rank holds only its
own heads or MLP neurons. `shard_points` wraps the views of those points in `Sharded`, which gathers the
full tensor across the group only when a hook runs there, and writes an edit back as this rank's slice.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.tensor import DTensor

from ..errors import BridgeCoreError
from ..records import record
from ..transformers_internals import tensor_parallel_plan
from .hook_points import HookPoint
from .places import AttentionValue, HeadResult, ModuleInput, ModuleOutput, View

# Styles whose output holds this rank's slice of the last dim, and whose input must be one.
_LOCAL_OUTPUT = {"colwise", "packed_colwise"}
_LOCAL_INPUT = {"rowwise", "packed_rowwise"}
# Where attention values hold their heads: scores / pattern `[b, h, q, k]`, rot_q / rot_k `[b, q, h, d]`.
_HEAD_DIM = {"scores": 1, "pattern": 1, "rot_q": -2, "rot_k": -2}


class TensorParallelError(BridgeCoreError, ValueError):
    """A tensor-parallel model the bridge cannot show whole (a width that does not split evenly)."""


@record(frozen=True, eq=False)
class Sharded(View):
    """A rank's slice of a tensor split along `dim` across `group`, shown whole through `inner`.

    Not a true view: the session calls `gather` (a collective: every rank must run the same hooks),
    runs the hooks on `inner` of the full tensor, and keeps `local` of an edited one.
    """

    inner: View | None
    dim: int
    group: Any

    def __call__(self, base: torch.Tensor) -> torch.Tensor:
        full = self.gather(base)
        return full if self.inner is None else self.inner(full)

    def gather(self, local: torch.Tensor) -> torch.Tensor:
        world = dist.get_world_size(self.group)
        local = local.contiguous()
        if local.requires_grad:  # autograd-aware collective: gradients reach this rank's slice
            import torch.distributed.nn.functional as dist_fn

            parts = dist_fn.all_gather(local, group=self.group)
        else:
            parts = [torch.empty_like(local) for _ in range(world)]
            dist.all_gather(parts, local, group=self.group)
        return torch.cat(list(parts), dim=self.dim)

    def local(self, full: torch.Tensor) -> torch.Tensor:
        world, rank = dist.get_world_size(self.group), dist.get_rank(self.group)
        return full.chunk(world, dim=self.dim)[rank].contiguous()


def _style_of(plan: dict[str, str], path: str) -> str | None:
    for pattern, style in plan.items():
        if re.fullmatch(re.escape(pattern).replace(r"\*", r"\d+"), path):
            return style
    return None


def local_parameter(module: nn.Module, name: str, whole: Callable[[nn.Module, str], Any]) -> Any:
    """This rank's shard of `module.<name>` when it is a DTensor, else `whole(module, name)`."""
    tensor = getattr(module, name, None)
    return tensor.to_local() if isinstance(tensor, DTensor) else whole(module, name)


def shard_points(model: nn.Module, points: dict[str, HookPoint]) -> dict[str, HookPoint]:
    """`points` with `Sharded` views where a tensor-parallel `model` holds local heads or neurons there;
    unchanged for any other model."""
    found = tensor_parallel_plan(model)
    if found is None:
        return points
    plan, group = found
    world = dist.get_world_size(group)
    paths = {id(m): p for p, m in model.named_modules()}
    styles = {key: _style_of(plan, path) for key, path in paths.items()}

    def sharded(module: nn.Module, styles_here: set[str], width: str | None) -> bool:
        if styles.get(id(module)) not in styles_here:
            return False
        size = getattr(module, width, None) if width is not None else None
        if size is not None and size % world:
            raise TensorParallelError(f"{paths[id(module)]}: width {size} does not split evenly across {world} ranks")
        return True

    def attention_sharded(module: nn.Module) -> bool:
        return any(styles.get(id(sub)) in _LOCAL_OUTPUT for sub in module.children())

    for point in points.values():
        place = point.place
        new = None
        # colwise outputs and rowwise inputs: this rank's slice of the last dim (heads or neurons)
        local_output = isinstance(place, ModuleOutput) and sharded(place.module, _LOCAL_OUTPUT, "out_features")
        if local_output or (isinstance(place, ModuleInput) and sharded(place.module, _LOCAL_INPUT, "in_features")):
            new = dataclasses.replace(place, view=Sharded(place.view, -1, group))
        elif isinstance(place, HeadResult) and sharded(place.module, _LOCAL_INPUT, None):
            new = dataclasses.replace(place, view=Sharded(None, -2, group))
        elif isinstance(place, AttentionValue) and attention_sharded(place.module):
            new = dataclasses.replace(place, view=Sharded(None, _HEAD_DIM[place.which], group))
        if new is not None:
            point.place = new
    return points
