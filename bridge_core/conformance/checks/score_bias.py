"""Score-bias checks (T5's relative position buckets; UMT5's per layer): `{stack}.hook_rel_pos_bias` equals the
position_bias HF passed its attention interface and the bias the spec's score-bias kind computes from
its declared buckets, distance and direction; an edit there moves every layer's scores by exactly it."""

from __future__ import annotations

import torch

from ...bridge.bound import BoundScoreBias
from ..catalogue import Meter, Skip, check
from ..context import CheckContext
from .attention import allowed_keys


def _biases(ctx: CheckContext) -> list[tuple[str, str, str, BoundScoreBias, list]]:
    """(stack name, hook name, spec field, score bias, the self attentions it reaches) of each score bias with a
    hook point: one per stack (T5), or one per layer (`score_bias.per_layer`: UMT5)."""
    found = []
    for stack in ctx.bound.stacks():
        field = "encoder.score_bias" if stack.name == "encoder" else "score_bias"
        attentions = [a for a in ctx.attentions if a.layer.stack == stack.name and not a.cross]
        if stack.score_bias is not None and f"{stack.name}.hook_rel_pos_bias" in ctx.bridge.hook_dict:
            found.append((stack.name, f"{stack.name}.hook_rel_pos_bias", field, stack.score_bias, attentions))
        for attention in attentions:
            bias, name = attention.bound.score_bias, f"{attention.prefix}.hook_rel_pos_bias"
            if bias is not None and name in ctx.bridge.hook_dict:
                found.append((stack.name, name, field, bias, [attention]))
    if not found:
        raise Skip("this spec declares no score bias with a hook point (no relative position bias)")
    return found


@check(
    "rel_pos_bias",
    statement="{stack}.hook_rel_pos_bias [1, h, q, k] equals the position_bias HF passed its attention interface in "
    "every self-attention layer of the stack (a per-layer bias, UMT5: each layer's attn.hook_rel_pos_bias, its "
    "own layer's), and so does the bias the spec's score-bias kind computes from the "
    "spec's params (t5_buckets: num_buckets, max_distance, bidirectional)",
    family="attention",
    tolerance=1e-6,
)
def rel_pos_bias(ctx: CheckContext, m: Meter) -> None:
    for stack, hook_name, field, bias, attentions in _biases(ctx):
        hook = ctx.cache[hook_name]
        q_len = k_len = ctx.seq_of(stack)
        weight = ctx.bridge.W_E
        computed = bias.kind.compute(
            table=bias.module,
            q_len=q_len,
            k_len=k_len,
            offset=0,
            padding_mask=None,
            n_heads=ctx.bridge.cfg.n_heads,
            dtype=weight.dtype,
            device=weight.device,
            params=bias.params,
        )
        for attention in attentions:
            call = ctx.attention_call(attention)
            hf = None if call is None else call.tensors.get("position_bias")
            if hf is None:
                m.fail(f"HF passed no position_bias to {attention.prefix}'s attention interface", field)
                continue
            m.compare(f"{hook_name} vs the position_bias HF passed {attention.prefix}", hook, hf, field)
            m.compare(
                f"{stack}: the '{bias.kind.name}' bias from the spec ({dict(bias.params)}) vs "
                f"the position_bias HF passed {attention.prefix}",
                computed,
                hf,
                f"{field}.params",
            )


@check(
    "rel_pos_bias_edit",
    statement="adding c to {stack}.hook_rel_pos_bias moves hook_attn_scores of every self-attention layer of that "
    "stack by exactly c at unmasked positions (one shared bias, edited once; a per-layer bias moves its own layer's)",
    family="interventions",
    tolerance=1e-5,
)
def rel_pos_bias_edit(ctx: CheckContext, m: Meter) -> None:
    mask = ctx.padding_mask("right")
    c = 0.75
    for _, hook_name, field, _, attentions in _biases(ctx):
        names = [f"{a.prefix}.hook_attn_scores" for a in attentions]
        _, before = ctx.bridge_cache(mask, names_filter=names)

        def add_c(tensor: torch.Tensor, hook) -> torch.Tensor:
            return tensor + c

        with ctx.bridge.hooks(fwd_hooks=[(hook_name, add_c)]):
            _, after = ctx.bridge_cache(mask, names_filter=names)
        for attention, name in zip(attentions, names, strict=True):
            q_mask, k_mask = ctx.masks_of(attention, mask)
            keep = allowed_keys(q_mask, k_mask, ctx.causal(attention), None) & q_mask.bool()[:, None, :, None]
            keep = keep.expand_as(before[name])
            moved = (after[name] - before[name])[keep]
            m.compare(f"{name} moved by +{c} at {hook_name}", moved, torch.full_like(moved, c), field)
