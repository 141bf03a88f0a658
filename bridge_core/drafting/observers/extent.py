"""Observer of what a model holds beyond what its tiny forward shows or the spec can state (issue 17).

Two things a draft can be silently wrong about, named as missing vocabulary:
- an embedding table with more rows than the logits have columns (Mllama's text model: vocab_size + 8
  rows for its image tokens); `config.d_vocab` is one number for both, so binding fails without a reason;
- decoder layers a config lists as cross-attention layers (`cross_attention_layers`): a text-only forward
  skips them, so the observed blocks are not every block the checkpoint has;
- a router inside the attention module (JetMoE's mixture of attention heads: each token routed to the top-k
  of several query / output projection experts); the spec's attention has one q and one o projection.
"""

from __future__ import annotations

import torch

from ..draft import DraftContext
from ..shrink import plain_fields


def observe_extent(ctx: DraftContext) -> None:
    embed = ctx.model.get_input_embeddings()
    weight = getattr(embed, "weight", None)
    vocab = int(ctx.obs.logits.shape[-1])
    if weight is not None and weight.ndim == 2 and weight.shape[0] > vocab:
        field = ctx.attr(vocab, ("vocab_size",), ("vocab",)) or "no config field"
        ctx.draft.gap(
            "embedding rows beyond vocab_size",
            f"{ctx.obs.name(embed)} has {weight.shape[0]} rows, the logits {vocab} columns ({field}); "
            "config.d_vocab states one size for both",
        )
    cross = plain_fields(ctx.config).get("cross_attention_layers")
    if isinstance(cross, list) and cross:
        ctx.draft.gap(
            "cross-attention layers skipped by a text-only forward",
            f"cross_attention_layers {cross[:4]}{'...' if len(cross) > 4 else ''} are cross-attention decoder "
            "layers the text-only forward skips; the spec's blocks are all self-attention blocks",
        )


_N_EXPERTS = ("num_local_experts", "num_experts", "n_routed_experts", "moe_num_experts")


def observe_routed_attention(ctx: DraftContext) -> None:
    """A gap when a module under the attention module routes tokens: its output holds integer (expert) indices
    and logits over as many experts as a config field counts."""
    attn = ctx.found.get("attn")
    if not attn:
        return
    for name, _ in ctx.obs.module(attn).named_modules(prefix=attn):
        call = ctx.obs.first(name)
        out = call.output if call is not None else None
        if name == attn or not isinstance(out, tuple):
            continue
        tensors = [t for t in out if isinstance(t, torch.Tensor)]
        indices = any(not t.is_floating_point() for t in tensors)
        widths = {int(t.shape[-1]) for t in tensors if t.is_floating_point() and t.ndim == 2}
        experts = next((ctx.attr(w, _N_EXPERTS) for w in sorted(widths) if ctx.attr(w, _N_EXPERTS)), None)
        if indices and experts:
            ctx.draft.gap(
                "mixture of attention heads",
                f"{name} routes each token to attention experts ({experts}): the query and output projections "
                "are chosen per token, the spec's attention has one of each",
            )
            return
