"""Binding a mixture-of-experts MLP (`block.mlp.moe`): the part of the one spec walk that reads MoE fields.

Called by `binding._Binder.mlp` for a layer whose MLP kind evaluates to `moe`; produces a `BoundMLP`
with no dense projections and a `BoundMoE` (bound.py) holding the router, the experts and the
routing settings, each evaluated once.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from ..errors import BindError
from ..spec.config import spec_error
from .bound import BoundMLP, BoundMoE, BoundSharedExpert, Spot
from .spec_walker import Missing

if TYPE_CHECKING:
    from ..spec.schema import MLPSpec, MoESpec
    from .spec_walker import SpecWalker


def bind_moe(walker: SpecWalker, module: nn.Module, path: str, m: MLPSpec, field: str) -> BoundMLP:
    """The bound MoE MLP at `module` (`path`), from the spec's `mlp.moe` (and `in/gate/out` for a shared expert)."""
    at = f"{field}.mlp.moe"
    e = m.moe
    if e is None:
        raise spec_error("the MLP kind is 'moe' here but the spec has no 'moe'", walker.spec, None, f"{field}.mlp")
    inner = f"{path}."
    router = walker.attempt(walker.resolve, module, e.router, f"{at}.router", inner)
    experts = walker.attempt(walker.resolve, module, e.experts, f"{at}.experts", inner)
    n_experts = walker.attempt(walker.value, f"{at}.n_experts", e.n_experts)
    top_k = walker.attempt(walker.value, f"{at}.top_k", e.top_k)
    norm_topk = walker.attempt(walker.value, f"{at}.norm_topk_prob", e.norm_topk_prob)
    grouping = walker.attempt(_grouping, walker, e, at, n_experts)
    scaling = walker.attempt(walker.value, f"{at}.routed_scaling", e.routed_scaling)
    eps = walker.attempt(_sparsemixer_eps, walker, e, at, top_k)
    d_mlp = walker.attempt(walker.value, f"{at}.d_mlp", e.d_mlp)
    glu = walker.attempt(_clamped_glu, walker, e, at)
    shared = walker.attempt(_shared, walker, module, m, field, inner) if e.shared_expert else None
    bias = walker.attempt(_correction_bias, walker, module, e, at, path, n_experts) if e.correction_bias else None
    if e.correction_bias and bias is None:
        raise Missing
    act_name, act, act_field = walker.activation(m, field, module, inner)
    if router is None or experts is None or act is None or None in (n_experts, top_k, norm_topk):
        raise Missing
    if e.shared_expert and shared is None:
        raise Missing
    if grouping is None or scaling is None or glu is None or (e.scoring == "sparsemixer" and eps is None):
        raise Missing
    if isinstance(scaling, bool) or not isinstance(scaling, (int, float)):
        message = f"evaluates to {scaling!r}; expected a number"
        walker.fail(spec_error(message, walker.spec, None, f"{at}.routed_scaling"))
        raise Missing
    for name, value in (("n_experts", n_experts), ("top_k", top_k)):
        if not isinstance(value, int) or value < 1:
            walker.fail(
                spec_error(f"evaluates to {value!r}; expected an integer >= 1", walker.spec, None, f"{at}.{name}")
            )
            raise Missing
    if top_k > n_experts:
        walker.fail(spec_error(f"top_k {top_k} exceeds n_experts {n_experts}", walker.spec, None, f"{at}.top_k"))
        raise Missing
    if d_mlp is not None and (isinstance(d_mlp, bool) or not isinstance(d_mlp, int) or d_mlp < 1):
        walker.fail(spec_error(f"evaluates to {d_mlp!r}; expected an integer >= 1", walker.spec, None, f"{at}.d_mlp"))
        raise Missing
    expert_modules = _experts(walker, experts, e, at, n_experts)
    router_linear = _router_linear(walker, module, router, e, at, inner, n_experts)
    return BoundMLP(
        module=module,
        path=path,
        w_in=None,
        w_gate=None,
        w_out=None,
        layout="linear",
        act_name=str(act_name),
        act=act,
        act_field=act_field,
        input=Spot(module, path, "input"),
        moe=BoundMoE(
            router=router[0],
            router_path=router[1],
            router_output=tuple(e.router_output),
            experts=experts[0],
            experts_path=experts[1],
            storage=e.storage,
            gate_up=e.gate_up,
            down=e.down,
            gate_first=e.gate_first,
            expert_modules=expert_modules,
            n_experts=n_experts,
            top_k=top_k,
            softmax_first=e.scoring == "softmax_then_topk",
            norm_topk_prob=bool(norm_topk),
            shared=shared,
            group_limited=grouping[0],
            n_group=grouping[1],
            topk_group=grouping[2],
            d_mlp=d_mlp,
            routed_scaling=float(scaling),
            sigmoid=e.scoring == "sigmoid",
            sparsemixer_eps=eps,
            group_score=grouping[3],
            bias_owner=bias[0] if bias else None,
            bias_name=bias[1] if bias else None,
            bias_on_logits=e.correction_bias_on == "logits",
            router_linear=router_linear,
            fused_layout=e.fused_layout,
            interleaved=e.gate_up_split == "interleaved",
            gate_up_bias=e.gate_up_bias,
            down_bias=e.down_bias,
            clamp_limit=glu[0],
            up_offset=glu[1],
        ),
    )


