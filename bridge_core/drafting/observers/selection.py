"""Observer of sparse attention: an indexer that selects, per query, the keys attention may read.

DeepSeek V3.2 and its kin (GLM MoE DSA, HY V4, AXK2) score every key with a small "lightning indexer" and
keep the top `index_topk` per query; their eager / sdpa path folds the selection into the mask, any other
implementation (the drafter's probe) is handed it as `indices` ([batch, q, top-k]). No spec field describes
such a selection, and a recomputed pattern that ignores it is wrong once a sequence is longer than the
top-k: the drafter names it as missing vocabulary.
"""

from __future__ import annotations

import torch

from ..draft import DraftContext


def observe_key_selection(ctx: DraftContext) -> None:
    """A gap when an attention module hands its attention function the keys selected per query."""
    for call in ctx.obs.attention:
        indices = call.kwargs.get("indices")
        if not isinstance(indices, torch.Tensor):
            continue
        name = ctx.obs.name(call.module)
        picked, keys = indices.shape[-1], call.key.shape[-2]
        topk = ctx.attr(picked, keyword=("topk",))
        where = f"config field `{topk}`" if topk else "no config field found"
        ctx.draft.gap(
            "sparse attention indexer",
            f"{name} attends, per query, only to the {picked} of {keys} keys its indexer selects ({where})",
        )
        return
