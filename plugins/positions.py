"""Built-in position kinds: `learned` (a table, with an offset), `sinusoidal` (a fixed table), `rotary`
(q and k rotated inside attention, dim j paired with j + rotary_dim/2, cos/sin from the model's rotary module,
full width or one value per pair: GPT-OSS),
`rotary_interleaved` (adjacent dims 2j, 2j+1 paired: Cohere), `rotary_interleaved_table` (the same rotation
from a precomputed table of n_ctx positions, GPT-J: longer inputs are refused, as HF cannot run them),
`rotary_interleaved_halves` (adjacent pairs, frequencies read from the first half of a rotate-half
`cat(freqs, freqs)` table: GLM, Helium, ERNIE 4.5), `rotary_reversed` (rotate-half pairing turned by -theta:
NanoChat's `rotate_half` is `cat(x2, -x1)`), `sinusoidal_from_ids` (a fixed table in a `weights` buffer, read
at positions counted from the token ids and grown for longer inputs: M2M100, NLLB-MoE),
`sinusoidal_from_positions` (the same buffer read at the position ids, offset added: XGLM) and `none`."""

from __future__ import annotations

from typing import TYPE_CHECKING

from bridge_core.errors import SpecError
from bridge_core.plugin_host import hookimpl

if TYPE_CHECKING:
    import torch

    from bridge_core.kinds import PositionKind


def _too_narrow(rotary_dim: int, width: int) -> SpecError:
    """The rotary module's output does not cover rotary_dim: the dim or the kind (half vs pairs) is wrong."""
    return SpecError(
        f"rotary_dim {rotary_dim} (spec field config.rotary_dim) is wider than the rotary module's output "
        f"({width} dims); a module returning one value per adjacent pair needs kind rotary_interleaved",
        field="config.rotary_dim / pos_embed.kind",
    )


