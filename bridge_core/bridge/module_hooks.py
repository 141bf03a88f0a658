"""What runs at each hooked module during a forward: a point's functions applied to a tensor, edits
written back, norm values and head results recomputed (the session that registers these hooks is
`dispatch.py`).

`_PointRun` holds one point's forward and backward functions for a call; `_run_viewed` shows them a
view of HF's tensor and returns a replacement only when something was edited (by return value, by
the version counter, or for inference tensors by comparing bits with a copy), so an unedited
tensor stays HF's own. `_ModuleHooks` is the one forward pre-hook and forward hook of one module.
When a point's functions are only the cache's own (they read), no edit is possible and the checks
are skipped.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..errors import HookShapeError as HookShapeError  # imported from here by older code
from .hook_points import HookPoint, checked_return, same_bits
from .hook_values import Watch
from .moe import MoEPlace, moe_output
from .norm_values import DeferredNorms
from .places import (
    HeadResult,
    ModuleInput,
    ModuleOutput,
    NormValue,
    Place,
    Scaled,
    select_output,
)
from .reimplement import ReimplementRun
from .tensor_parallel import Sharded, local_parameter
from .weights import materialize


class _PointRun:
    """The fwd and bwd functions of one hook point, applied to one tensor."""

    __slots__ = ("bwd", "clone", "fwd", "point", "watched", "writes")

    def __init__(self, point: HookPoint) -> None:
        self.point = point
        self.fwd: list = []
        self.bwd: list = []
        self.writes = False  # whether any fwd function may edit (the bridge's own cache functions only read)
        self.clone = False  # HF changes this point's tensor in place later: hooks get a copy (hook_values.py)
        self.watched: Watch | None = None  # this forward's hooked tensors, checked when it is over

    def apply(self, tensor: torch.Tensor) -> tuple[torch.Tensor, bool]:
        """Run the forward functions; returns the (possibly new) tensor and whether it was edited."""
        given = tensor = tensor.clone() if self.clone else tensor
        # Inference tensors have no version counter: an in-place edit is seen by comparing with a copy.
        counted = not tensor.is_inference()
        version = tensor._version if counted else 0
        before = tensor.clone() if not counted and self.writes else None
        for fn in self.fwd:
            result = fn(tensor, self.point)
            if result is not None and result is not tensor:
                tensor = checked_return(self.point, result, tensor)
        if tensor is not given:
            return (tensor.clone() if self.clone else tensor), True
        edited = tensor._version != version if counted else before is not None and not same_bits(before, tensor)
        if counted and not edited and not self.clone and self.watched is not None:
            self.watched.add(self, tensor, version)
        return (tensor.clone() if self.clone and edited else tensor), edited

    def attach_backward(self, tensor: torch.Tensor) -> None:
        if not tensor.requires_grad:
            return
        point = self.point
        for fn in self.bwd:

            def on_grad(grad: torch.Tensor, fn=fn) -> torch.Tensor | None:
                result = fn(grad, point)
                return None if result is None or result is grad else checked_return(point, result, grad)

            tensor.register_hook(on_grad)


def _run_viewed(run: _PointRun, base: torch.Tensor, view) -> torch.Tensor | None:
    """Apply a point's hooks to `view(base)`; returns a replacement for `base`, or None if unchanged."""
    if view is None:
        shown, replaces = base, False
    else:
        if isinstance(view, Sharded):  # tensor parallel: hooks see the whole tensor, this rank keeps its slice
            replacement = _run_viewed(run, view.gather(base), view.inner)
            return None if replacement is None else view.local(replacement)
        if isinstance(view, Scaled):
            return _run_scaled(run, base, view)
        shown, replaces = view(base), getattr(view, "replaces_base", False)
    if not (run.writes or run.bwd or run.clone or replaces):  # only the cache's own functions: no edit possible
        _read(run, shown)
        return None
    if run.bwd or replaces:
        shown = shown.clone()  # a tensor of our own: its gradient can be hooked, in-place edits are safe
    new, edited = run.apply(shown)
    run.attach_backward(new)
    if not edited and not run.bwd:
        return None
    if view is None or replaces:
        return new
    replacement = base.clone()
    view.write(replacement, new)
    return replacement


