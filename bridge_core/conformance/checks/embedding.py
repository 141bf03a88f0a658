"""Embedding checks: token embeddings (scaled), learned positions and the unembedding (pre-scale and
final softcap), compared with HF's residual at the first block and HF's logits on the untouched copy."""

from __future__ import annotations

import torch

from ..catalogue import Meter, Skip, check
from ..context import CheckContext


def _token_parts(ctx: CheckContext) -> list[tuple[str, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]]:
    """(hook name, W_E, tokens, HF's scaled token embedding, HF's token part of the residual at block 0) of
    each stack. With an embedding norm, the scaled embedding is the norm's input; without, both are the
    residual at block 0 minus what HF's position module added."""
    bound, bridge = ctx.bound, ctx.bridge
    if bound.encoder is not None:
        encoder = ctx.hf_in(bound.encoder.blocks[0].module)
        decoder = ctx.hf_in(bound.blocks[0].module)
        return [
            ("hook_embed", bound.encoder.embed.weight, ctx.tokens, encoder, encoder),
            ("decoder.hook_embed", bridge.W_E, ctx.decoder_tokens, decoder, decoder),
        ]
    residual0 = ctx.hf_in(bound.blocks[0].module)
    learned = bound.pos_embed is not None and bound.position_kind.has_table
    token_part = residual0 - ctx.hf_out(bound.pos_embed) if learned else residual0
    scaled = token_part if bound.embed_norm is None else ctx.hf_in(bound.embed_norm.module)
    if bound.embed_project is not None:  # hook_embed is the narrow embedding HF feeds project_in (OPT-350m)
        narrow = ctx.hf_in(bound.embed_project)
        parts = [("hook_embed", bridge.W_E, ctx.tokens, narrow, narrow)]
        return [*parts, ("hook_project_in", None, ctx.tokens, token_part, token_part)]
    return [("hook_embed", bridge.W_E, ctx.tokens, scaled, token_part)]


@check(
    "embed",
    statement="W_E[tokens] * cfg.embed_scale equals HF's token embedding (before an embedding norm, if any) and "
    "hook_embed equals the token part of HF's residual at block 0 (of each stack)",
    family="embedding",
    tolerance=1e-5,
)
def embed(ctx: CheckContext, m: Meter) -> None:
    cfg = ctx.bridge.cfg
    for name, w_e, tokens, scaled, token_part in _token_parts(ctx):
        if w_e is None:  # a projection of the embedding: only its hook is compared
            m.compare(
                f"{name} vs HF's residual at block 0 (minus positions)", ctx.cache[name], token_part, "embed.project"
            )
            continue
        m.compare(
            f"{name}: W_E[tokens] * cfg.embed_scale vs HF's token embedding",
            w_e[tokens] * cfg.embed_scale,
            scaled,
            "embed.path / config.embed_scale",
        )
        m.compare(
            f"{name} vs HF's residual at block 0 (minus positions)",
            ctx.cache[name],
            token_part,
            "embed.path / embed.norm / embed.scale_at",
        )


@check(
    "pos_embed",
    statement="W_pos[positions] and hook_pos_embed equal what HF added to the token embeddings for positions",
    family="embedding",
    tolerance=1e-5,
)
def pos_embed(ctx: CheckContext, m: Meter) -> None:
    bridge = ctx.bridge
    if bridge.bound.pos_embed is None or not bridge.bound.position_kind.has_table:
        raise Skip("this spec has no learned position table (positions enter inside attention, or not at all)")
    residual0 = ctx.hf_in(bridge.bound.blocks[0].module)
    if bridge.bound.embed_project is not None:
        pos_part = residual0 - ctx.hf_out(bridge.bound.embed_project)
    else:
        pos_part = residual0 - ctx.reference.outputs[ctx.embedding_name]
    seq = ctx.tokens.shape[1]
    w_pos = bridge.W_pos
    m.require(
        w_pos.shape[0] >= seq,
        f"W_pos has {w_pos.shape[0]} rows, fewer than the {seq} test positions",
        "pos_embed.offset / config.n_ctx",
    )
    if w_pos.shape[0] >= seq:
        m.compare(
            "W_pos[positions] vs HF's positional contribution",
            w_pos[:seq].expand_as(pos_part),
            pos_part,
            "pos_embed.offset / pos_embed.path",
        )
    hook = ctx.cache["hook_pos_embed"]
    m.compare("hook_pos_embed vs HF's positional contribution", hook.expand_as(pos_part), pos_part, "pos_embed.path")


@check(
    "unembed",
    statement="HF's final-norm output (× unembed.pre_scale) · W_U + b_U, and hook_unembed, times cfg.logit_scale and "
    "with the spec's final softcap c·tanh(x/c) applied, equal HF's logits (hook_unembed is before both)",
    family="embedding",
    tolerance=1e-5,
)
def unembed(ctx: CheckContext, m: Meter) -> None:
    bridge, bound = ctx.bridge, ctx.bound
    final = ctx.hf_out(bound.ln_final.module) if bound.ln_final is not None else ctx.hf_out(bound.blocks[-1].module)
    if bound.unembed_project is not None:
        final = ctx.hf_out(bound.unembed_project)
    if bound.unembed_pre_scale is not None:
        final = final * float(bound.unembed_pre_scale)
    cap = None if bound.final_softcap is None else float(bound.final_softcap)

    def capped(x: torch.Tensor) -> torch.Tensor:
        return x if cap is None else torch.tanh(x / cap) * cap

    logit_scale = bound.logit_scale or 1.0  # HF multiplies the unembedding's output (Cohere, Granite)
    logits = ctx.reference.logits
    recomposed = final @ bridge.W_U + bridge.b_U
    m.compare(
        "final residual (× pre_scale) · W_U + b_U, × logit_scale, softcapped, vs HF logits",
        capped(recomposed * logit_scale),
        logits,
        "unembed.path / unembed.pre_scale / config.logit_scale / unembed.softcap",
    )
    hook = ctx.cache["hook_unembed"]
    m.compare("hook_unembed vs the recomposition before the softcap", hook, recomposed, "unembed.path")
    m.compare(
        "hook_unembed × logit_scale, softcapped, vs HF logits",
        capped(hook * logit_scale),
        logits,
        "unembed.path / config.logit_scale / unembed.softcap",
    )
