"""Mixture-of-experts checks: routing, each expert's contribution, and the on-demand recomputed path.

HF's side is recorded on the untouched copy with plain torch hooks: the router's logits, what the
experts module was handed (hidden states, selected experts, their weights), what it returned, and the
MoE module's output. The bound model says which modules those are; the spec's routing settings and the
expert weight views are then held to them.
"""

from __future__ import annotations

from typing import Any

import torch

from ...bridge.moe import glu, routing
from ..catalogue import Meter, Skip, check
from ..context import CheckContext

_ROUTING = "block.mlp.moe.top_k / scoring / jitter_eps / norm_topk_prob / selection / correction_bias / routed_scaling"


def _by_expert(indices: torch.Tensor, weights: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Each token's (expert, weight) pairs ordered by expert: routers that take top-k unsorted (DeepSeek-V3's
    noaux_tc) hand their experts the same choice in another slot order."""
    order = indices.argsort(dim=-1)
    return indices.gather(-1, order), weights.gather(-1, order)


def _moe_layers(ctx: CheckContext) -> list:
    layers = [layer for layer in ctx.layers if layer.block.mlp.moe is not None]
    if not layers:
        raise Skip("no mixture-of-experts MLP")
    return layers


def _hf_moe(ctx: CheckContext, layers: list) -> dict[str, dict[str, Any]]:
    """Per layer prefix: HF's router output, experts inputs and output, and MoE output, on the copy."""
    seen: dict[str, dict[str, Any]] = {layer.prefix: {} for layer in layers}
    handles = []

    def keep(prefix: str, key: str, inputs: bool = False):
        def hook(module, args, kwargs, output):
            if inputs:
                names = ("hidden_states", "top_k_index", "top_k_weights")
                given = list(args[:3]) + [kwargs[n] for n in names[len(args[:3]) :]]
                seen[prefix]["experts_in"] = [t.detach().clone() for t in given]
            seen[prefix][key] = output if isinstance(output, torch.Tensor) else tuple(output)

        return hook

    try:
        for layer in layers:
            moe = layer.block.mlp.moe
            twin = ctx.copy.get_submodule
            for module, key, inputs in ((moe.router, "router", False), (moe.experts, "experts", True)):
                hook = keep(layer.prefix, key, inputs)
                handles.append(twin(ctx.name_of(module)).register_forward_hook(hook, with_kwargs=True))
            mlp = twin(ctx.name_of(layer.block.mlp.module))
            handles.append(mlp.register_forward_hook(keep(layer.prefix, "mlp"), with_kwargs=True))
            post = _norm_inside_mlp(ctx, layer.block)
            if post is not None:  # the MoE output is what that norm takes (A.X-K1's post_mlp_layernorm)
                hook = _keep_input(seen[layer.prefix], "moe_out")
                handles.append(twin(ctx.name_of(post)).register_forward_hook(hook, with_kwargs=True))
        with torch.no_grad():
            ctx.copy(input_ids=ctx.tokens, use_cache=False, **ctx.inputs)
    finally:
        for handle in handles:
            handle.remove()
    return seen


def _norm_inside_mlp(ctx: CheckContext, block: Any) -> torch.nn.Module | None:
    """The block's `ln2_post` where it lives inside the MLP module (A.X-K1 normalizes the MoE output there)."""
    post = block.ln2_post
    if post is None:
        return None
    return post.module if ctx.name_of(post.module).startswith(f"{ctx.name_of(block.mlp.module)}.") else None


def _keep_input(seen: dict[str, Any], key: str):
    def hook(module, args, kwargs, output):
        seen[key] = (args[0] if args else next(iter(kwargs.values()))).detach().clone()

    return hook


@check(
    "moe_routing",
    statement="a mixture of experts routes as HF does: x·W_gate (+ the router's bias) equals HF's router logits, "
    "the spec's top-k, "
    "scoring (softmax, sigmoid, or PhiMoE's sparsemixer on the logits), selection (greedy or group-limited, on the "
    "scores plus any correction bias), "
    "renormalization and routed scaling applied to HF's logits give the experts and weights HF handed its "
    "experts (compared per token by expert), and "
    "hook_router_logits / hook_expert_weights / hook_expert_indices / hook_routing_weights show HF's values",
    family="mlp",
    tolerance=1e-5,
)
def moe_routing(ctx: CheckContext, m: Meter) -> None:
    layers = _moe_layers(ctx)
    hf = _hf_moe(ctx, layers)
    for layer in layers:
        p, moe, seen = f"{layer.prefix}.mlp", layer.block.mlp.moe, hf[layer.prefix]
        logits = seen["router"][moe.router_output.index("logits")]
        hidden, indices, weights = seen["experts_in"]
        recomputed = _plus(hidden @ layer.weights.mlp.W_gate, layer.weights.mlp.b_gate)
        m.compare(f"{p}: x·W_gate + b_gate vs HF's router logits", recomputed, logits, "block.mlp.moe")
        probs, spec_weights, spec_indices = routing(moe, logits)
        spec_indices, spec_weights = _by_expert(spec_indices, spec_weights)
        hf_indices, hf_weights = _by_expert(indices, weights)
        m.compare(f"{p}: the spec's top-k experts vs HF's", spec_indices.float(), hf_indices.float(), _ROUTING, 0)
        m.compare(f"{p}: the spec's top-k weights vs HF's", spec_weights.to(weights.dtype), hf_weights, _ROUTING)
        m.compare(f"{p}: hook_router_logits vs HF's", ctx.cache[f"{p}.hook_router_logits"], logits, "block.mlp.moe")
        m.compare(
            f"{p}: hook_expert_weights vs the scores (softmax or sigmoid) of HF's logits",
            ctx.cache[f"{p}.hook_expert_weights"],
            probs,
            "block.mlp.moe",
        )
        cached = ctx.cache[f"{p}.hook_expert_indices"]
        m.compare(f"{p}: hook_expert_indices vs HF's", cached.float(), indices.float(), "block.mlp.moe", 0)
        m.compare(f"{p}: hook_routing_weights vs HF's", ctx.cache[f"{p}.hook_routing_weights"], weights)


