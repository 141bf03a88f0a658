"""Score-bias checks (T5's relative position buckets): `{stack}.hook_rel_pos_bias` equals the
position_bias HF passed its attention interface and the bias the spec's score-bias kind computes from
its declared buckets, distance and direction; an edit there moves every layer's scores by exactly it."""

from __future__ import annotations

import torch

from ...bridge.bound import BoundScoreBias
from ..catalogue import Meter, Skip, check
from ..context import CheckContext
from .attention import allowed_keys


def _stacks(ctx: CheckContext) -> list[tuple[str, str, BoundScoreBias]]:
    """(stack name, spec field, score bias) of each stack whose score bias has a hook point."""
    found = []
    for stack in ctx.bound.stacks():
        field = "encoder.score_bias" if stack.name == "encoder" else "score_bias"
        if stack.score_bias is not None and f"{stack.name}.hook_rel_pos_bias" in ctx.bridge.hook_dict:
            found.append((stack.name, field, stack.score_bias))
    if not found:
        raise Skip("this spec declares no score bias with a hook point (no relative position bias)")
    return found


@check(
    "rel_pos_bias",
    statement="{stack}.hook_rel_pos_bias [1, h, q, k] equals the position_bias HF passed its attention interface in "
    "every self-attention layer of the stack, and so does the bias the spec's score-bias kind computes from the "
    "spec's params (t5_buckets: num_buckets, max_distance, bidirectional)",
    family="attention",
    tolerance=1e-6,
)
def rel_pos_bias(ctx: CheckContext, m: Meter) -> None:
    for stack, field, bias in _stacks(ctx):
        hook = ctx.cache[f"{stack}.hook_rel_pos_bias"]
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
        for attention in [a for a in ctx.attentions if a.layer.stack == stack and not a.cross]:
            call = ctx.attention_call(attention)
            hf = None if call is None else call.tensors.get("position_bias")
            if hf is None:
                m.fail(f"HF passed no position_bias to {attention.prefix}'s attention interface", field)
                continue
            m.compare(f"{stack}.hook_rel_pos_bias vs the position_bias HF passed {attention.prefix}", hook, hf, field)
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
    "stack by exactly c at unmasked positions (one shared bias, edited once)",
    family="interventions",
    tolerance=1e-5,
)
def rel_pos_bias_edit(ctx: CheckContext, m: Meter) -> None:
    mask = ctx.padding_mask("right")
    c = 0.75
    for stack, field, _ in _stacks(ctx):
        attentions = [a for a in ctx.attentions if a.layer.stack == stack and not a.cross]
        names = [f"{a.prefix}.hook_attn_scores" for a in attentions]
        _, before = ctx.bridge_cache(mask, names_filter=names)

        def add_c(tensor: torch.Tensor, hook) -> torch.Tensor:
            return tensor + c

        with ctx.bridge.hooks(fwd_hooks=[(f"{stack}.hook_rel_pos_bias", add_c)]):
            _, after = ctx.bridge_cache(mask, names_filter=names)
        for attention, name in zip(attentions, names, strict=True):
            q_mask, k_mask = ctx.masks_of(attention, mask)
            keep = allowed_keys(q_mask, k_mask, ctx.causal(attention), None) & q_mask.bool()[:, None, :, None]
            keep = keep.expand_as(before[name])
            moved = (after[name] - before[name])[keep]
            m.compare(f"{name} moved by +{c} at {stack}.hook_rel_pos_bias", moved, torch.full_like(moved, c), field)
