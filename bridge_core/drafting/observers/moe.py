"""Observer of a mixture-of-experts MLP: the experts module (the child called with token indices), its
storage and gate|up order, the router (the child whose output holds the routing), how the top-k weights
come from the logits, and a shared expert with its sigmoid gate. Each fact is checked against the calls the
probe saw; what cannot be checked is a `# NOTE:` or a gap."""

from __future__ import annotations

from typing import Any

import torch
from transformers.activations import ACT2FN

from ..draft import DraftContext
from ..probe import Call, same
from .modules import is_linear

_N_EXPERTS = ("num_local_experts", "num_experts", "n_routed_experts", "moe_num_experts")
_TOP_K = ("num_experts_per_tok", "top_k", "moe_topk", "moe_k", "num_selected_experts")


def _routed_call(ctx: DraftContext, path: str) -> tuple[str, Call] | None:
    """The child of the MLP called with (hidden [tokens, d], top-k indices (integers), top-k weights)."""
    for name, _ in ctx.obs.module(path).named_children():
        call = ctx.obs.first(f"{path}.{name}")
        args = [*call.args, *call.kwargs.values()] if call else []
        tensors = [a for a in args if isinstance(a, torch.Tensor)]
        if len(tensors) >= 3 and tensors[0].is_floating_point() and any(not t.is_floating_point() for t in tensors):
            return name, call
    return None


def _router(ctx: DraftContext, path: str, n_experts: int) -> tuple[str, list[str], Call] | None:
    """The child whose output is a tuple of logits [tokens, n_experts], top-k weights and integer indices."""
    for name, _ in ctx.obs.module(path).named_children():
        call = ctx.obs.first(f"{path}.{name}")
        out = call.output if call else None
        if not isinstance(out, tuple) or not all(isinstance(t, torch.Tensor) for t in out):
            continue
        roles = []
        for t in out:
            if not t.is_floating_point():
                roles.append("indices")
            elif t.shape[-1] == n_experts and "logits" not in roles:
                roles.append("logits")
            else:
                roles.append("weights")
        if sorted(roles) == ["indices", "logits", "weights"]:
            return name, roles, call
    return None


def observe_moe(ctx: DraftContext, path: str, spec: dict) -> dict | None:
    """Fill `spec` (the MLP's) as kind `moe`; returns the shared expert's MLP spec to fill, or None when the
    experts could not be read (a gap names why)."""
    obs = ctx.obs
    routed = _routed_call(ctx, path)
    if routed is None:
        ctx.draft.gap("MoE", f"{path}: no child is called with token indices (experts not found)")
        return None
    experts, call = routed
    module = obs.module(f"{path}.{experts}")
    params = {n: p for n, p in module.named_parameters(recurse=False) if p.dim() == 3}
    if len(params) != 2:
        ctx.draft.gap("MoE expert modules", f"{path}.{experts} keeps no fused 3-D gate|up and down parameters")
        return None
    (a, pa), (b, pb) = params.items()
    gate_up, down = (a, b) if pa.shape[1] == 2 * pb.shape[2] else (b, a)
    w_gu, w_down = params[gate_up].detach(), params[down].detach()
    n_experts, d_mlp = w_gu.shape[0], w_down.shape[2]
    hidden, index, weights = (t for t in [*call.args, *call.kwargs.values()] if isinstance(t, torch.Tensor))
    d = hidden.shape[-1]
    if w_gu.shape[1:] != (2 * d_mlp, d) or w_down.shape[1:] != (d, d_mlp):
        shapes = [tuple(w_gu.shape), tuple(w_down.shape)]
        ctx.draft.gap("MoE expert storage", f"{path}.{experts} stores {shapes}, not [E, 2*d_mlp, d] and [E, d, d_mlp]")
        return None
    top_k = index.shape[-1]
    moe: dict[str, Any] = {"router": "FILL_ME", "experts": experts, "storage": "fused", "gate_up": gate_up}
    moe["down"] = down
    gate_first = _gate_first(ctx, w_gu, w_down, hidden, index, weights, call.output)
    if gate_first is None:
        ctx.draft.gap("MoE expert wiring", f"no activation and gate|up order reproduces {path}.{experts}'s output")
    moe["gate_first"] = bool(gate_first) if gate_first is not None else True
    moe["n_experts"] = ctx.attr(n_experts, _N_EXPERTS, ("expert",)) or n_experts
    moe["top_k"] = ctx.attr(top_k, _TOP_K, ("top", "per_tok")) or top_k
    router = _router(ctx, path, n_experts)
    if router is None:
        ctx.draft.gap("MoE router", f"no child of {path} returns (logits, weights, indices)")
    else:
        name, roles, rcall = router
        moe["router"], moe["router_output"] = name, roles
        logits, got = rcall.output[roles.index("logits")], rcall.output[roles.index("weights")]
        _scoring(ctx, moe, logits, got, top_k)
    ctx.found["d_mlp"] = d_mlp
    spec.update(kind="moe", layout="linear", moe=moe)
    spec.pop("flat_tokens", None)
    return _shared(ctx, path, moe, {experts, moe["router"]})


