"""Attention checks against what HF handed its attention interface on the untouched eager copy:
pattern semantics and probabilities, q/k/v recomputed from the weight views, and z / result /
attn_out recomposed into the attention module's output. Every attention module of every stack is
checked (encoder and decoder self attention, cross attention)."""

from __future__ import annotations

import torch

from ..capture import AttentionCall
from ..catalogue import Meter, Skip, check
from ..context import Attention, CheckContext
from .latent import latent_qkv, norm_by_kind

HEADS = "config.n_heads / config.d_head"


def _call(ctx: CheckContext, attention: Attention, recording=None) -> AttentionCall:
    call = ctx.attention_call(attention, recording)
    if call is None:
        raise Skip(
            "HF never called the attention interface for this model (a model outside AttentionInterface "
            "needs `block.attn.implementation: reimplement`), so there is nothing captured to compare with"
        )
    return call


def _expand_kv(tensor: torch.Tensor, n_heads: int, dim: int) -> torch.Tensor:
    groups = n_heads // tensor.shape[dim] if n_heads % tensor.shape[dim] == 0 else 1
    return tensor if groups == 1 else tensor.repeat_interleave(groups, dim=dim)


def allowed_keys(q_mask: torch.Tensor, k_mask: torch.Tensor, causal: bool, window: int | None) -> torch.Tensor:
    """`[b, 1, q, k]` True where a query may attend a key (causality, the window and key padding)."""
    q_len, k_len = q_mask.shape[1], k_mask.shape[1]
    q_pos = torch.arange(k_len - q_len, k_len)[:, None]
    k_pos = torch.arange(k_len)[None, :]
    allowed = torch.ones(q_len, k_len, dtype=torch.bool)
    if causal:
        allowed &= k_pos <= q_pos
    if window is not None:
        allowed &= q_pos - k_pos < window
    return allowed[None, None] & k_mask.bool()[:, None, None, :]


def softmax_over_keys(scores: torch.Tensor, sinks: torch.Tensor | None) -> torch.Tensor:
    """softmax(scores) over the keys; with sink logits `[heads]`, each row's denominator also holds exp(sink)."""
    if sinks is None:
        return scores.softmax(-1)
    sink = sinks.detach().to(scores.dtype)[None, :, None, None].expand(*scores.shape[:-1], 1)
    return (scores - torch.cat([scores, sink], dim=-1).logsumexp(-1, keepdim=True)).exp()


def spec_softcap(ctx: CheckContext, attention: Attention) -> float | None:
    value = attention.bound.softcap
    return None if value is None else float(value)


def score_scale(ctx: CheckContext) -> float:
    """HookedTransformer's score scale: scores = q·k / cfg.attn_scale."""
    return 1.0 / float(ctx.bridge.cfg.attn_scale)


def stack_bias(ctx: CheckContext, cache, attention: Attention) -> torch.Tensor | None:
    """The layer's (UMT5) or the stack's relative position bias `[1, h, q, k]` from the cache (self attention
    only)."""
    if attention.cross:
        return None
    if attention.bound.score_bias is not None:
        return cache.get(f"{attention.prefix}.hook_rel_pos_bias")
    return cache.get(f"{attention.layer.stack}.hook_rel_pos_bias") if ctx.is_encoder_decoder else None


