"""Built-in score-bias kinds `t5_buckets` (T5's learned relative-position buckets) and `alibi_bias`
(ALiBi in any layout, `alibi.py`).

The bucketing is written here from the T5 paper's description (exact buckets for small distances,
log-spaced up to `max_distance`), independently of transformers' code, so conformance can compare
it with the bias HF computes.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from bridge_core.errors import SpecError
from bridge_core.plugin_host import hookimpl

from .alibi import alibi_bias, alibi_layout

if TYPE_CHECKING:
    import torch
    from torch import nn

    from bridge_core.kinds import ScoreBiasKind


def relative_buckets(relative: torch.Tensor, bidirectional: bool, num_buckets: int, max_distance: int) -> torch.Tensor:
    """Bucket of each `key - query` distance."""
    import torch

    buckets = torch.zeros_like(relative)
    if bidirectional:
        num_buckets //= 2
        buckets = buckets + (relative > 0).long() * num_buckets
        distance = relative.abs()
    else:
        distance = (-relative).clamp(min=0)  # a causal decoder only looks back
    exact = num_buckets // 2
    log_scaled = (
        exact
        + (
            torch.log(distance.float().clamp(min=1) / exact) / math.log(max_distance / exact) * (num_buckets - exact)
        ).long()
    )
    log_scaled = log_scaled.clamp(max=num_buckets - 1)
    return buckets + torch.where(distance < exact, distance, log_scaled)


T5_PARAMS = ("bidirectional", "num_buckets", "max_distance")


def t5_bias(
    *,
    table: nn.Module,
    q_len: int,
    k_len: int,
    offset: int,
    params: Mapping[str, Any],
    **_: Any,
) -> torch.Tensor:
    """`[1, h, q, k]` bias for queries at positions `offset..offset+q_len` over `k_len` keys (`ScoreBiasCompute`).

    `params` is the spec's `score_bias.params`: `bidirectional` (encoders and T5's encoder stack),
    `num_buckets` and `max_distance` (T5's `relative_attention_num_buckets` / `_max_distance`).
    """
    import torch

    missing = [key for key in T5_PARAMS if key not in params]
    if missing:
        raise SpecError(f"score bias kind 't5_buckets' needs params {', '.join(missing)}", field="score_bias.params")
    device = table.weight.device
    query = torch.arange(q_len, device=device)[:, None] + offset
    key = torch.arange(k_len, device=device)[None, :]
    buckets = relative_buckets(
        key - query, bool(params["bidirectional"]), int(params["num_buckets"]), int(params["max_distance"])
    )
    return table(buckets).permute(2, 0, 1).unsqueeze(0)  # [q, k, h] -> [1, h, q, k]


def _table_as_bias(values: torch.Tensor) -> torch.Tensor:
    return values.permute(2, 0, 1).unsqueeze(0)


@hookimpl
def bridge_core_score_bias_kinds() -> list[ScoreBiasKind]:
    from bridge_core.kinds import ScoreBiasKind

    return [
        ScoreBiasKind("t5_buckets", compute=t5_bias, hook_view=_table_as_bias),
        ScoreBiasKind("alibi_bias", compute=alibi_bias, params_format=alibi_layout),
    ]
