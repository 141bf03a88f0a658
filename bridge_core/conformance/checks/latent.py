"""Latent attention (MLA) inside the attention checks: q, k, v and the latents recomputed from the factored
weight views and the latent norms' kinds, against what HF computed on the untouched copy (its projection
outputs and the q, k, v it handed its attention interface). Called by `qkv_recompute`; the expected
weight-view shapes for `shapes`."""

from __future__ import annotations

from typing import Any

import torch

from ...bridge.bound import BoundLatent, BoundNorm
from ..capture import AttentionCall
from ..catalogue import Meter
from ..context import Attention, CheckContext

FIELD = "block.attn.qkv (kind: latent) / config.d_head / config.rotary_dim / config.d_head_v / qkv.rope_deinterleave"


def latent_weight_shapes(prefix: str, latent: BoundLatent, cfg: Any) -> dict[str, tuple[tuple[int, ...], str]]:
    """The factored weight views of a latent attention and the shapes the config gives them."""
    h, dm, d = cfg.n_heads, cfg.d_model, cfg.d_head
    extra = cfg.extra
    rope, dv, kv_rank = extra.get("rotary_dim"), extra.get("d_head_v"), extra.get("kv_lora_rank")
    field = "config.kv_lora_rank / config.rotary_dim / config.d_head_v"
    shapes = {
        f"{prefix}.W_KV_a": ((dm, kv_rank), field),
        f"{prefix}.W_K_rope": ((dm, rope), field),
        f"{prefix}.W_K_b": ((h, kv_rank, d - rope), field),
        f"{prefix}.W_V_b": ((h, kv_rank, dv), field),
        f"{prefix}.W_O": ((h, dv, dm), "config.n_heads / config.d_head_v"),
        f"{prefix}.b_O": ((dm,), "block.attn.o"),
    }
    if latent.q_a is not None:
        q_rank = extra.get("q_lora_rank")
        shapes[f"{prefix}.W_Q_a"] = ((dm, q_rank), "config.q_lora_rank")
        shapes[f"{prefix}.W_Q_b"] = ((h, q_rank, d), "config.q_lora_rank / config.d_head")
    else:
        shapes[f"{prefix}.W_Q"] = ((h, dm, d), "config.n_heads / config.d_head")
    return shapes


def norm_by_kind(norm: BoundNorm, x: torch.Tensor) -> torch.Tensor:
    """A norm by its bound kind and the module's own eps (latent norms: HF builds them with the default eps;
    BitNet's sub-norms before the output projections)."""
    kind, module = norm.kind, norm.module
    prepared = kind.prepare(x)
    normalized = prepared / kind.scale(prepared, kind.eps(module))
    w, b = kind.weight(module), kind.bias(module)
    out = normalized if w is None else normalized * (w + kind.weight_offset)
    return (out if b is None else out + b).to(x.dtype)


def _plus(x: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    return x if bias is None else x + bias


def latent_qkv(ctx: CheckContext, m: Meter, attention: Attention, call: AttentionCall) -> None:
    """hook_q / hook_k / hook_v / hook_k_rope and the latents, recomputed from the factored views, vs HF.

    HF rotates only the rope parts, so the interface's q and k still hold the nope parts unrotated, and
    at position 0 (rotary is the identity there) the rope parts too: that pins the [nope | rope] order.
    """
    p, latent, w = attention.prefix, attention.bound.latent, attention.weights
    cache = ctx.cache
    x = ctx.hf_in(attention.bound.module)
    nope = latent.d_nope
    hf_q, hf_k, hf_v = (t.transpose(1, 2) for t in (call.query, call.key, call.value))  # [b, s, h, d]
    if latent.q_a is not None:
        q_latent = norm_by_kind(latent.q_a_norm, _plus(x @ w.W_Q_a, w.b_Q_a))
        m.compare(
            f"{p}.hook_q_latent vs HF's q_a_norm output",
            cache[f"{p}.hook_q_latent"],
            ctx.hf_out(latent.q_a_norm.module),
            FIELD,
        )
        m.compare(
            f"{p}: q latent from W_Q_a, b_Q_a and q_a_norm vs HF's",
            q_latent,
            ctx.hf_out(latent.q_a_norm.module),
            "block.attn.qkv.q_a_norm / config.q_lora_rank",
        )
        q = torch.einsum("bsr,hrd->bshd", q_latent, w.W_Q_b)
    else:
        q = torch.einsum("bsm,hmd->bshd", x, w.W_Q) + w.b_Q
    kv_latent = norm_by_kind(latent.kv_a_norm, _plus(x @ w.W_KV_a, w.b_KV_a))
    k_rope = _plus(x @ w.W_K_rope, w.b_K_rope)
    k_nope = torch.einsum("bsr,hrd->bshd", kv_latent, w.W_K_b)
    v = torch.einsum("bsr,hrd->bshd", kv_latent, w.W_V_b)
    hf_kv_latent = ctx.hf_out(latent.kv_a_norm.module)
    m.compare(f"{p}.hook_kv_latent vs HF's kv_a_norm output", cache[f"{p}.hook_kv_latent"], hf_kv_latent, FIELD)
    m.compare(
        f"{p}: kv latent from W_KV_a, b_KV_a and kv_a_norm vs HF's",
        kv_latent,
        hf_kv_latent,
        "block.attn.qkv.kv_a_norm / config.kv_lora_rank",
    )
    # the non-rotary parts, at every position: HF hands them over unrotated
    for name, recomputed, hf in (
        ("hook_q", q[..., :nope], hf_q[..., :nope]),
        ("hook_k", k_nope, hf_k[..., :nope]),
        ("hook_v", v, hf_v),
    ):
        hook = cache[f"{p}.{name}"]
        m.compare(
            f"{p}.{name} vs HF's (q: its non-rotary part)", hook[..., :nope] if name == "hook_q" else hook, hf, FIELD
        )
        m.compare(f"{p}: {name} from the factored weight views vs HF's", recomputed, hf, FIELD)
    # position 0: rotary is the identity, so the rope parts are visible as HF handed them over (reordered to
    # [even dims | odd dims] where HF de-interleaves them as it rotates)
    first = slice(0, 1)
    order = torch.arange(latent.d_rope, device=hf_q.device)
    if latent.rope_deinterleave:
        order = torch.cat([order[0::2], order[1::2]])
    m.compare(
        f"{p}.hook_q rope part at position 0 vs HF's",
        cache[f"{p}.hook_q"][:, first, :, nope:][..., order],
        hf_q[:, first, :, nope:],
        FIELD,
    )
    shared = cache[f"{p}.hook_k_rope"][:, first, None, order].expand_as(hf_k[:, first, :, nope:])
    m.compare(
        f"{p}.hook_k_rope at position 0 vs the rope part of every head's key HF handed over",
        shared,
        hf_k[:, first, :, nope:],
        FIELD,
    )
    m.compare(f"{p}: k_rope from W_K_rope vs hook_k_rope", k_rope, cache[f"{p}.hook_k_rope"], FIELD)
