"""Built-in position kinds: `learned` (a table, with an offset), `sinusoidal` (a fixed table), `rotary`
(q and k rotated inside attention, cos/sin from the model's rotary module) and `none`."""

from __future__ import annotations

import torch

from bridge_core.kinds import PositionKind
from bridge_core.plugin_host import hookimpl


def rotate_half(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, rotary_dim: int) -> torch.Tensor:
    """Rotary embedding on the first `rotary_dim` dims of each head, pairing dim j with j + rotary_dim/2.

    `x` is `[b, h, s, d]`; `cos`/`sin` are the rotary module's `[b, s, >= rotary_dim]` output.
    """
    if cos.shape[-1] < rotary_dim:
        raise ValueError(
            f"rotary_dim {rotary_dim} (spec field config.rotary_dim) is wider than the rotary module's output "
            f"({cos.shape[-1]} dims)"
        )
    cos = cos[..., :rotary_dim].unsqueeze(1)
    sin = sin[..., :rotary_dim].unsqueeze(1)
    rot, rest = x[..., :rotary_dim], x[..., rotary_dim:]
    first, second = rot[..., : rotary_dim // 2], rot[..., rotary_dim // 2 :]
    rotated = rot * cos + torch.cat((-second, first), dim=-1) * sin
    return torch.cat((rotated, rest), dim=-1)


@hookimpl
def bridge_core_position_kinds() -> list[PositionKind]:
    return [
        PositionKind("learned", limits_length=True, has_table=True),
        # a fixed table computed at init (Marian, Pegasus): looked up like a learned one
        PositionKind("sinusoidal", limits_length=True, has_table=True),
        PositionKind("rotary", limits_length=False, has_table=False, rotates_qk=True, rotate=rotate_half),
        PositionKind("none", limits_length=False, has_table=False),
    ]