def _read(run: _PointRun, shown: torch.Tensor) -> None:
    """A point whose functions only read: they see the tensor, and its version goes on the forward's
    watch (decision 0017), so a later in-place change by HF is still found."""
    point = run.point
    for fn in run.fwd:
        fn(shown, point)
    if run.watched is not None and not shown.is_inference():
        run.watched.add(run, shown, shown._version)


def _reads_only(run: _PointRun) -> bool:
    """Whether a point's functions this call are only the cache's own: nothing to clone, compare or write back."""
    return not (run.writes or run.bwd or run.clone)


def _run_scaled(run: _PointRun, base: torch.Tensor, view: Scaled) -> torch.Tensor | None:
    """Hooks on `base * factor` (a product of our own); an edit goes back as `edit / factor`, for HF to
    multiply again. A replacement equal to the product bit for bit is no edit: HF's tensor stays."""
    new, edited = run.apply(view(base))
    run.attach_backward(new)
    if not run.bwd and (not edited or same_bits(new, view(base))):
        return None
    if edited:
        value = new / view.factor
    else:  # only backward hooks: HF's values exactly, with the gradient routed through the hooked product
        value = (base if view.inner is None else view.inner(base)) + (new - new.detach()) / view.factor
    if view.inner is None:
        return value.to(base.dtype)
    replacement = base.clone()
    view.inner(replacement).copy_(value)
    return replacement


def _replace(output: Any, index: int | None, value: torch.Tensor) -> Any:
    if isinstance(output, torch.Tensor):
        return value
    position = 0 if index is None else index
    items = list(output)
    items[position] = value
    return items if isinstance(output, list) else tuple(items)  # a list stays a list (OpenAI GPT)


class PhaseCell:
    """Whether this call's forward has run a block yet (`Phase`): set by pre-hooks on the token embedding (no) and
    on every block (yes), reset when a plan is filled."""

    def __init__(self) -> None:
        self.after_blocks = False

    def before(self, *args: Any) -> None:
        self.after_blocks = False

    def after(self, *args: Any) -> None:
        self.after_blocks = True


