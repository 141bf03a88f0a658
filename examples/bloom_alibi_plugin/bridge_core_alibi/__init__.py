"""An example bridge-core plugin, shipped as its own distribution.

It adds one kind to an extension point — the `alibi` score bias (ALiBi, Press et al. 2021), batched
and padding-aware — and one spec directory with BLOOM, whose attention does not go through
transformers' AttentionInterface and so runs on bridge-core's reimplement path.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bridge_core import hookimpl
from bridge_core.errors import SpecError
from bridge_core.kinds import ScoreBiasKind

if TYPE_CHECKING:  # torch loads when a bias is first computed, so `bridge-core list` stays fast
    import torch

__all__ = ["alibi_bias", "alibi_slopes"]


def alibi_slopes(n_heads: int) -> torch.Tensor:
    """The geometric slopes of ALiBi: 2^(-8i/n) for a power-of-two n; otherwise those of the nearest lower
    power of two followed by every other slope of the next power of two."""
    nearest = 2 ** math.floor(math.log2(n_heads))
    slopes = [2 ** (-8 * (i + 1) / nearest) for i in range(nearest)]
    if nearest < n_heads:
        extra = [2 ** (-8 * (i + 1) / (2 * nearest)) for i in range(2 * nearest)][0::2]
        slopes += extra[: n_heads - nearest]
    import torch

    return torch.tensor(slopes)


def alibi_bias(
    *,
    q_len: int,
    k_len: int,
    n_heads: int,
    padding_mask: torch.Tensor | None,
    dtype: torch.dtype,
    device: torch.device | str,
    params: Mapping[str, Any],
    **_: object,
) -> torch.Tensor:
    """`[b or 1, h, 1, k]`: slope_h times each key's position among the real tokens of its row.

    Only key positions matter (a per-query constant does not change the softmax), so the bias is
    the same for every query. With a padding mask, positions count real tokens only, so a
    left-padded row gets the same biases as the row alone. ALiBi takes no `params`; the
    `table` and `offset` keywords of the contract are not needed.
    """
    if params:
        raise SpecError(f"score bias kind 'alibi' takes no params (got {', '.join(params)})", field="score_bias.params")
    import torch

    slopes = alibi_slopes(n_heads).to(device)
    if padding_mask is None:
        positions = torch.arange(k_len, device=device)[None, :].float()
    else:
        real = padding_mask.to(device).long()
        positions = ((real.cumsum(-1) - 1) * real).float()
    return (slopes[None, :, None, None] * positions[:, None, None, :]).to(dtype)


def bloom_format(bias: torch.Tensor) -> torch.Tensor:
    """`[b, h, 1, k]` -> BLOOM's `alibi` argument, `[b*h, 1, k]`."""
    return bias.flatten(0, 1)


@hookimpl
def bridge_core_score_bias_kinds() -> list[ScoreBiasKind]:
    return [ScoreBiasKind("alibi", compute=alibi_bias, module_format=bloom_format)]


@hookimpl
def bridge_core_spec_dirs() -> list[Path]:
    return [Path(__file__).parent / "specs"]
