"""Running hook functions on a forward: PyTorch hooks attached for one call, removed after.

`HookSession` takes the plan for the call's points (`_Plan`: the points grouped by HF module, at
most one forward pre-hook and one forward hook per module, plus attention routes, with those hooks
prepared once and kept with the plan between calls), registers the plan's hooks, and removes all of
it in `finally`. Every hook acts only in the context (thread, task) whose call registered it
(`_ACTIVE`). What each hook does to the tensors is `module_hooks.py`.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from contextvars import ContextVar
from typing import Any, NamedTuple

import torch
from torch import nn

from ..errors import HookShapeError as HookShapeError  # imported from here by older code
from .attention import AttentionRoute, attention_routed
from .hook_points import HookEntry, HookPoint
from .hook_values import HookValueGuard, Watch
from .module_hooks import PhaseCell, _attention_hook, _ModuleHooks, _PointRun
from .norm_values import DeferredNorms
from .places import (
    AttentionValue,
    ModuleInput,
    Phase,
    Scaled,
    ShapedView,
    TokenShape,
)
from .reimplement import ReimplementedLayer, ReimplementRun

# The plans (and gates) whose hooks act in this context, innermost call last. PyTorch hooks live on
# modules, which every thread shares; each checks this before doing anything.
_ACTIVE: ContextVar[tuple[object, ...]] = ContextVar("bridge_core_active", default=())
_PLANS_LOCK = threading.Lock()


class _Hook(NamedTuple):
    """One PyTorch hook a call of a plan registers."""

    module: nn.Module
    pre: bool  # a forward pre-hook (else a forward hook)
    hook: Callable[..., Any]  # gated on the plan
    prepend: bool


def gated(owner: object, fn: Callable[..., Any]) -> Callable[..., Any]:
    """`fn` as a module hook that does nothing outside the context where `owner` is active."""

    def hook(*args: Any) -> Any:
        return fn(*args) if owner in _ACTIVE.get() else None

    return hook


def activate(owner: object, stack: ExitStack, replaces: Callable[[object], bool] = lambda _: False) -> None:
    """Make `owner` active in this context until `stack` closes (dropping active ones `replaces` accepts)."""
    token = _ACTIVE.set((*(o for o in _ACTIVE.get() if not replaces(o)), owner))
    stack.callback(_ACTIVE.reset, token)


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
        self.run_list = order
        # the run and direction of each entry, in the order of the entries the plan is kept for (its key)
        self.slots = [(self.runs[id(point)], direction == "fwd") for point, direction in points]
        self.modules: dict[int, _ModuleHooks] = {}
        self.deferred = DeferredNorms()  # norm values only the cache reads, computed after the forward
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
                hooks.deferred = self.deferred
            (hooks.inputs if isinstance(place, ModuleInput) else hooks.outputs).append((place, run))
        self.phases: dict[int, tuple[PhaseCell, Phase]] = {}  # one cell per module in two roles (places.Phase)
        for hooks in self.modules.values():
            phase = next((p.phase for p, _ in hooks.outputs + hooks.inputs if getattr(p, "phase", None)), None)
            if phase is not None:
                cell, _ = self.phases.setdefault(id(phase.starts), (PhaseCell(), phase))
                hooks.phase = cell
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
        self.hooks = self._module_hooks()

    def _module_hooks(self) -> list[_Hook]:
        """Every PyTorch hook a call of this plan registers, gated on the plan once here (a call only
        registers them). Order matters: a reimplemented module's post-hook comes first among its hooks,
        so hook_attn_out sees the recomputed output."""
        out: list[_Hook] = []
        for run in self.reimplement_runs.values():
            out.append(_Hook(run.layer.module, True, gated(self, run.pre_hook), False))
            out.append(_Hook(run.layer.module, False, gated(self, run.post_hook), True))
        for cell, phase in self.phases.values():  # which role a module in two roles plays on this call
            out.append(_Hook(phase.starts, True, gated(self, cell.before), False))
            out.extend(_Hook(block, True, gated(self, cell.after), False) for block in phase.blocks)
        for view in self.recorders.values():
            out.append(_Hook(view.source, True, gated(self, _shape_recorder(view.cell)), False))
        for hooks in self.modules.values():
            if hooks.inputs:
                out.append(_Hook(hooks.module, True, gated(self, hooks.pre_hook), False))
            if hooks.outputs:
                out.append(_Hook(hooks.module, False, gated(self, hooks.post_hook), False))
        return out

    def fill(self, entries: Sequence[HookEntry]) -> None:
        """Give each point run the functions of `entries` (the entries of this plan's key); the plan is
        empty (new, or emptied by `clear` when its last call ended)."""
        self.watched.clear()
        self.deferred.clear()
        for cell, _ in self.phases.values():
            cell.after_blocks = False
        for (run, forward), entry in zip(self.slots, entries, strict=True):
            if forward:
                run.fwd.append(entry.fn)
                if not entry.reads_only:
                    run.writes = True
            else:
                run.bwd.append(entry.fn)

    def clear(self) -> None:
        """Drop every function: a kept plan must not keep the user's closures alive."""
        for run in self.run_list:
            run.fwd.clear()
            run.bwd.clear()
            run.writes = False
        self.watched.clear()
        self.deferred.clear()


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
        return bool(self.reimplemented) and any(
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
            self.guard.mark(plan.run_list, plan.watched)
        stack = self._stack
        stack.callback(self._release)
        try:
            owner = self.owner
            activate(plan, stack, replaces=lambda other: getattr(other, "owner", None) is owner)
            handles: list[Any] = []
            stack.callback(_remove_all, handles)  # one callback for every handle (removed even if one fails)
            for module, pre, hook, prepend in plan.hooks:
                if pre:
                    handles.append(module.register_forward_pre_hook(hook, with_kwargs=True))
                else:
                    handles.append(module.register_forward_hook(hook, with_kwargs=True, prepend=prepend))
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
            self._plan.clear()  # drop the user's functions: a kept plan must not keep their closures alive
            self._plan.in_use = False

    def __exit__(self, *exc_info: Any) -> None:
        try:
            if self._plan is not None:
                self._plan.deferred.flush()  # also after stop_at_layer's early stop: the norms that ran
        finally:
            self._stack.close()


def _remove_all(handles: list[Any]) -> None:
    """Remove every handle, in reverse order of registration, even if one removal raises."""
    error: BaseException | None = None
    while handles:
        try:
            handles.pop().remove()
        except BaseException as exc:  # the others are still removed; the first error is re-raised
            error = error or exc
    if error is not None:
        raise error


def _shape_recorder(cell: TokenShape):
    def record(module: nn.Module, args: tuple, kwargs: dict) -> None:
        hidden = args[0] if args else next(v for v in kwargs.values() if isinstance(v, torch.Tensor))
        cell.shape = tuple(hidden.shape[:-1])

    return record