def rotate_half(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, rotary_dim: int) -> torch.Tensor:
    """Rotary embedding on the first `rotary_dim` dims of each head, pairing dim j with j + rotary_dim/2.

    `x` is `[b, h, s, d]`; `cos`/`sin` are the rotary module's `[b, s, >= rotary_dim]` output, or one value per
    pair `[b, s, rotary_dim / 2]` (GPT-OSS, whose attention rotates the halves by that table).
    """
    import torch

    if 2 * cos.shape[-1] == rotary_dim:  # one frequency per pair (j, j + rotary_dim/2): the same for both halves
        cos, sin = torch.cat((cos, cos), dim=-1), torch.cat((sin, sin), dim=-1)
    if cos.shape[-1] < rotary_dim:
        raise _too_narrow(rotary_dim, cos.shape[-1])
    cos = cos[..., :rotary_dim].unsqueeze(1)
    sin = sin[..., :rotary_dim].unsqueeze(1)
    rot, rest = x[..., :rotary_dim], x[..., rotary_dim:]
    first, second = rot[..., : rotary_dim // 2], rot[..., rotary_dim // 2 :]
    rotated = rot * cos + torch.cat((-second, first), dim=-1) * sin
    return torch.cat((rotated, rest), dim=-1)


def rotate_half_reversed(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, rotary_dim: int) -> torch.Tensor:
    """Rotate-half pairing (dim j with j + rotary_dim/2) turned the other way, by -theta: NanoChat's
    `rotate_half` returns `cat(x2, -x1)` where Llama's returns `cat(-x2, x1)`, i.e. the sine enters negated."""
    return rotate_half(x, cos, -sin, rotary_dim)


def rotate_interleaved(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, rotary_dim: int) -> torch.Tensor:
    """Rotary embedding on the first `rotary_dim` dims of each head, pairing adjacent dims 2j and 2j + 1.

    `x` is `[b, h, s, d]`. `cos`/`sin` are the rotary module's output, either one value per pair
    (`[b, s, rotary_dim / 2]`, GPT-J's sinusoid table) or each value repeated for both dims of its pair
    (`[b, s, >= rotary_dim]`, Cohere's `repeat_interleave`). Computed in `x`'s dtype, as GPT-J does.
    """
    import torch

    width = cos.shape[-1]
    if 2 * width == rotary_dim:  # one frequency per pair: spread it over both dims of the pair
        cos, sin = cos.repeat_interleave(2, dim=-1), sin.repeat_interleave(2, dim=-1)
    elif width < rotary_dim:
        raise _too_narrow(rotary_dim, width)
    cos = cos[..., :rotary_dim].unsqueeze(1).to(x.dtype)
    sin = sin[..., :rotary_dim].unsqueeze(1).to(x.dtype)
    rot, rest = x[..., :rotary_dim], x[..., rotary_dim:]
    even, odd = rot[..., 0::2], rot[..., 1::2]
    turned = torch.stack((-odd, even), dim=-1).flatten(-2)  # (x0, x1, ...) -> (-x1, x0, ...)
    return torch.cat((rot * cos + turned * sin, rest), dim=-1)


def rotate_interleaved_halves(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, rotary_dim: int) -> torch.Tensor:
    """Adjacent pairs 2j, 2j + 1 rotated by frequency j, read from a Llama-layout table.

    The rotary module returns `cat(freqs, freqs)` (`[b, s, >= rotary_dim]`), as for rotate-half; the
    attention takes its first half and repeats each value for both dims of a pair (GLM, Helium,
    ERNIE 4.5: `cos[..., :d // 2].repeat_interleave(2)`). Computed in the table's dtype (ERNIE keeps it in
    float32), cast back to `x`'s dtype.
    """
    import torch

    if cos.shape[-1] < rotary_dim:
        raise _too_narrow(rotary_dim, cos.shape[-1])
    half = rotary_dim // 2
    cos = cos[..., :half].repeat_interleave(2, dim=-1).unsqueeze(1)
    sin = sin[..., :half].repeat_interleave(2, dim=-1).unsqueeze(1)
    rot, rest = x[..., :rotary_dim], x[..., rotary_dim:]
    even, odd = rot[..., 0::2], rot[..., 1::2]
    turned = torch.stack((-odd, even), dim=-1).flatten(-2)  # (x0, x1, ...) -> (-x1, x0, ...)
    rotated = (rot.to(cos.dtype) * cos + turned.to(cos.dtype) * sin).to(x.dtype)
    return torch.cat((rotated, rest), dim=-1)


@hookimpl
def bridge_core_position_kinds() -> list[PositionKind]:
    from bridge_core.kinds import PositionKind

    return [
        PositionKind("learned", limits_length=True, has_table=True),
        # a fixed table computed at init (Marian, Pegasus): looked up like a learned one
        PositionKind("sinusoidal", limits_length=True, has_table=True),
        # M2M100's module: the table is its `weights` buffer; real tokens count from padding_idx + 1 (the
        # spec's offset), pad tokens read the zero row padding_idx; it grows the table for longer inputs
        PositionKind("sinusoidal_from_ids", limits_length=False, has_table=True, table_attr="weights", from_ids=True),
        # XGLM's module: the same `weights` buffer, read at the position ids (row offset + position) whatever
        # the tokens are; it grows the table for longer inputs
        PositionKind("sinusoidal_from_positions", limits_length=False, has_table=True, table_attr="weights"),
        PositionKind("rotary", limits_length=False, has_table=False, rotates_qk=True, rotate=rotate_half),
        PositionKind(
            "rotary_interleaved", limits_length=False, has_table=False, rotates_qk=True, rotate=rotate_interleaved
        ),
        PositionKind(
            "rotary_interleaved_table", limits_length=True, has_table=False, rotates_qk=True, rotate=rotate_interleaved
        ),
        PositionKind(
            "rotary_interleaved_halves",
            limits_length=False,
            has_table=False,
            rotates_qk=True,
            rotate=rotate_interleaved_halves,
        ),
        PositionKind(
            "rotary_reversed", limits_length=False, has_table=False, rotates_qk=True, rotate=rotate_half_reversed
        ),
        PositionKind("none", limits_length=False, has_table=False),
    ]
