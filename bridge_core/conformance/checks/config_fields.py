"""Config-field checks: every normalized config field a hook, a view or a processing step reads (and the
bound settings evaluated beside them) compared with what HF itself does, never with the spec.

HF's side comes from its own forward: the shapes and keyword arguments of each captured attention call
(`scaling`, `softcap`, `sliding_window`), each norm module's own eps, the rotary module's frequencies,
and the logits of a forward whose unembedding output was scaled up (the final softcap).
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Any

import torch

from ...bridge.moe import expert_weights
from ..catalogue import Meter, check
from ..context import CheckContext

_RTOL = 1e-6


def _same(m: Meter, what: str, ours: Any, hf: Any, field: str) -> None:
    """A numbers-or-None comparison: equal up to a relative 1e-6, or both absent."""
    if ours is None or hf is None:
        m.require(ours is None and hf is None, f"{what}: the spec gives {ours!r} where HF uses {hf!r}", field)
        return
    close = math.isclose(float(ours), float(hf), rel_tol=_RTOL, abs_tol=1e-12)
    m.require(close, f"{what}: the spec gives {float(ours):.6g} where HF uses {float(hf):.6g}", field)


def _effective_scaling(ctx: CheckContext, attention, call) -> float | None:
    """The factor HF multiplies q·k by: the call's `scaling` (eager's default d_head**-0.5), times what HF
    multiplied q by before the call when the spec says q is pre-scaled (OPT)."""
    scaling = call.kwargs.get("scaling")
    scaling = call.query.shape[-1] ** -0.5 if scaling is None else float(scaling)
    if not attention.bound.q_prescaled:
        return scaling
    if attention.bound.fused or ctx.bridge.position_kind.rotates_qk:
        return None  # the raw query cannot be told apart from the pre-scale here
    raw = ctx.hf_out(attention.bound.qkv["q"])
    return scaling * float(call.query.abs().sum() / raw.abs().sum())


@check(
    "config_fields",
    statement="normalized config fields and the settings bound beside them equal what HF does: n_heads, n_kv_heads "
    "and d_head the shapes HF hands attention; attn_scale the scaling HF applies; attn_softcap / window the "
    "softcap and sliding window HF passes each layer; eps each norm module's eps; n_ctx the usable rows of a "
    "learned position table; rotary_dim the rotary module's frequencies;"
    " d_mlp, d_model, d_vocab HF's tensors; residual_multiplier HF's residual update over each sublayer output; "
    "logit_scale HF's logits over the unembedding's output; final_softcap HF's logits on large inputs",
    family="config",
    tolerance=1e-5,
)
def config_fields(ctx: CheckContext, m: Meter) -> None:
    cfg, bound = ctx.bridge.cfg, ctx.bound
    extra = cfg.extra
    for attention in ctx.attentions:
        call = ctx.attention_call(attention)
        if call is None:
            continue
        p = attention.prefix
        _same(m, f"{p}: n_heads", cfg.n_heads, call.query.shape[1], "config.n_heads")
        _same(m, f"{p}: n_kv_heads", cfg.n_kv_heads, call.key.shape[1], "config.n_kv_heads")
        _same(m, f"{p}: d_head", cfg.d_head, call.query.shape[-1], "config.d_head")
        scaling = _effective_scaling(ctx, attention, call)
        if scaling is not None:
            _same(
                m, f"{p}: attn_scale (scores are q·k / attn_scale)", cfg.attn_scale, 1.0 / scaling, "config.attn_scale"
            )
        hf_softcap = call.kwargs.get("softcap")
        _same(
            m,
            f"{p}: the attention softcap bound",
            attention.bound.softcap,
            hf_softcap,
            f"{attention.bound.field}.softcap",
        )
        if not attention.cross and ("attn_softcap" in extra or hf_softcap is not None):
            _same(m, f"{p}: config attn_softcap", extra.get("attn_softcap"), hf_softcap, "config.attn_softcap")
        if not attention.cross and attention.layer.stack == "decoder":
            window = call.kwargs.get("sliding_window")
            _same(m, f"{p}: sliding window", ctx.window(attention), window, "call.window")
            if window is not None:  # TransformerLens code reads the window from cfg
                _same(m, f"{p}: config sliding_window", extra.get("sliding_window"), window, "config.sliding_window")
    for layer in ctx.layers:
        for norm in layer.block.norms():
            module_eps = norm.kind.eps(norm.module)
            if module_eps is not None:  # an absent cfg.eps is wrong too: TransformerLens code reads cfg.eps
                _same(m, f"{layer.prefix}.{norm.name}: eps", cfg.eps, module_eps, "config.eps")
        moe = layer.block.mlp.moe  # a mixture of experts: d_mlp is each expert's width (HookedTransformer's)
        width = ctx.hf_out(layer.block.mlp.w_in).shape[-1] if moe is None else expert_weights(moe, 0)[1].shape[0]
        if moe is None and layer.block.mlp.gate_up_views is not None:  # HF chunks a fused gate|up output in two
            width //= 2
        if moe is not None and moe.d_mlp is not None:  # experts narrower than the dense layers (DeepSeek)
            _same(m, f"{layer.prefix}: experts' d_mlp", moe.d_mlp, width, "block.mlp.moe.d_mlp")
        else:
            _same(m, f"{layer.prefix}: d_mlp", cfg.d_mlp, width, "config.d_mlp")
        _same(m, f"{layer.prefix}: d_model", cfg.d_model, ctx.hf_in(layer.block.module).shape[-1], "config.d_model")
    _same(m, "d_vocab", cfg.d_vocab, ctx.reference.logits.shape[-1], "config.d_vocab")
    table = getattr(bound.pos_embed, bound.position_kind.table_attr, None)
    if isinstance(table, torch.Tensor) and bound.position_kind.has_table:
        # learned positions: n_ctx is the table's usable rows (inputs beyond them are refused, not indexed)
        rows = int(table.shape[0]) - bound.pos_offset
    elif bound.position_kind.rotates_qk and isinstance(getattr(bound.pos_embed, "original_max_seq_len", None), int):
        rows = bound.pos_embed.original_max_seq_len  # the rotary module's own context length
    elif bound.position_kind.rotates_qk and isinstance(getattr(bound.pos_embed, "max_positions", None), int):
        rows = bound.pos_embed.max_positions  # GPT-J's sinusoid table
    else:
        rows = None
    if rows is not None:
        _same(m, "n_ctx (the position table's rows, or the rotary module's context)", cfg.n_ctx, rows, "config.n_ctx")
    inv_freq = getattr(bound.pos_embed, "inv_freq", None)
    sinusoids = getattr(bound.pos_embed, "embed_positions", None)  # GPT-J: a [positions, rotary_dim] sin|cos table
    if isinstance(inv_freq, torch.Tensor) and ctx.bridge.position_kind.rotates_qk:
        rotary = extra.get("rotary_dim", cfg.d_head)
        _same(
            m, "rotary_dim (twice the rotary module's frequencies)", rotary, 2 * inv_freq.shape[-1], "config.rotary_dim"
        )
    elif isinstance(sinusoids, torch.Tensor) and ctx.bridge.position_kind.rotates_qk:
        rotary = extra.get("rotary_dim", cfg.d_head)
        width = sinusoids.shape[-1]
        _same(m, "rotary_dim (the rotary module's sin|cos table width)", rotary, width, "config.rotary_dim")
    _residual_multiplier(ctx, m)
    _logit_scale(ctx, m)
    _final_softcap(ctx, m)


def _ratio(value: torch.Tensor, base: torch.Tensor) -> float | None:
    """The factor `value` is of `base` (least squares, float64); None when `base` is (nearly) zero."""
    value, base = value.double().reshape(-1), base.double().reshape(value.shape).reshape(-1)
    norm = float(base @ base)
    return None if norm < 1e-12 else float(value @ base) / norm


def _proportional_factor(value: torch.Tensor, base: torch.Tensor) -> float | None:
    """The factor when `value` is `base` times a non-zero number (to 1e-4 of its size); else None: then the
    spots do not hold the update and its summand (a structural mistake the residual checks blame)."""
    factor = _ratio(value, base)
    if factor is None:
        return None
    value, base = value.double().reshape(-1), base.double().reshape(-1)
    size = float(value.norm())
    if size <= 1e-6 * float(base.norm()) or float((value - factor * base).norm()) > 1e-4 * size:
        return None
    return factor


def _residual_multiplier(ctx: CheckContext, m: Meter) -> None:
    """HF's residual updates over the sublayer outputs they add (read at the bound spots, unscaled): the factor
    is config.residual_multiplier (Granite multiplies each sublayer output before the add; others by 1)."""
    multiplier = ctx.bridge.cfg.residual_multiplier
    for layer in ctx.layers:
        block = layer.block
        if block.kind == "post_norm" or block.cross is not None:
            continue  # the residual is renormalized, or a third contribution joins it
        raw_attn = ctx.hf_at(replace(block.attn_out, scale=None))
        raw_mlp = ctx.hf_at(replace(block.mlp_out, scale=None)).reshape(raw_attn.shape)
        block_in, block_out = ctx.hf_in(block.module), ctx.hf_at(block.resid_post)
        if block.resid_mid is not None:
            mid = ctx.hf_at(block.resid_mid)
            updates = [("attention", mid - block_in, raw_attn), ("MLP", block_out - mid, raw_mlp)]
        else:  # parallel: one update of both outputs
            updates = [("attention + MLP", block_out - block_in, raw_attn + raw_mlp)]
        for what, update, raw in updates:
            factor = _proportional_factor(update, raw.reshape(update.shape))
            if factor is not None:
                label = f"{layer.prefix}: residual_multiplier (HF's residual update over the {what} output)"
                _same(m, label, multiplier, factor, "config.residual_multiplier")


def _logit_scale(ctx: CheckContext, m: Meter) -> None:
    """HF's logits over its unembedding's output (without a final softcap; with one, `_final_softcap` reads it)."""
    bound = ctx.bound
    if bound.final_softcap is not None or "final_softcap" in ctx.bridge.cfg.extra:
        return
    unembedded = ctx.reference.outputs[ctx.name_of(bound.unembed)]
    if bound.unembed_bias is not None:  # BART's final_logits_bias is added before any scale
        unembedded = unembedded + bound.unembed_bias
    factor = _ratio(ctx.reference.logits, unembedded)
    what = "logit_scale (HF's logits over the unembedding's output)"
    _same(m, what, ctx.bridge.cfg.logit_scale, factor, "config.logit_scale")


def _final_softcap(ctx: CheckContext, m: Meter) -> None:
    """Scale the unembedding's output up 50-fold in a forward of the copy: HF's logits then show its softcap
    (c·tanh(x/c) saturates at ±c), which the bound softcap and the config field must reproduce."""
    bound = ctx.bound
    name = ctx.name_of(bound.unembed)
    edited = ctx.reference_run(edits=[(name, "post", lambda module, args, out: out * 50.0)], capture=False)
    raw = edited.outputs[name] * 50.0
    if bound.unembed_bias is not None:  # added before any softcap (BART's final_logits_bias)
        raw = raw + bound.unembed_bias
    raw = raw * (bound.logit_scale or 1.0)  # logits are scaled before the softcap

    def capped(cap: float | None) -> torch.Tensor:
        return raw if cap is None else torch.tanh(raw / cap) * cap

    hf = edited.logits
    scale = 1e-5 * max(1.0, float(hf.abs().max()))
    m.compare(
        "logits of a 50-fold unembedding output vs the bound final softcap",
        capped(bound.final_softcap),
        hf,
        "unembed.softcap / unembed.bias",
        tolerance=scale,
    )
    if "final_softcap" in ctx.bridge.cfg.extra or bound.final_softcap is not None:
        field_cap = ctx.bridge.cfg.extra.get("final_softcap")
        m.compare(
            "logits of a 50-fold unembedding output vs config final_softcap",
            capped(field_cap),
            hf,
            "config.final_softcap",
            tolerance=scale,
        )