def _router_linear(
    walker: SpecWalker, module: nn.Module, router: tuple[nn.Module, str], e, at: str, inner: str, n_experts: int
) -> nn.Module:
    """The module holding the router weight `[n_experts, d]`: `router_weight` (under the MLP), else the router."""
    owner, owner_path = router
    if e.router_weight is not None:
        found = walker.attempt(walker.resolve, module, e.router_weight, f"{at}.router_weight", inner)
        if found is None:
            raise Missing
        owner, owner_path = found
    weight = getattr(owner, "weight", None)
    if not isinstance(weight, torch.Tensor) or weight.dim() != 2 or weight.shape[0] != n_experts:
        found = "absent" if weight is None else f"shaped {tuple(getattr(weight, 'shape', ()))}"
        hint = "" if e.router_weight else "; name the router's linear layer in router_weight"
        walker.fail(
            BindError(
                f"the router has no weight [n_experts={n_experts}, d_model] ({found}){hint}",
                spec_path=f"{at}.router_weight" if e.router_weight else f"{at}.router",
                module_path=f"{owner_path}.weight",
            )
        )
        raise Missing
    return owner


def _experts(walker: SpecWalker, experts: tuple[nn.Module, str], e, at: str, n_experts: int):
    module, path = experts
    if e.storage == "fused":
        for name in (e.gate_up, e.down):
            weight = getattr(module, name, None)
            if not isinstance(weight, nn.Parameter) or weight.dim() != 3 or weight.shape[0] != n_experts:
                found = "absent" if weight is None else f"shaped {tuple(getattr(weight, 'shape', ()))}"
                walker.fail(
                    BindError(
                        f"the experts module has no 3-D parameter '{name}' [n_experts={n_experts}, ...] ({found})",
                        spec_path=f"{at}.gate_up" if name == e.gate_up else f"{at}.down",
                        module_path=f"{path}.{name}",
                    )
                )
                raise Missing
        for name, field in ((e.gate_up_bias, "gate_up_bias"), (e.down_bias, "down_bias")):
            bias = getattr(module, name, None) if name else None
            if name and (not isinstance(bias, nn.Parameter) or bias.dim() != 2 or bias.shape[0] != n_experts):
                found = "absent" if bias is None else f"shaped {tuple(getattr(bias, 'shape', ()))}"
                message = f"the experts module has no 2-D parameter '{name}' [n_experts={n_experts}, ...] ({found})"
                walker.fail(BindError(message, spec_path=f"{at}.{field}", module_path=f"{path}.{name}"))
                raise Missing
        _check_fused_layout(walker, module, path, e, at)
        return ()
    fused_only = {"fused_layout": "linear", "gate_up_split": "halves", "gate_up_bias": None, "down_bias": None}
    for name, default in fused_only.items():
        if getattr(e, name) != default:
            raise spec_error(f"{name} describes fused storage; storage is 'modules'", walker.spec, None, f"{at}.{name}")
    if not isinstance(module, nn.ModuleList) or len(module) != n_experts:
        walker.fail(
            BindError(
                f"storage 'modules' needs a ModuleList of {n_experts} experts at '{path}'",
                spec_path=f"{at}.storage",
                module_path=path,
            )
        )
        raise Missing
    found = []
    for i, expert in enumerate(module):
        inner = f"{path}.{i}."
        parts = [walker.resolve(expert, p, f"{at}.expert_{n}", inner)[0] for n, p in _EXPERT_PARTS(e)]
        found.append(tuple(parts))
    return tuple(found)


