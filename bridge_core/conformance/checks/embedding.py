"""Embedding checks: token embeddings (scaled), learned positions and the unembedding (pre-scale and
final softcap), compared with HF's residual at the first block and HF's logits on the untouched copy."""

from __future__ import annotations

import torch

from ...bridge.bound import BoundStack
from ..catalogue import Meter, Skip, check
from ..context import CheckContext


def _summed(ctx: CheckContext, stack: BoundStack) -> torch.Tensor:
    """HF's embeddings plus positions of a stack: the embedding norm's input when the norm comes after the
    position add (BART), else the residual at the stack's first block."""
    if stack.embed_norm is not None and stack.norm_after_pos:
        return ctx.hf_in(stack.embed_norm.module)
    return ctx.hf_in(stack.blocks[0].module)


def _has_table(stack: BoundStack) -> bool:
    return stack.pos_embed is not None and stack.position_kind is not None and stack.position_kind.has_table


def _stack_part(ctx: CheckContext, stack: BoundStack, name: str, tokens: torch.Tensor, w_e: torch.Tensor):
    summed = _summed(ctx, stack)
    token_part = summed - ctx.hf_out(stack.pos_embed) if _has_table(stack) else summed
    before_pos_norm = stack.embed_norm is not None and not stack.norm_after_pos
    scaled = ctx.hf_in(stack.embed_norm.module) if before_pos_norm else token_part
    return (name, w_e, tokens, scaled, token_part, stack.token_scale)


def _token_parts(ctx: CheckContext) -> list[tuple]:
    """(hook name, W_E, tokens, HF's scaled token embedding, HF's token part of the residual at block 0, the
    stack's embedding scale) of each stack. With an embedding norm before the positions, the scaled embedding
    is the norm's input; otherwise both are HF's embeddings plus positions (the residual at block 0, or the input
    of a norm after the position add) minus what HF's position module added."""
    bound, bridge = ctx.bound, ctx.bridge
    if bound.encoder is not None:
        return [
            _stack_part(ctx, bound.encoder, "hook_embed", ctx.tokens, bound.encoder.embed.weight),
            _stack_part(ctx, bound.decoder, "decoder.hook_embed", ctx.decoder_tokens, bridge.W_E),
        ]
    if bound.embed_project is not None:  # hook_embed is the narrow embedding HF feeds project_in (OPT-350m)
        token_part = _stack_part(ctx, bound.decoder, "hook_embed", ctx.tokens, bridge.W_E)[4]
        narrow = ctx.hf_in(bound.embed_project)
        parts = [("hook_embed", bridge.W_E, ctx.tokens, narrow, narrow, bound.embed_scale)]
        return [*parts, ("hook_project_in", None, ctx.tokens, token_part, token_part, bound.embed_scale)]
    return [_stack_part(ctx, bound.decoder, "hook_embed", ctx.tokens, bridge.W_E)]


@check(
    "embed",
    statement="W_E[tokens] times the stack's embedding scale (config.embed_scale, or the stack's embed.scale) "
    "equals HF's token embedding (before an embedding norm, if any) and "
    "hook_embed equals the token part of HF's residual at block 0 (of each stack); a norm after the position add "
    "(BART) takes embeddings + positions and its output is the first block's input",
    family="embedding",
    tolerance=1e-5,
)
def embed(ctx: CheckContext, m: Meter) -> None:
    for name, w_e, tokens, scaled, token_part, scale in _token_parts(ctx):
        if w_e is None:  # a projection of the embedding: only its hook is compared
            m.compare(
                f"{name} vs HF's residual at block 0 (minus positions)", ctx.cache[name], token_part, "embed.project"
            )
            continue
        m.compare(
            f"{name}: W_E[tokens] * embedding scale ({scale:.4g}) vs HF's token embedding",
            w_e[tokens] * scale,
            scaled,
            "embed.path / config.embed_scale / embed.scale / embed.norm_after_pos",
        )
        m.compare(
            f"{name} vs HF's residual at block 0 (minus positions)",
            ctx.cache[name],
            token_part,
            "embed.path / embed.norm / embed.scale_at",
        )
    for stack in ctx.bound.stacks():  # a norm after the position add: its output is the first block's input
        if stack.embed_norm is not None and stack.norm_after_pos:
            m.compare(
                f"{stack.embed_norm.name} output vs HF's input to the stack's first block",
                ctx.hf_out(stack.embed_norm.module),
                ctx.hf_in(stack.blocks[0].module),
                f"{stack.embed_norm.field}.path / embed.norm_after_pos",
            )