class _ModuleHooks:
    """Every active point placed on one module, in the order the points were bound."""

    def __init__(self, module: nn.Module) -> None:
        self.module = module
        self.inputs: list[tuple[ModuleInput, _PointRun]] = []
        self.outputs: list[tuple[Place, _PointRun]] = []
        self.gate: ReimplementRun | None = None  # held back during a reimplemented module's original forward
        self.deferred: DeferredNorms | None = None  # the plan's norms computed after the forward (norm_values.py)
        self.phase: PhaseCell | None = None  # set by the plan when a place here acts in one role only

    def _acting(self, places: list) -> list:
        """The places acting on this call: all, or those of the role the forward is in (a module in two roles)."""
        if self.phase is None:
            return places
        after = self.phase.after_blocks
        return [(p, r) for p, r in places if getattr(p, "phase", None) is None or (p.phase.role == "final") == after]

    def pre_hook(self, module: nn.Module, args: tuple, kwargs: dict):
        if self.gate is not None and self.gate.original_running:
            return None
        changed = False
        for place, run in self._acting(self.inputs):
            in_kwargs = place.kwarg in kwargs
            tensor = kwargs[place.kwarg] if in_kwargs else args[place.arg]
            replacement = _run_viewed(run, tensor, place.view)
            if replacement is None:
                continue
            if place.in_place:
                if replacement is not tensor:
                    tensor.copy_(replacement)  # HF holds this tensor twice: edit it where it is
                continue
            changed = True
            if in_kwargs:
                kwargs = {**kwargs, place.kwarg: replacement}
            else:
                args = (*args[: place.arg], replacement, *args[place.arg + 1 :])
        return (args, kwargs) if changed else None

    def post_hook(self, module: nn.Module, args: tuple, kwargs: dict, output: Any):
        if self.gate is not None and self.gate.original_running:
            return None
        changed = False
        norms_done = False
        outputs = self._acting(self.outputs)
        for place, run in outputs:
            if isinstance(place, NormValue):
                # scale and normalized are one computation; it runs before any other point on
                # this module (e.g. hook_attn_out on Gemma 2's post-attention norm) sees the output.
                if norms_done:
                    continue
                norms_done = True
                runs = {p.which: r for p, r in outputs if isinstance(p, NormValue)}
                new = self._norm(place, runs, args, kwargs, select_output(output, None))
                if new is not None:
                    output, changed = _replace(output, None, new), True
            elif isinstance(place, ModuleOutput):
                tensor = select_output(output, place.index)
                replacement = _run_viewed(run, tensor, place.view)
                if replacement is not None and replacement is not tensor:
                    output, changed = _replace(output, place.index, replacement), True
            elif isinstance(place, HeadResult):
                new = self._head_result(place, run, args, kwargs)
                if new is not None:
                    output, changed = _replace(output, None, new.to(select_output(output, None).dtype)), True
            elif isinstance(place, MoEPlace):  # router probabilities; experts recomputed (moe.py)
                new = moe_output(place, run, outputs, args, kwargs, output)
                if new is not None:
                    output, changed = new, True
        return output if changed else None

    def _input(self, args: tuple, kwargs: dict) -> torch.Tensor:
        return args[0] if args else next(v for v in kwargs.values() if isinstance(v, torch.Tensor))

    def _norm(self, place: NormValue, runs: dict[str, _PointRun], args, kwargs, output) -> torch.Tensor | None:
        kind = place.kind
        view = place.view
        x = self._input(args, kwargs)
        eps = kind.eps(self.module)
        deferred = self.deferred
        if deferred is not None and view is None and deferred.accepts(kind, x, runs):
            deferred.add(kind, eps, x, runs)  # only the cache reads them: computed after the forward
            return None
        prepared = kind.prepare(x)
        scale = kind.scale(prepared, eps)
        edited = False
        if "scale" in runs:
            new_scale = _run_viewed(runs["scale"], scale, view)
            if new_scale is not None:
                scale, edited = new_scale, True
        if not edited and "normalized" not in runs:
            return None  # only the scale is hooked, and kept: the normalized value is not needed
        normalized = prepared / scale
        if "normalized" in runs:
            new_normalized = _run_viewed(runs["normalized"], normalized, view)
            if new_normalized is not None:
                normalized, edited = new_normalized, True
        if not edited:
            return None
        weight, bias = materialize(self.module, "weight"), materialize(self.module, "bias")
        # HF's output plus what the edit changed (the kind's arithmetic on edited minus unedited
        # values, recomputed since hooks may edit in place): an edit that changes no value gives
        # HF's output bit for bit, whatever its kernel does (fused LayerNorm, rsqrt), in any dtype.
        rebuilt = kind.output(normalized, weight, bias, output.dtype)
        unedited = kind.output(prepared / kind.scale(prepared, eps), weight, bias, output.dtype)
        work = torch.promote_types(output.dtype, torch.float32)
        return (output.to(work) + (rebuilt.to(work) - unedited.to(work))).to(output.dtype)

    def _head_result(self, place: HeadResult, run: _PointRun, args, kwargs) -> torch.Tensor | None:
        # -1 heads: a tensor-parallel rank holds only its own (its z, its rows of W_O)
        z = self._input(args, kwargs).unflatten(-1, (-1, place.d_head))
        weight = local_parameter(self.module, "weight", materialize)  # offloaded: on meta, read from the map
        # W_O as [h, d_head, d_model] (a view of the real parameter).
        w_o = weight if place.layout == "conv1d" else weight.t()
        w_o = w_o.unflatten(0, (-1, place.d_head))
        result = torch.einsum("...hd,hdm->...hm", z, w_o)
        if isinstance(place.view, Sharded):
            result = place.view.gather(result)
        result, edited = run.apply(result)
        run.attach_backward(result)
        if not edited and not run.bwd:
            return None
        out = result.sum(-2)
        bias = local_parameter(self.module, "bias", materialize)  # replicated under tensor parallelism
        return out + bias if bias is not None else out


def _attention_hook(run: _PointRun, view: Sharded | None = None):
    def hook(tensor: torch.Tensor) -> torch.Tensor:
        if view is not None:  # tensor parallel: this rank's heads; hooks see them all
            replacement = _run_viewed(run, tensor, view)
            return tensor if replacement is None else replacement
        if _reads_only(run):  # only the cache reads: nothing to clone or compare
            _read(run, tensor)
            return tensor
        if run.bwd:  # a tensor of our own that the rest of attention uses, so its gradient can be hooked
            tensor = tensor.clone()
        new, _ = run.apply(tensor)
        run.attach_backward(new)
        return new

    return hook