def _EXPERT_PARTS(e):
    return (("in", e.expert_in), ("gate", e.expert_gate), ("out", e.expert_out))


def _shared(walker: SpecWalker, module: nn.Module, m: MLPSpec, field: str, inner: str) -> BoundSharedExpert:
    e = m.moe
    at = f"{field}.mlp.moe"
    shared, shared_path = walker.resolve(module, e.shared_expert, f"{at}.shared_expert", inner)
    if m.in_ is None or m.out is None:
        raise spec_error("a shared expert needs the MLP's 'in' and 'out' (its projections)", walker.spec, None, at)
    sub = f"{shared_path}."
    w_in = walker.resolve(shared, m.in_, f"{field}.mlp.in", sub)[0]
    w_gate = walker.resolve(shared, m.gate, f"{field}.mlp.gate", sub)[0] if m.gate is not None else None
    w_out = walker.resolve(shared, m.out, f"{field}.mlp.out", sub)[0]
    gate = (
        walker.resolve(module, e.shared_expert_gate, f"{at}.shared_expert_gate", inner)
        if e.shared_expert_gate
        else None
    )
    return BoundSharedExpert(
        shared, shared_path, w_in, w_gate, w_out, gate[0] if gate else None, gate[1] if gate else None
    )


def _correction_bias(walker: SpecWalker, module: nn.Module, e, at: str, path: str, n_experts: Any):
    """(owner module, buffer name) of the selection-only correction bias, checked to be `[n_experts]`."""
    owner_path, _, name = e.correction_bias.rpartition(".")
    try:
        owner = module.get_submodule(owner_path) if owner_path else module
    except AttributeError:
        owner = None
    value = getattr(owner, name, None) if owner is not None else None
    shapes = ((n_experts,), (1, n_experts))  # ERNIE 4.5 keeps one row per expert group: [1, n_experts]
    if not isinstance(value, torch.Tensor) or value.shape not in shapes or not value.is_floating_point():
        found = "absent" if value is None else f"{type(value).__name__} {tuple(getattr(value, 'shape', ()))}"
        walker.fail(
            BindError(
                f"no floating tensor [n_experts={n_experts}] at '{e.correction_bias}' ({found})",
                spec_path=f"{at}.correction_bias",
                module_path=f"{path}.{e.correction_bias}",
            )
        )
        raise Missing
    return owner, name


