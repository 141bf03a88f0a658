"""The hooks of one module for a call whose points there only read (decision 0030).

`run_with_cache` attaches only the cache's own function, which stores the tensor and edits nothing.
For such a call the general hooks of `module_hooks._ModuleHooks` (phases, gates, the kind of each
place, `_run_viewed`'s edit checks) do work that cannot matter, once per point, 39 points per
forward on tiny GPT-2. `ModuleReads` is the same module's hooks with that decided once: built with
the plan from the places (which never change), and chosen by the session for a call when every
point run there only reads (`applies`, after the plan is filled and learned clones are marked).

What a reads-only point does is unchanged: its functions see the same view of HF's own tensor,
the tensor's version goes on the forward's watch (`module_hooks._read`), and norm values go through
`_ModuleHooks._norm` (deferred or computed, never edited). Adjacent q/k/v heads of one fused
projection are taken out by one `unflatten` + `unbind` instead of a `narrow` + `unflatten` each:
the same storage, offsets and strides, so the same tensors.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .module_hooks import _ModuleHooks, _plain_view, _PointRun, _read, _reads_only
from .places import ModuleInput, ModuleOutput, NormValue, SplitHeads, select_output

_OUT, _SPLIT, _NORM = 0, 1, 2  # what an output item reads: one view, adjacent heads, the norm's values


class ModuleReads:
    """The reads-only pre-hook and forward hook of one module (see the module docstring)."""

    __slots__ = ("general", "inputs", "outputs", "runs")

    def __init__(self, general: _ModuleHooks) -> None:
        self.general = general  # the same points' general hooks: taken over if a point is learned mid-call
        self.runs = tuple(run for _, run in general.inputs + general.outputs)
        self.inputs = tuple((place.arg, place.kwarg, place.view, run) for place, run in general.inputs)
        self.outputs = _output_items(general.outputs)

    @staticmethod
    def possible(general: _ModuleHooks) -> bool:
        """Whether the places allow it: every call acts (no phase, no reimplement gate), each place a module's
        input, output or norm value, each view a plain true view."""
        if general.phase is not None or general.gate is not None:
            return False
        for place, _ in general.inputs + general.outputs:
            if isinstance(place, NormValue):
                continue  # `_norm` with functions that only read never edits
            if not isinstance(place, (ModuleInput, ModuleOutput)) or not _plain_view(place.view):
                return False
        return True

    def applies(self) -> bool:
        """Whether every point here only reads on this call (the plan is filled, learned clones marked)."""
        return all(_reads_only(run) for run in self.runs)

    def _learned(self) -> bool:
        # A long generate learns points while it runs (hook_values.Watch.add): those need the general hooks' copy.
        return any(run.clone for run in self.runs)

    def pre_hook(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        if self._learned():
            return self.general.pre_hook(module, args, kwargs)
        for arg, kwarg, view, run in self.inputs:
            tensor = kwargs[kwarg] if kwarg in kwargs else args[arg]
            _read(run, tensor if view is None else view(tensor))
        return None

    def post_hook(self, module: nn.Module, args: tuple, kwargs: dict, output: Any) -> Any:
        if self._learned():
            return self.general.post_hook(module, args, kwargs, output)
        for what, index, view, run in self.outputs:
            if what == _OUT:
                tensor = select_output(output, index)
                _read(run, tensor if view is None else view(tensor))
            elif what == _SPLIT:
                _read_split(select_output(output, index), view, run)
            else:
                self.general._norm(view, run, args, kwargs, select_output(output, None))
        return None


def _read_split(tensor: torch.Tensor, views: tuple[SplitHeads, ...], runs: tuple[_PointRun, ...]) -> None:
    """Adjacent equal head groups tiling the whole last dim: one unflatten and one unbind for all of them."""
    first = views[0]
    if tensor.shape[-1] == len(views) * first.n_heads * first.d_head:
        parts = tensor.unflatten(-1, (len(views), first.n_heads, first.d_head)).unbind(-3)
        for run, shown in zip(runs, parts, strict=True):
            _read(run, shown)
        return
    for view, run in zip(views, runs, strict=True):  # a last dim wider than the heads: each view alone
        _read(run, view(tensor))


def _output_items(outputs: list[tuple[Any, _PointRun]]) -> tuple[tuple[int, Any, Any, Any], ...]:
    """`(what, output index, view(s) or norm place, run(s))` in the order the general hook reads them."""
    items: list[tuple[int, Any, Any, Any]] = []
    norms_done = False
    i = 0
    while i < len(outputs):
        place, run = outputs[i]
        if isinstance(place, NormValue):
            if not norms_done:  # scale and normalized are one computation, at the first norm place
                norms_done = True
                runs = {p.which: r for p, r in outputs if isinstance(p, NormValue)}
                items.append((_NORM, None, place, runs))
            i += 1
            continue
        group = _adjacent_heads(outputs, i)
        if len(group) > 1:
            views = tuple(p.view for p, _ in group)
            items.append((_SPLIT, place.index, views, tuple(r for _, r in group)))
            i += len(group)
            continue
        items.append((_OUT, place.index, place.view, run))
        i += 1
    return tuple(items)


def _adjacent_heads(outputs: list[tuple[Any, _PointRun]], start: int) -> list[tuple[Any, _PointRun]]:
    """The places from `start` on that split one output's last dim into consecutive equal head groups from 0
    (GPT-2's q, k, v from `c_attn`); fewer than two: no group."""
    group: list[tuple[Any, _PointRun]] = []
    first = outputs[start][0]
    for place, run in outputs[start:]:
        view = place.view
        if not (
            isinstance(place, ModuleOutput)
            and place.index == first.index
            and isinstance(view, SplitHeads)
            and not view.whole
            and (view.n_heads, view.d_head) == (first.view.n_heads, first.view.d_head)
            and view.start == len(group) * view.n_heads * view.d_head
        ):
            break
        group.append((place, run))
    return group
