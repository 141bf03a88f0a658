"""Observer of a stack's additive score bias (T5's relative-position buckets).

The bias is a 4-D float tensor `[1 or b, heads, q, k]` HF hands the attention function besides the mask. Its
table is an embedding in the stack's first block with one column per head. The registered score-bias kinds
are then tried with parameters read from the config (`num_buckets` the table's rows, `max_distance` any
integer field that reproduces the bias, `bidirectional` whether the stack's queries see later keys); the one
whose bias equals what HF passed, on the entries the mask leaves visible, is written. A table in every block
(UMT5: each layer computes its own bias) is `per_layer: true`, its path relative to the block. The test config
shrinks the buckets (8, max distance 12) so the log-spaced buckets are reached by short sequences.
"""

from __future__ import annotations

import torch
from torch import nn

from ..draft import DraftContext
from ..probe import same
from ..shrink import plain_fields
from .modules import under

_VISIBLE = -1e4  # masked entries are large negative numbers added to the bias


def _observed_bias(ctx: DraftContext) -> torch.Tensor | None:
    call = ctx.found["attn_call"]
    h, q, k = call.query.shape[1], call.query.shape[2], call.key.shape[2]
    for value in call.kwargs.values():
        bias = isinstance(value, torch.Tensor) and value.is_floating_point() and value.dim() == 4
        if bias and tuple(value.shape[1:]) == (h, q, k) and value.abs().max() > 0:
            return value
    return None


def observe_score_bias(ctx: DraftContext) -> dict | None:
    """The stack's `score_bias` spec, or None when attention is given no bias."""
    bias = _observed_bias(ctx)
    if bias is None:
        return None
    h = bias.shape[1]
    tables = [
        (n, m)
        for n, m in ctx.model.named_modules()
        if isinstance(m, nn.Embedding) and under(n, ctx.blocks) and m.embedding_dim == h
    ]
    if not tables:
        ctx.draft.gap("score bias", f"{ctx.blocks}'s attention is given a bias from no table with one column per head")
        return None
    path, table = tables[0]
    per_layer = any(not under(n, ctx.block) for n, _ in tables)  # a table in every block (UMT5), not T5's first
    if per_layer:
        n_blocks = len(ctx.obs.module(ctx.blocks))
        owners = {n[len(ctx.blocks) + 1 :].split(".", 1)[0] for n, _ in tables}
        if not path.startswith(ctx.block + ".") or len(owners) != n_blocks:
            where = f"bias tables in {len(owners)} of the {n_blocks} blocks of {ctx.blocks}"
            ctx.draft.gap("per-layer score bias", where)
            return None
    visible = bias[0] > _VISIBLE  # [h, q, k]
    q_len, k_len = bias.shape[-2:]
    later = torch.ones(q_len, k_len, dtype=torch.bool).triu(1)
    seen = bool(visible[:, later].any())  # queries see later keys: tried first (both fit when those are masked)
    from ...registry import default_registry

    kinds = default_registry().plugins.kinds.score_biases
    fields = plain_fields(ctx.config)
    ints = [(k, v) for k, v in fields.items() if isinstance(v, int) and not isinstance(v, bool) and v > 1]
    ints.sort(key=lambda kv: "distance" not in kv[0])  # fields named as distances first
    rows = table.num_embeddings
    buckets = ctx.attr(rows, keyword=("bucket",)) or rows
    for kind in kinds.values():
        if kind.name != "t5_buckets":
            continue  # alibi is observed by the decoder-only observers; here only learned tables are tried
        for bidirectional, (distance_name, distance) in ((b, i) for b in (seen, not seen) for i in ints):
            params = {"bidirectional": bidirectional, "num_buckets": rows, "max_distance": distance}
            try:
                with torch.no_grad():
                    made = kind.compute(table=table, q_len=q_len, k_len=k_len, offset=0, params=params)
            except (IndexError, RuntimeError, ValueError, ZeroDivisionError):
                continue  # a distance no smaller than the exact buckets: not this field
            if made.shape[1:] == bias.shape[1:] and same(made[0][visible], bias[0][visible]):
                ctx.draft.note(
                    f"score_bias.params.max_distance: '{distance_name}' is the first integer field that reproduces "
                    "the observed bias"
                )
                found = {
                    "kind": kind.name,
                    "path": ctx.relative(path, ctx.block) if per_layer else path,
                    "params": {"bidirectional": bidirectional, "num_buckets": buckets, "max_distance": distance_name},
                }
                return {**found, "per_layer": True} if per_layer else found
    ctx.draft.gap("score bias kind", f"no registered score-bias kind reproduces the bias {path} gives {ctx.blocks}")
    return None