def _gate_first(ctx, w_gu, w_down, hidden, index, weights, out) -> bool | None:
    """Recompute the experts' output from their parameters, gate half first or up half first."""
    from ..shrink import plain_fields

    acts = [v for v in plain_fields(ctx.config).values() if isinstance(v, str) and v in ACT2FN] + ["silu"]
    for act in dict.fromkeys(acts):
        fn = ACT2FN[act]
        for first in (True, False):
            total = torch.zeros_like(hidden, dtype=torch.float32)
            for slot in range(index.shape[-1]):
                e = index[:, slot]
                gu = torch.einsum("td,tfd->tf", hidden.float(), w_gu[e].float())
                x, y = gu.chunk(2, dim=-1)
                gate, up = (x, y) if first else (y, x)
                mid = fn(gate) * up
                total += torch.einsum("tf,tdf->td", mid, w_down[e].float()) * weights[:, slot, None].float()
            if same(total, out.float(), atol=1e-4):
                ctx.found["act"] = act
                return first
    return None


def _scoring(ctx: DraftContext, moe: dict, logits: torch.Tensor, got: torch.Tensor, k: int) -> None:
    """Which of softmax-then-top-k (renormalized or not) and top-k-then-softmax gives the observed weights."""
    probs = torch.softmax(logits.float(), dim=-1)
    top = probs.topk(k, dim=-1).values
    options = {
        ("softmax_then_topk", True): top / top.sum(-1, keepdim=True),
        ("softmax_then_topk", False): top,
        ("topk_then_softmax", True): torch.softmax(logits.float().topk(k, dim=-1).values, dim=-1),
    }
    got = got.float().sort(dim=-1, descending=True).values
    found = [key for key, value in options.items() if same(value, got, atol=1e-4)]
    if not found:
        ctx.draft.gap("MoE scoring", "the router's weights are none of the registered scorings of its logits")
        return
    scoring, renorm = found[0]
    moe["scoring"] = scoring
    field = ctx.attr(renorm, ("norm_topk_prob",), ("norm_topk",))
    if scoring == "softmax_then_topk":
        if field:
            moe["norm_topk_prob"] = field
        else:
            moe["norm_topk_prob"] = renorm
            ctx.draft.note(f"block.mlp.moe.norm_topk_prob: {renorm} observed; no config field holds it")
    if len(found) > 1:
        ctx.draft.note(f"block.mlp.moe.scoring: {[f[0] for f in found]} all fit the observed weights")


def _shared(ctx: DraftContext, path: str, moe: dict, used: set[str]) -> dict | None:
    """A child run on every token besides router and experts (the shared expert), and a Linear d -> 1 whose
    sigmoid scales it (its gate). Returns the shared expert's path for the MLP observer to wire."""
    rest = [(n, m) for n, m in ctx.obs.module(path).named_children() if n not in used]
    gate = next((n for n, m in rest if is_linear(m) and getattr(m, "out_features", None) == 1), None)
    shared = [(n, m) for n, m in rest if n != gate and any(is_linear(x) for x in m.modules())]
    if len(shared) > 1:
        ctx.draft.gap("MoE shared experts", f"several modules besides router and experts: {[n for n, _ in shared]}")
    if not shared:
        return None
    moe["shared_expert"] = shared[0][0]
    if gate:
        moe["shared_expert_gate"] = gate
        ctx.draft.note(f"block.mlp.moe.shared_expert_gate: '{gate}' (a Linear d -> 1) scales the shared expert")
    return {"path": f"{path}.{shared[0][0]}"}
