"""Role checks: each norm's output is what HF feeds the sublayer of its role (roles only from the bound
model), and the activation the spec names is HF's own activation on a wide grid of inputs."""

from __future__ import annotations

import inspect
from collections.abc import Callable

import torch
from torch import nn

from ...bridge.bound import BoundNorm
from ..catalogue import Meter, Skip, check
from ..context import CheckContext, Layer

_FEEDS = {
    "attn": "HF's input to the attention's query projection",
    "cross_attn": "HF's input to the cross attention's query projection",
    "mlp": "HF's input to the MLP's in-projection",
    "attn+mlp": "HF's input to the attention's query projection and to the MLP's in-projection",
    "attn_out": "HF's mid residual minus the block input (the attention contribution)",
    "mlp_out": "HF's block output minus the residual before the MLP (the MLP contribution)",
    "resid_mid": "HF's input to the MLP's in-projection (post-norm block; the cross attention's query projection "
    "beside cross attention)",
    "resid_mid_cross": "HF's input to the MLP's in-projection (post-norm block with cross attention)",
    "resid_post": "HF's block output (post-norm block)",
}


def _fed(ctx: CheckContext, layer: Layer, norm: BoundNorm) -> list[torch.Tensor]:
    """What HF did with the output of the module that plays `norm`'s role: one tensor per sublayer it feeds
    (a norm shared by attention and MLP feeds both), empty when there is nothing to compare."""
    if "+" in norm.feeds:
        return [t for role in norm.feeds.split("+") for t in _fed_one(ctx, layer, norm, role)]
    return _fed_one(ctx, layer, norm, norm.feeds)


def _fed_one(ctx: CheckContext, layer: Layer, norm: BoundNorm, feeds: str) -> list[torch.Tensor]:
    found = _fed_role(ctx, layer, feeds)
    return [] if found is None else [found]


def _fed_role(ctx: CheckContext, layer: Layer, feeds: str) -> torch.Tensor | None:
    block = layer.block
    if feeds == "attn":
        return ctx.hf_in(block.attn.projection("q"))
    if feeds == "cross_attn" and block.cross is not None:
        return ctx.hf_in(block.cross.attn.projection("q"))
    if feeds == "resid_mid" and block.cross is not None:  # BART: ln1's output is the cross attention's input
        return ctx.hf_in(block.cross.attn.projection("q"))
    if feeds == "mlp" or (feeds in ("resid_mid", "resid_mid_cross") and not _has_mlp_norm(layer)):
        return ctx.hf_in(block.mlp.w_in if block.mlp.moe is None else block.mlp.module)
    if feeds == "attn_out" and block.resid_mid is not None and block.cross is None:
        return ctx.hf_at(block.resid_mid) - ctx.hf_in(block.module)
    if feeds == "mlp_out" and block.resid_mid is not None and block.cross is None:
        return ctx.hf_at(block.resid_post) - ctx.hf_at(block.resid_mid)
    if feeds == "resid_post":  # post-norm: the block's output is the normalized residual
        return ctx.hf_out(block.module)
    return None


def _residual_into(ctx: CheckContext, layer: Layer, norm: BoundNorm) -> torch.Tensor | None:
    """The residual a pre-norm of this role normalizes, from HF's own tensors at the bound spots: the block
    input before attention; before the MLP, the block input plus the attention (and cross-attention)
    contributions, or the block input alone in a parallel block."""
    block = layer.block
    if norm.feeds_into("attn"):
        return ctx.hf_in(block.module)
    if norm.feeds not in ("cross_attn", "mlp") or block.kind == "post_norm":
        return None
    before = ctx.hf_in(block.module)
    if block.kind == "parallel":
        return before
    before = before + ctx.hf_at(block.attn_out)
    if norm.feeds == "mlp" and block.cross is not None:
        before = before + ctx.hf_at(block.cross.out)
    return before


def _has_mlp_norm(layer: Layer) -> bool:
    return any(n.feeds_into("mlp") for n in layer.block.norms())