def _grouping(walker: SpecWalker, e, at: str, n_experts: Any) -> tuple[bool, int, int, str]:
    """(group-limited, n_group, topk_group, group score) from `selection` and the group sizes, checked against
    n_experts."""
    choices = ("greedy", "group_limited_greedy", "noaux_tc")
    selection = walker.choice(f"{at}.selection", e.selection, choices)
    if selection == "greedy":
        return False, 1, 1, "max"
    if selection == "group_limited_greedy" and e.scoring != "softmax_then_topk":
        raise spec_error("group_limited_greedy selects on the softmax over all experts", walker.spec, None, at)
    n_group = walker.value(f"{at}.n_group", e.n_group)
    topk_group = walker.value(f"{at}.topk_group", e.topk_group)
    for name, value in (("n_group", n_group), ("topk_group", topk_group)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise spec_error(f"evaluates to {value!r}; expected an integer >= 1", walker.spec, None, f"{at}.{name}")
    if isinstance(n_experts, int) and n_experts % n_group:
        raise spec_error(f"n_group {n_group} does not divide n_experts {n_experts}", walker.spec, None, f"{at}.n_group")
    if topk_group > n_group:
        raise spec_error(f"topk_group {topk_group} exceeds n_group {n_group}", walker.spec, None, f"{at}.topk_group")
    if selection == "noaux_tc" and isinstance(n_experts, int) and n_experts // n_group < 2:
        message = f"noaux_tc ranks groups by their best two experts; n_group {n_group} leaves fewer per group"
        raise spec_error(message, walker.spec, None, f"{at}.n_group")
    return True, n_group, topk_group, "top2_sum" if selection == "noaux_tc" else "max"


def _sparsemixer_eps(walker: SpecWalker, e: MoESpec, at: str, top_k: int | None) -> float | None:
    """`moe.jitter_eps`, read for scoring `sparsemixer` only (which picks exactly two experts)."""
    if e.scoring != "sparsemixer":
        if e.jitter_eps is not None:
            raise spec_error("jitter_eps is read by scoring sparsemixer only", walker.spec, None, f"{at}.jitter_eps")
        return None
    if top_k is not None and top_k != 2:
        raise spec_error(f"scoring sparsemixer picks 2 experts; top_k is {top_k}", walker.spec, None, f"{at}.top_k")
    eps = walker.value(f"{at}.jitter_eps", e.jitter_eps)
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or eps < 0:
        raise spec_error(
            f"evaluates to {eps!r}; scoring sparsemixer needs a number >= 0", walker.spec, None, f"{at}.jitter_eps"
        )
    return float(eps)


def _clamped_glu(walker: SpecWalker, e: MoESpec, at: str) -> tuple[float | None, float]:
    """(clamp limit or None, up offset) of the experts' GLU, each a number (GPT-OSS: `swiglu_limit`, 1)."""
    limit = walker.value(f"{at}.clamp_limit", e.clamp_limit)
    offset = walker.value(f"{at}.up_offset", e.up_offset)
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, (int, float)) or limit <= 0):
        raise spec_error(f"evaluates to {limit!r}; expected a number > 0", walker.spec, None, f"{at}.clamp_limit")
    if isinstance(offset, bool) or not isinstance(offset, (int, float)):
        raise spec_error(f"evaluates to {offset!r}; expected a number", walker.spec, None, f"{at}.up_offset")
    return (None if limit is None else float(limit)), float(offset)


def _check_fused_layout(walker: SpecWalker, module: nn.Module, path: str, e, at: str) -> None:
    """Fused experts stored as the spec's `fused_layout` says: [E, 2m, d] and [E, d, m] (linear) or transposed."""
    gate_up, down = getattr(module, e.gate_up).shape, getattr(module, e.down).shape
    d = walker.cfg.d_model if walker.cfg else (down[1] if e.fused_layout == "linear" else down[2])
    if e.fused_layout == "linear":
        fits, want = gate_up[1] == 2 * down[2] and gate_up[2] == d == down[1], "[E, 2*d_mlp, d] and [E, d, d_mlp]"
    else:
        fits, want = gate_up[2] == 2 * down[1] and gate_up[1] == d == down[2], "[E, d, 2*d_mlp] and [E, d_mlp, d]"
    if not fits:
        walker.fail(
            BindError(
                f"the experts' '{e.gate_up}' {tuple(gate_up)} and '{e.down}' {tuple(down)} are not the "
                f"{e.fused_layout} layout {want} (d = {d})",
                spec_path=f"{at}.fused_layout",
                module_path=f"{path}.{e.gate_up}",
            )
        )
        raise Missing