@check(
    "pos_embed",
    statement="W_pos[positions] and hook_pos_embed equal what HF added to the token embeddings for positions (to "
    "the embedding norm's output when the norm comes before the position add; sinusoidal_from_ids: the table read "
    "at positions counted from the token ids, pad tokens at the padding row)",
    family="embedding",
    tolerance=1e-5,
)
def pos_embed(ctx: CheckContext, m: Meter) -> None:
    bridge, bound = ctx.bridge, ctx.bound
    stacks = [s for s in bound.stacks() if _has_table(s)]
    if not stacks:
        raise Skip("this spec has no learned position table (positions enter inside attention, or not at all)")
    for stack in stacks:
        encoder_decoder = bound.encoder is not None
        prefix = "decoder." if encoder_decoder and stack.name == "decoder" else ""
        field = "encoder.pos_embed" if stack.name == "encoder" else "pos_embed"
        summed = _summed(ctx, stack)
        if stack.embed_norm is not None and not stack.norm_after_pos:  # positions join the norm's output
            pos_part = summed - ctx.hf_out(stack.embed_norm.module)  # (BlenderbotSmall's decoder)
        elif not encoder_decoder and bound.embed_project is not None:
            pos_part = summed - ctx.hf_out(bound.embed_project)
        elif encoder_decoder:
            pos_part = summed - ctx.hf_out(stack.embed) * (stack.embed_scale or 1.0)  # scale_at: forward (Marian)
        else:
            pos_part = summed - ctx.reference.outputs[ctx.embedding_name] * (stack.embed_scale or 1.0)
        seq = ctx.seq_of(stack.name)
        if stack is bound.decoder:
            w_pos = bridge.W_pos
        else:
            w_pos = stack.position_kind.table_rows(
                getattr(stack.pos_embed, stack.position_kind.table_attr), stack.pos_offset, bridge.cfg.n_ctx
            )
        m.require(
            w_pos.shape[0] >= seq,
            f"{prefix}W_pos has {w_pos.shape[0]} rows, fewer than the {seq} test positions",
            f"{field}.offset / config.n_ctx",
        )
        if stack.position_kind.from_ids:  # M2M100: pad tokens keep the padding row, the others count from offset
            table = getattr(stack.pos_embed, stack.position_kind.table_attr)
            tokens = ctx.decoder_tokens if encoder_decoder and stack.name == "decoder" else ctx.tokens
            pad = stack.pos_offset - 1
            real = (tokens != pad).long()
            expected = table[(real.cumsum(-1) * real + pad).clamp(min=0)]
            m.compare(
                f"{stack.name} table[positions counted from the ids] vs HF's positional contribution",
                expected,
                pos_part,
                f"{field}.offset / {field}.kind",
            )
        elif w_pos.shape[0] >= seq:
            m.compare(
                f"{stack.name} W_pos[positions] vs HF's positional contribution",
                w_pos[:seq].expand_as(pos_part),
                pos_part,
                f"{field}.offset / {field}.path",
            )
        hook = ctx.cache[f"{prefix}hook_pos_embed"]
        what = f"{prefix}hook_pos_embed vs HF's positional contribution"
        m.compare(what, hook.expand_as(pos_part), pos_part, f"{field}.path")


@check(
    "unembed",
    statement="HF's final-norm output (× unembed.pre_scale) · W_U + b_U, and hook_unembed, times cfg.logit_scale and "
    "with the spec's final softcap c·tanh(x/c) applied, equal HF's logits (hook_unembed is before both, and before "
    "a final logits bias, unembed.bias, which b_U includes)",
    family="embedding",
    tolerance=1e-5,
)
def unembed(ctx: CheckContext, m: Meter) -> None:
    bridge, bound = ctx.bridge, ctx.bound
    ln = bound.ln_final
    final = ctx.hf_out(ln.module, role=ln.role) if ln is not None else ctx.hf_out(bound.blocks[-1].module)
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
        "unembed.path / unembed.pre_scale / config.logit_scale / unembed.softcap / unembed.bias",
    )
    hook = ctx.cache["hook_unembed"]
    if bound.unembed_bias is not None:  # hook_unembed is the unembedding's output, before the final bias
        hook = hook + bound.unembed_bias
    m.compare("hook_unembed (+ unembed.bias) vs the recomposition before the softcap", hook, recomposed, "unembed.path")
    m.compare(
        "hook_unembed (+ unembed.bias) × logit_scale, softcapped, vs HF logits",
        capped(hook * logit_scale),
        logits,
        "unembed.path / config.logit_scale / unembed.softcap",
    )
