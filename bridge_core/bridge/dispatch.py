"""Running hook functions on a forward: PyTorch hooks attached for one call, removed after.

`HookSession` groups the active entries by HF module, registers at most one forward pre-hook and
one forward hook per module (plus attention routes), and removes all of it in `finally`. Every hook
acts only in the context (thread, task) whose call registered it (`_ACTIVE`). Edits are detected by
return value, by the version counter (in-place edits) or, for inference tensors, by comparing bits
with a copy; an unedited tensor stays HF's own, so identity hooks keep logits bit-identical.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from contextvars import ContextVar
from typing import Any

import torch
from torch import nn

from ..errors import HookShapeError as HookShapeError  # imported from here by older code
from .attention import AttentionRoute, attention_routed
from .hook_points import HookEntry, HookPoint, checked_return, same_bits
from .hook_values import HookValueGuard, Watch
from .moe import MoEPlace, moe_output
from .places import (
    AttentionValue,
    HeadResult,
    ModuleInput,
    ModuleOutput,
    NormValue,
    Place,
    Scaled,
    ShapedView,
    TokenShape,
    select_output,
)
from .reimplement import ReimplementedLayer, ReimplementRun
from .tensor_parallel import Sharded, local_parameter
from .weights import materialize

# The plans (and gates) whose hooks act in this context, innermost call last. PyTorch hooks live on
# modules, which every thread shares; each checks this before doing anything.
_ACTIVE: ContextVar[tuple[object, ...]] = ContextVar("bridge_core_active", default=())
_PLANS_LOCK = threading.Lock()


def gated(owner: object, fn: Callable[..., Any]) -> Callable[..., Any]:
    """`fn` as a module hook that does nothing outside the context where `owner` is active."""

    def hook(*args: Any) -> Any:
        return fn(*args) if owner in _ACTIVE.get() else None

    return hook


def activate(owner: object, stack: ExitStack, replaces: Callable[[object], bool] = lambda _: False) -> None:
    """Make `owner` active in this context until `stack` closes (dropping active ones `replaces` accepts)."""
    token = _ACTIVE.set((*(o for o in _ACTIVE.get() if not replaces(o)), owner))
    stack.callback(_ACTIVE.reset, token)


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
    if isinstance(view, Sharded):  # tensor parallel: hooks see the whole tensor, this rank keeps its slice
        replacement = _run_viewed(run, view.gather(base), view.inner)
        return None if replacement is None else view.local(replacement)
    if isinstance(view, Scaled):
        return _run_scaled(run, base, view)
    shown = view(base) if view is not None else base
    replaces = getattr(view, "replaces_base", False)
    if run.bwd or replaces:
        shown = shown.clone()  # a tensor of our own: its gradient can be hooked, in-place edits are safe
    new, edited = run.apply(shown)
    run.attach_backward(new)
    if not edited and not run.bwd:
        return None
    if view is None or replaces:
        return new
    replacement = base.clone()
    view(replacement).copy_(new)
    return replacement


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
    return tuple(items)


class _ModuleHooks:
    """Every active point placed on one module, in the order the points were bound."""

    def __init__(self, module: nn.Module) -> None:
        self.module = module
        self.inputs: list[tuple[ModuleInput, _PointRun]] = []
        self.outputs: list[tuple[Place, _PointRun]] = []
        self.gate: ReimplementRun | None = None  # held back during a reimplemented module's original forward

    def pre_hook(self, module: nn.Module, args: tuple, kwargs: dict):
        if self.gate is not None and self.gate.original_running:
            return None
        changed = False
        for place, run in self.inputs:
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
        for place, run in self.outputs:
            if isinstance(place, NormValue):
                # scale and normalized are one computation; it runs before any other point on
                # this module (e.g. hook_attn_out on Gemma 2's post-attention norm) sees the output.
                if norms_done:
                    continue
                norms_done = True
                runs = {p.which: r for p, r in self.outputs if isinstance(p, NormValue)}
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
                new = moe_output(place, run, self.outputs, args, kwargs, output)
                if new is not None:
                    output, changed = new, True
        return output if changed else None

    def _input(self, args: tuple, kwargs: dict) -> torch.Tensor:
        return args[0] if args else next(v for v in kwargs.values() if isinstance(v, torch.Tensor))

    def _norm(self, place: NormValue, runs: dict[str, _PointRun], args, kwargs, output) -> torch.Tensor | None:
        kind = place.kind
        view = place.view
        prepared = kind.prepare(self._input(args, kwargs))
        eps = kind.eps(self.module)
        scale = kind.scale(prepared, eps)
        edited = False
        if "scale" in runs:
            new_scale = _run_viewed(runs["scale"], scale, view)
            if new_scale is not None:
                scale, edited = new_scale, True
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


class _Plan:
    """Which PyTorch hooks and attention routes a given list of hook points needs.

    Building it groups points by module; a bridge keeps plans by the points they serve, so a call
    that repeats the previous call's points (every `run_with_cache`) only refills the functions.
    """

    def __init__(self, points: list[tuple[HookPoint, str]], softmax_float32: dict[int, bool], reimplemented) -> None:
        self.in_use = False
        self.owner: object = None  # the bridge whose call uses it (see HookSession)
        self.watched = Watch()  # hooked tensors and their versions, this forward (hook_values.py)
        self.runs: dict[int, _PointRun] = {}
        order: list[_PointRun] = []
        for point, _ in points:
            if id(point) not in self.runs:
                run = self.runs[id(point)] = _PointRun(point)
                run.watched = self.watched
                order.append(run)
        self.modules: dict[int, _ModuleHooks] = {}
        routes: dict[int, AttentionRoute] = {}
        for run in order:
            place = run.point.place
            if isinstance(place, AttentionValue):
                route = routes.get(id(place.module))
                if route is None:
                    route = routes[id(place.module)] = AttentionRoute(
                        place.module, softmax_float32.get(id(place.module), False)
                    )
                setattr(route, f"on_{place.which}", _attention_hook(run, place.view))
                continue
            hooks = self.modules.get(id(place.module))
            if hooks is None:
                hooks = self.modules[id(place.module)] = _ModuleHooks(place.module)
            (hooks.inputs if isinstance(place, ModuleInput) else hooks.outputs).append((place, run))
        self.reimplement_runs: dict[int, ReimplementRun] = {}
        for key in [k for k in routes if k in reimplemented]:
            layer = reimplemented[key]
            self.reimplement_runs[key] = ReimplementRun(layer, routes.pop(key))
            for sub in layer.submodules:
                if sub in self.modules:
                    self.modules[sub].gate = self.reimplement_runs[key]
        self.routes = list(routes.values())
        views = [getattr(r.point.place, "view", None) for r in order]
        views = [v.inner if isinstance(v, Scaled) else v for v in views]  # a scaled flat-token view records too
        self.recorders = {id(v.source): v for v in views if v is not None and isinstance(v, ShapedView)}

    def fill(self, entries: Sequence[HookEntry]) -> None:
        for run in self.runs.values():
            run.fwd.clear()
            run.bwd.clear()
            run.writes = False
        self.watched.clear()
        for entry in entries:
            run = self.runs[id(entry.point)]
            (run.fwd if entry.direction == "fwd" else run.bwd).append(entry.fn)
            run.writes = run.writes or (entry.direction == "fwd" and not entry.reads_only)


class HookSession:
    """The PyTorch hooks and attention routes for one bridge call.

    Its hooks act only in the context that entered it, so calls on one bridge from several threads each
    run their own functions; a bridge call made from inside a hook replaces the outer call's session of
    the same bridge (`owner`) for its duration.
    """

    def __init__(
        self,
        entries: Sequence[HookEntry],
        configs: list[Any],
        softmax_float32: dict[int, bool],
        reimplemented: dict[int, ReimplementedLayer] | None = None,
        plans: dict[tuple, _Plan] | None = None,
        owner: object | None = None,
        guard: HookValueGuard | None = None,
    ):
        self.entries = entries
        self.configs = configs
        self.softmax_float32 = softmax_float32
        self.reimplemented = reimplemented or {}
        self.plans = plans if plans is not None else {}
        self.owner = owner if owner is not None else self.plans
        self._plan: _Plan | None = None
        self._stack = ExitStack()
        self.guard = guard

    @property
    def recomputes_attention(self) -> bool:
        """Whether an internal hook sits on a reimplement-path attention module (no KV cache then)."""
        return any(
            isinstance(e.point.place, AttentionValue) and id(e.point.place.module) in self.reimplemented
            for e in self.entries
        )

    def _take_plan(self) -> _Plan:
        key = tuple((id(e.point), e.direction) for e in self.entries)
        with _PLANS_LOCK:  # a plan serves one call at a time, whichever thread makes it
            plan = self.plans.get(key)
            if plan is not None and not plan.in_use:
                plan.in_use = True
                plan.fill(self.entries)
                return plan
        # in use: another thread's call, or a bridge call made from inside a hook of this one
        plan = _Plan([(e.point, e.direction) for e in self.entries], self.softmax_float32, self.reimplemented)
        plan.owner = self.owner
        plan.in_use = True
        plan.fill(self.entries)
        with _PLANS_LOCK:
            if key not in self.plans and len(self.plans) < 64:
                self.plans[key] = plan
        return plan

    def __enter__(self) -> HookSession:
        plan = self._plan = self._take_plan()
        if self.guard is not None:
            self.guard.mark(list(plan.runs.values()), plan.watched)
        stack = self._stack
        stack.callback(self._release)
        try:
            owner = self.owner
            activate(plan, stack, replaces=lambda other: getattr(other, "owner", None) is owner)
            for run in plan.reimplement_runs.values():
                module = run.layer.module
                handle = module.register_forward_pre_hook(gated(plan, run.pre_hook), with_kwargs=True)
                stack.callback(handle.remove)
                # first among the module's forward hooks: hook_attn_out must see the recomputed output
                handle = module.register_forward_hook(gated(plan, run.post_hook), with_kwargs=True, prepend=True)
                stack.callback(handle.remove)
            for view in plan.recorders.values():
                recorder = gated(plan, _shape_recorder(view.cell))
                handle = view.source.register_forward_pre_hook(recorder, with_kwargs=True)
                stack.callback(handle.remove)
            for hooks in plan.modules.values():
                if hooks.inputs:
                    handle = hooks.module.register_forward_pre_hook(gated(plan, hooks.pre_hook), with_kwargs=True)
                    stack.callback(handle.remove)
                if hooks.outputs:
                    handle = hooks.module.register_forward_hook(gated(plan, hooks.post_hook), with_kwargs=True)
                    stack.callback(handle.remove)
            # Always entered: it also hides the routes of an outer call of this bridge in this context.
            stack.enter_context(attention_routed(self.configs, plan.routes, owner))
        except BaseException:
            stack.close()
            raise
        return self

    def _release(self) -> None:
        if self._plan is not None:
            if self.guard is not None:
                self.guard.check(self._plan.watched)
            self._plan.fill(())  # drop the user's functions: a kept plan must not keep their closures alive
            self._plan.in_use = False

    def __exit__(self, *exc_info: Any) -> None:
        self._stack.close()


def _shape_recorder(cell: TokenShape):
    def record(module: nn.Module, args: tuple, kwargs: dict) -> None:
        hidden = args[0] if args else next(v for v in kwargs.values() if isinstance(v, torch.Tensor))
        cell.shape = tuple(hidden.shape[:-1])

    return record


def _attention_hook(run: _PointRun, view: Sharded | None = None):
    def hook(tensor: torch.Tensor) -> torch.Tensor:
        if view is not None:  # tensor parallel: this rank's heads; hooks see them all
            replacement = _run_viewed(run, tensor, view)
            return tensor if replacement is None else replacement
        if run.bwd:  # a tensor of our own that the rest of attention uses, so its gradient can be hooked
            tensor = tensor.clone()
        new, _ = run.apply(tensor)
        run.attach_backward(new)
        return new

    return hook