@check(
    "norm_roles",
    statement="each norm's output is what HF feeds the sublayer of its role: ln1 the attention's query projection, "
    "ln2 the MLP's in-projection (a norm shared by a parallel block's sublayers: both), the cross-attention norm "
    "the cross attention, post norms the residual update (× cfg.residual_multiplier), "
    "the final norm the unembedding (encoder: the cross attention's keys); each pre-norm's input is the residual "
    "of its place in a block of the declared kind (parallel: the block input before the MLP too); with no norm "
    "before the MLP (OLMo 2), the MLP's own input is that residual",
    family="norms",
    tolerance=1e-5,
)
def norm_roles(ctx: CheckContext, m: Meter) -> None:
    seen = 0
    for layer in ctx.layers:
        for norm in layer.block.norms():
            fed = _fed(ctx, layer, norm)
            if not fed:
                continue
            seen += 1
            out = ctx.hf_out(norm.module)
            spot = {"attn_out": layer.block.attn_out, "mlp_out": layer.block.mlp_out}.get(norm.feeds)
            if spot is not None and spot.module is norm.module and spot.scale is not None:
                out = out * spot.scale  # a post norm's output enters the residual scaled (HyperCLOVA X)
            for expected in fed:
                what = f"{layer.prefix}.{norm.name} output ({norm.path}) vs {_FEEDS[norm.feeds]}"
                m.compare(what, out.expand_as(expected), expected, f"{norm.field}.path")
            residual = _residual_into(ctx, layer, norm)
            if residual is not None:
                what = f"{layer.prefix}.{norm.name} input vs the {layer.block.kind} block's residual before it"
                m.compare(what, ctx.hf_in(norm.module), residual, f"{layer.block.field}.kind")
        seen += _unnormalized_mlp_input(ctx, layer, m)
    bound = ctx.bound
    for stack in bound.stacks():
        norm = stack.ln_final
        if norm is None:
            continue
        out = ctx.hf_out(norm.module, role=norm.role)
        if stack.name == "encoder":
            cross = next((b.cross for b in bound.blocks if b.cross is not None), None)
            if cross is None:
                continue
            expected, what = ctx.hf_in(cross.attn.projection("k")), "HF's input to the cross attention's keys"
        elif bound.unembed_project is not None:
            expected, what = ctx.hf_in(bound.unembed_project), "HF's input to the unembedding's projection"
        else:
            expected, what = ctx.hf_in(bound.unembed), "HF's input to the unembedding"
            out = out * (bound.unembed_pre_scale or 1.0)
        seen += 1
        m.compare(f"{norm.name} output ({norm.path}) vs {what}", out, expected, f"{norm.field}.path / unembed")
    if not seen:
        raise Skip("this spec declares no norm whose role feeds a sublayer")


def _unnormalized_mlp_input(ctx: CheckContext, layer: Layer, m: Meter) -> int:
    """With no norm before the MLP (OLMo 2 normalizes only sublayer outputs), the MLP reads the residual itself:
    the block input in a parallel block, plus the attention contribution in a sequential one."""
    block = layer.block
    if block.mlp_norm is not None or block.kind == "post_norm" or block.cross is not None or block.mlp.flat_tokens:
        return 0
    residual = ctx.hf_in(block.module)
    if block.kind != "parallel":
        residual = residual + ctx.hf_at(block.attn_out)
    what = f"{layer.prefix}.mlp input (no norm before it) vs the {block.kind} block's residual before the MLP"
    reads = block.mlp.w_in if block.mlp.moe is None else block.mlp.module  # a MoE: the whole MLP reads it (FlexOlmo)
    m.compare(what, ctx.hf_in(reads), residual, f"{block.field}.kind")
    return 1


# The attribute names transformers' MLPs keep their activation under (GPT-2 `act`, Llama `act_fn`, OPT's
# decoder layer `activation_fn`); searched on the MLP module, then on the block.
_ACT_ATTRIBUTES = ("act", "act_fn", "activation_fn", "activation", "hidden_act_fn")


def hf_activation(*modules: nn.Module) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """HF's own activation object or function held by the first of `modules` that holds one."""
    for module in modules:
        for name in _ACT_ATTRIBUTES:
            found = getattr(module, name, None)
            if isinstance(found, nn.Module) or (inspect.isfunction(found) or inspect.isbuiltin(found)):
                return found
    return None


GRID = torch.linspace(-8.0, 8.0, 3201, dtype=torch.float64)


@check(
    "activation_grid",
    statement="the activation the spec names equals HF's own activation module of each MLP on a grid from -8 to 8 "
    "(where the tiny model's pre-activations are too small to tell gelu from its tanh approximation)",
    family="mlp",
    tolerance=1e-6,
)
def activation_grid(ctx: CheckContext, m: Meter) -> None:
    grid = GRID.to(torch.float32)
    seen = 0
    for layer in ctx.layers:
        mlp = layer.block.mlp
        own = hf_activation(mlp.module, layer.block.module)
        if own is None:
            continue
        seen += 1
        with torch.no_grad():
            expected = own(grid.clone())
        m.compare(
            f"{layer.prefix}.mlp: {mlp.act_name} vs HF's {type(own).__name__} on [-8, 8]",
            mlp.act(grid),
            expected,
            mlp.act_field,
        )
    if not seen:
        raise Skip("no MLP holds an activation module or function under a known attribute name")