def _kwargs_agree(ctx: CheckContext, m: Meter, attention: Attention, call: AttentionCall) -> None:
    """The scale, softcap and window the spec declares vs the ones HF passed its attention function."""
    p = attention.prefix
    hf_scaling = call.kwargs.get("scaling")
    if hf_scaling is not None:
        expected = 1.0 if attention.bound.q_prescaled else score_scale(ctx)
        what = "1 (q prescaled by HF)" if attention.bound.q_prescaled else "1 / cfg.attn_scale"
        m.compare(
            f"{p}: {what} vs the scaling HF passed",
            torch.tensor(expected),
            torch.tensor(float(hf_scaling)),
            "config.attn_scale / block.attn.q_prescaled",
        )
    cap = spec_softcap(ctx, attention)
    if "softcap" in call.kwargs or cap is not None:
        hf_cap = call.kwargs.get("softcap")
        m.require(
            cap == (None if hf_cap is None else float(hf_cap)),
            f"{p}: the spec's softcap {cap} vs the softcap HF passed {hf_cap}",
            "block.attn.softcap",
        )
    sinks, hf_sinks = attention.bound.sinks, call.tensors.get("s_aux")
    if sinks is not None or hf_sinks is not None:
        agree = sinks is not None and hf_sinks is not None and torch.equal(sinks.detach(), hf_sinks.detach())
        m.require(agree, f"{p}: the spec's sink logits vs the s_aux HF passed", "block.attn.sinks")
    if "sliding_window" in call.kwargs:
        window = ctx.window(attention)
        m.require(
            window == call.kwargs["sliding_window"],
            f"{p}: the spec's call.window {window} vs the sliding_window HF passed {call.kwargs['sliding_window']}",
            "call.window",
        )


@check(
    "attention_semantics",
    statement="softmax(hook_attn_scores) == hook_pattern (with the sink logits in each row's denominator where the "
    "spec declares sinks), rows sum to 1 (less the sink's share), masked (causal, window and padded) keys "
    "get 0, scores == q·k / cfg.attn_scale (softcap, position bias), scale/softcap/window agree with HF's kwargs, "
    "and the pattern equals HF's eager probabilities from the untouched copy (every attention of every stack)",
    family="attention",
    tolerance=1e-5,
)
def attention_semantics(ctx: CheckContext, m: Meter) -> None:
    cfg = ctx.bridge.cfg
    mask = ctx.padding_mask("right")
    wanted = ("hook_attn_scores", "hook_pattern", "hook_q", "hook_k", "hook_rot_q", "hook_rot_k", "hook_rel_pos_bias")
    _, cache = ctx.bridge_cache(mask, names_filter=lambda n: n.endswith(wanted))
    reference = ctx.reference_run(attention_mask=mask)
    for attention in ctx.attentions:
        call = _call(ctx, attention, reference)
        p = attention.prefix
        scores, pattern = cache[f"{p}.hook_attn_scores"], cache[f"{p}.hook_pattern"]
        _kwargs_agree(ctx, m, attention, call)
        sinks = attention.bound.sinks
        expected = softmax_over_keys(scores, sinks)
        m.compare(
            f"{p}: softmax(hook_attn_scores{' with sinks' if sinks is not None else ''}) vs hook_pattern",
            expected,
            pattern,
            "block.attn.softmax_dtype / block.attn.sinks",
        )
        if pattern.shape != call.weights.shape:  # the head structure is wrong: nothing below can be compared
            m.compare(f"{p}.hook_pattern vs HF's eager probabilities", pattern, call.weights, HEADS)
            continue
        q_mask, k_mask = ctx.masks_of(attention, mask)
        real = q_mask.bool()[:, None, :, None]  # real query rows
        rows = real.expand_as(pattern)
        sums = torch.ones(()).expand(int(rows[..., 0].sum())) if sinks is None else expected.sum(-1)[rows[..., 0]]
        m.compare(
            f"{p}: pattern rows sum (1 less the sink's share)",
            pattern.sum(-1)[rows[..., 0]],
            sums,
            "block.attn.implementation",
        )
        hf_weights = call.weights
        if sinks is not None and torch.allclose(hf_weights.sum(-1)[rows[..., 0]], torch.ones(()), atol=1e-5):
            pattern = pattern / pattern.sum(-1, keepdim=True)  # HF's eager leaves the sink out (Granite SWA)
        allowed = allowed_keys(q_mask, k_mask, ctx.causal(attention), ctx.window(attention))
        blocked = (~allowed & real).expand_as(pattern)
        m.compare(
            f"{p}: pattern at masked keys",
            pattern[blocked],
            torch.zeros(int(blocked.sum())),
            "block.attn.implementation (mask) / call.window",
        )
        m.compare(
            f"{p}.hook_pattern vs HF eager probabilities",
            pattern[rows],
            hf_weights[rows],
            "block.attn.qkv / block.attn.softmax_dtype",
        )
        rot = "rot_" if f"{p}.hook_rot_q" in cache else ""  # q and k after the position transform
        q, k = cache[f"{p}.hook_{rot}q"], _expand_kv(cache[f"{p}.hook_{rot}k"], cfg.n_heads, 2)
        if q.shape[0] != k.shape[0] or q.shape[2:] != k.shape[2:]:
            m.fail(f"{p}: hook_q {tuple(q.shape)} and hook_k {tuple(k.shape)} cannot make scores", HEADS)
            continue
        recomputed = torch.einsum("bqhd,bkhd->bhqk", q, k) * score_scale(ctx)
        cap = spec_softcap(ctx, attention)
        if cap is not None:
            recomputed = torch.tanh(recomputed / cap) * cap
        bias = stack_bias(ctx, cache, attention)
        if bias is not None:
            recomputed = recomputed + bias
        keep = (allowed & real).expand_as(scores)
        m.compare(
            f"{p}: hook_q·hook_k / attn_scale (softcap, bias) vs hook_attn_scores",
            recomputed[keep],
            scores[keep],
            "block.attn.qkv (path / order) / config.attn_scale",
        )