def _plus(value: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    return value if bias is None else value + bias


def _expert_values(moe, weights, act, hidden, indices, top_weights):
    """Per expert (gate, pre, post) from the weight views (and bias views), the post by the spec's GLU (a clamp
    and an up offset where set), and the experts' summed output."""
    mask = torch.nn.functional.one_hot(indices, num_classes=moe.n_experts).permute(2, 1, 0)
    total = torch.zeros_like(hidden)
    values = []
    for e, expert in enumerate(weights.experts):
        slot, token = torch.where(mask[e])
        x = hidden[token]
        gate, pre = _plus(x @ expert.W_gate, expert.b_gate), _plus(x @ expert.W_in, expert.b_in)
        post = glu(moe, act, gate, pre)
        total.index_add_(0, token, _plus(post @ expert.W_out, expert.b_out) * top_weights[token, slot, None])
        values.append((gate, pre, post))
    return values, total


@check(
    "moe_experts",
    statement="each expert recomputed from its weight views (experts[e].W_gate, W_in, W_out and any b_gate, b_in, "
    "b_out; the GLU clamped and offset where the spec says) on the tokens HF routed to it gives "
    "experts.{e}.hook_gate / hook_pre / hook_post, the routed sum equals HF's experts output, "
    "and with the shared expert (sigmoid-gated) the MoE output HF's (the input of an ln2_post inside the MLP)",
    family="mlp",
    tolerance=1e-5,
)
def moe_experts(ctx: CheckContext, m: Meter) -> None:
    layers = _moe_layers(ctx)
    hf = _hf_moe(ctx, layers)
    for layer in layers:
        p, bound, weights, seen = f"{layer.prefix}.mlp", layer.block.mlp, layer.weights.mlp, hf[layer.prefix]
        moe = bound.moe
        hidden, indices, top_weights = seen["experts_in"]
        values, total = _expert_values(moe, weights, bound.act, hidden, indices, top_weights)
        for e, triple in enumerate(values):
            for which, value in zip(("gate", "pre", "post"), triple, strict=True):
                name = f"{p}.experts.{e}.hook_{which}"
                m.compare(f"{name} vs the weight views on HF's routed tokens", ctx.cache[name], value, "block.mlp.moe")
        field = (
            "block.mlp.moe.gate_first / gate_up / down / fused_layout / gate_up_split / gate_up_bias / down_bias / "
            f"clamp_limit / up_offset, {bound.act_field}"
        )
        m.compare(f"{p}: routed experts from weight views vs HF's experts output", total, seen["experts"], field)
        out = total
        shared = moe.shared
        if shared is not None:
            sw = weights.shared_expert
            pre = hidden @ sw.W_in
            post = bound.act(hidden @ sw.W_gate) * pre if sw.W_gate is not None else bound.act(pre)
            contribution = post @ sw.W_out
            if weights.W_shared_gate is not None:
                contribution = torch.sigmoid(hidden @ weights.W_shared_gate) * contribution
            out = out + contribution
        hf_out = seen.get("moe_out", seen["mlp"])
        hf_out = hf_out[0] if isinstance(hf_out, tuple) else hf_out
        m.compare(f"{p}: MoE output from weight views vs HF's", out, hf_out.reshape(out.shape), "block.mlp.moe")


@check(
    "moe_recompute_path",
    statement="with an edit at every experts.{e}.hook_post that changes nothing, the recomputed experts replace "
    "HF's and the logits and each hook_mlp_out still equal HF's",
    family="mlp",
    tolerance=1e-5,
)
def moe_recompute_path(ctx: CheckContext, m: Meter) -> None:
    layers = _moe_layers(ctx)
    seen: dict[str, torch.Tensor] = {}
    recomputed: set[str] = set()

    def copy_of(tensor: torch.Tensor, hook) -> torch.Tensor:
        recomputed.add(hook.name)
        return tensor.clone()  # a new tensor: the session takes it as an edit and substitutes the recomputation

    def keep(tensor: torch.Tensor, hook) -> None:
        seen[hook.name] = tensor.detach().clone()

    hooks: list = [(lambda name: ".mlp.experts." in name and name.endswith("hook_post"), copy_of)]
    hooks += [(f"{layer.prefix}.hook_mlp_out", keep) for layer in layers]
    logits = ctx.bridge_hooked(hooks)
    expected = sum(layer.block.mlp.moe.n_experts for layer in layers)
    m.count(expected - len(recomputed), "expert hook_post points not recomputed", "block.mlp.moe")
    m.compare("logits with every expert recomputed vs HF's", logits, ctx.plain_logits, "block.mlp.moe")
    for layer in layers:
        # HF's MLP contribution where the bound model locates it (times Granite's residual multiplier)
        out = ctx.hf_at(layer.block.mlp_out)
        name = f"{layer.prefix}.hook_mlp_out"
        m.compare(f"{name} with every expert recomputed vs HF's", seen[name], out, "block.mlp.moe")