def _pre_position(
    ctx: CheckContext, attention: Attention, n: str, call: AttentionCall
) -> tuple[torch.Tensor, slice, bool]:
    """HF's `n` before rotary `[b, s, heads, d]`, the positions it covers, and whether it is what HF
    passed the interface: the projection's own output for separate projections of a rotary model,
    else the interface's (at position 0 only for a fused rotary projection: rotary is the identity there)."""
    rotary = n in "qk" and not attention.cross and ctx.bridge.position_kind.rotates_qk
    hf = {"q": call.query, "k": call.key, "v": call.value}[n].transpose(1, 2)
    if not rotary:
        return hf, slice(None), True
    if n in attention.bound.qkv:
        out = ctx.hf_out(attention.bound.qkv[n])
        return out.unflatten(-1, (-1, ctx.bridge.cfg.d_head)), slice(None), False
    norm = attention.bound.q_norm if n == "q" else attention.bound.k_norm
    if norm is not None:  # a fused projection's q/k pass a norm before the interface (Persimmon): the norm's input
        seen, layout = ctx.hf_in(norm.module), attention.bound.qk_norm_layout
        if layout == "flat":
            return seen.unflatten(-1, (-1, ctx.bridge.cfg.d_head)), slice(None), False
        return (seen.transpose(1, 2) if layout == "bhsd" else seen), slice(None), False
    return hf, slice(0, 1), True


@check(
    "qkv_recompute",
    statement="q, k and v recomputed from W_Q/b_Q, W_K/b_K, W_V/b_V on HF's attention input, and hook_q/k/v, equal "
    "HF's (projection outputs, or the interface's q/k/v, q divided by attn_scale where HF prescales it); "
    "hook_rot_q/k equal the rotated q/k HF passed its attention interface; latent attention: hook_q, hook_k (k_nope), "
    "hook_v, hook_k_rope and the latents, and the same recomputed from W_Q_a/W_Q_b, W_KV_a/W_K_b/W_V_b, W_K_rope "
    "and the latent norms, equal HF's (rope parts where rotary is the identity, at position 0)",
    family="attention",
    tolerance=1e-5,
)
def qkv_recompute(ctx: CheckContext, m: Meter) -> None:
    cfg = ctx.bridge.cfg
    encoder_out = None
    for attention in ctx.attentions:
        call = _call(ctx, attention)
        p = attention.prefix
        x = ctx.hf_in(attention.bound.module)
        if attention.cross and encoder_out is None:
            encoder_out = ctx.hf_at(ctx.bridge.bound.encoder.output())
        field = "block.cross_attn.attn.qkv" if attention.cross else "block.attn.qkv (path / order) / block.attn.layout"
        if attention.bound.latent is not None:
            latent_qkv(ctx, m, attention, call)
        for n in "qkv" if attention.bound.latent is None else "":
            hook = ctx.cache[f"{p}.hook_{n}"]
            expected, positions, interface = _pre_position(ctx, attention, n, call)
            # HF hands the interface q·(1/attn_scale) where it prescales q (OPT); hook_q is the projection.
            scale = score_scale(ctx) if n == "q" and interface and attention.bound.q_prescaled else 1.0
            shown = hook[:, positions] * scale
            wanted = expected[:, positions]
            f = HEADS if shown.shape != wanted.shape else field
            m.compare(f"{p}.hook_{n} (× {scale:g}) vs HF's {n}", shown, wanted, f)
            w, b = getattr(attention.weights, f"W_{n.upper()}"), getattr(attention.weights, f"b_{n.upper()}")
            source = encoder_out if attention.cross and n in "kv" else x
            recomputed = (torch.einsum("bsm,hmd->bshd", source, w) + b)[:, positions] * scale
            expanded = wanted if n == "q" else _expand_kv(wanted, cfg.n_heads, 2)
            f = HEADS if recomputed.shape != expanded.shape else field
            m.compare(f"{p}: {n} from W_{n.upper()}, b_{n.upper()} vs HF's {n}", recomputed, expanded, f)
        if f"{p}.hook_rot_q" in ctx.cache:
            for n, hf in (("q", call.query), ("k", call.key)):
                hook = ctx.cache[f"{p}.hook_rot_{n}"]
                m.compare(
                    f"{p}.hook_rot_{n} vs the {n} HF passed its attention interface (after rotary)",
                    hook,
                    hf.transpose(1, 2),
                    "pos_embed / block.attn.qkv",
                )


@check(
    "attn_output",
    statement="hook_z equals the attention-interface output HF computed (times act(gate(x)) where the spec has an "
    "out_gate); z·W_O + b_O (o_norm(z)·W_O + b_O where "
    "the spec has an o_norm), Σ_h hook_result + b_O and "
    "hook_attn_out (hook_cross_attn_out) equal the attention module's output (hook_attn_out × cfg.residual_multiplier)",
    family="attention",
    tolerance=1e-5,
)
def attn_output(ctx: CheckContext, m: Meter) -> None:
    for attention in ctx.attentions:
        call = _call(ctx, attention)
        p = attention.prefix
        z = ctx.cache[f"{p}.hook_z"]
        expected_z, gate = call.output, attention.bound.out_gate
        if gate is not None:  # AFMoE: z is the interface output times act(gate(x)), by the bound activation
            flat = gate.apply(expected_z.flatten(-2), ctx.hf_out(gate.module))
            expected_z = flat.unflatten(-1, expected_z.shape[-2:])
        blame = f"{HEADS} / block.attn.o_norm / block.attn.out_gate"
        m.compare(f"{p}.hook_z vs HF's attention output per head", z, expected_z, blame)
        hf_out = ctx.hf_out(attention.bound.o)
        weights = attention.weights
        o_norm = attention.bound.o_norm
        if o_norm is not None:  # BitNet: the sub-norm (by its kind) over all heads' z comes before W_O
            z = norm_by_kind(o_norm, z.flatten(-2)).unflatten(-1, z.shape[-2:])
        recomposed = torch.einsum("bshd,hdm->bsm", z, weights.W_O) + weights.b_O
        label = f"{p}: {'o_norm(hook_z)' if o_norm is not None else 'hook_z'}·W_O + b_O vs HF's output projection"
        m.compare(label, recomposed, hf_out, "block.attn.o / o_norm / layout")
        summed = ctx.cache[f"{p}.hook_result"].sum(-2) + weights.b_O
        m.compare(f"{p}: Σ_h hook_result + b_O vs HF's output projection", summed, hf_out, "block.attn.o")
        m.compare(
            f"{attention.out_name} vs HF attention contribution (after its post-norm, if any)",
            ctx.cache[attention.out_name],
            ctx.hf_at(attention.contribution),
            f"{attention.layer.block.field}.attn.output_index / attn_out_at / ln1_post",
        )
