"""Built-in score-bias kind `alibi_bias`: ALiBi (Press et al. 2021) in whatever layout a family passes.

BLOOM and Falcon pass `[batch*heads, 1, k]` with positions counted over real tokens; MPT passes
`[heads, 1, k]` with absolute positions measured back from the last key. The bias values, the slope
order for head counts that are not a power of two, and the layout of the tensor the modules take
are all spec params (decision 0017), so one kind serves every family. It is named `alibi_bias` so
that it never clashes with the example plugin's `alibi` kind (the plugin tutorial's).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from bridge_core.errors import SpecError

if TYPE_CHECKING:
    import torch

# layout name -> whether it holds a batch dim (a batch-free layout cannot count real tokens)
LAYOUTS = {"b*h 1 k": True, "b h 1 k": True, "b h q k": True, "1 h 1 k": False, "h 1 k": False, "h q k": False}
CHOICES = {"slopes": ("bloom", "mpt"), "positions": ("real_tokens", "absolute"), "origin": ("first", "last")}
DEFAULTS = {"slopes": "bloom", "positions": "real_tokens", "origin": "first", "max_bias": 8}


def _settings(params: Mapping[str, Any]) -> dict[str, Any]:
    unknown = sorted(set(params) - {"layout", *DEFAULTS})
    if unknown:
        raise SpecError(f"score bias kind 'alibi_bias' has no param {', '.join(unknown)}", field="score_bias.params")
    layout = params.get("layout")
    if layout not in LAYOUTS:
        raise SpecError(
            f"score bias kind 'alibi_bias' needs params.layout, one of {', '.join(map(repr, LAYOUTS))}; got {layout!r}",
            field="score_bias.params.layout",
        )
    settings = {**DEFAULTS, **params}
    for name, allowed in CHOICES.items():
        if settings[name] not in allowed:
            raise SpecError(
                f"score bias param {name} must be one of {', '.join(allowed)} (got {settings[name]!r})",
                field=f"score_bias.params.{name}",
            )
    if settings["positions"] == "real_tokens" and not LAYOUTS[layout]:
        raise SpecError(
            f"layout {layout!r} has no batch dim, so it cannot count real tokens per row: use positions: absolute",
            field="score_bias.params.positions",
        )
    return settings


def slopes(n_heads: int, order: str, max_bias: float) -> torch.Tensor:
    """Per-head slopes 2^(-max_bias*i/n). For n not a power of two, `bloom` takes the lower power's
    slopes then every other slope of the next power; `mpt` takes the next power's slopes, the odd
    positions first, then the even ones, and keeps the first n."""
    import torch

    if order == "mpt":
        power = 2 ** math.ceil(math.log2(n_heads))
        base = torch.tensor([2 ** (-max_bias * (i + 1) / power) for i in range(power)])
        return torch.cat([base[1::2], base[0::2]])[:n_heads] if power != n_heads else base
    power = 2 ** math.floor(math.log2(n_heads))
    values = [2 ** (-max_bias * (i + 1) / power) for i in range(power)]
    if power < n_heads:
        values += [2 ** (-max_bias * (i + 1) / (2 * power)) for i in range(2 * power)][0::2][: n_heads - power]
    return torch.tensor(values)


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
    """`[b or 1, h, 1 or q, k]`: slope_h times each key's position (`ScoreBiasCompute`).

    `positions: real_tokens` counts real tokens of each row (a left-padded row gets the biases of
    the row alone); `origin: last` measures from the last key (MPT: values <= 0). A layout with a
    query dim gets the bias repeated over the queries.
    """
    import torch

    settings = _settings(params)
    head_slopes = slopes(n_heads, settings["slopes"], float(settings["max_bias"])).to(device)
    if settings["positions"] == "real_tokens" and padding_mask is not None:
        real = padding_mask.to(device).long()
        positions = ((real.cumsum(-1) - 1) * real).float()
    else:
        positions = torch.arange(k_len, device=device)[None, :].float()
    if settings["origin"] == "last":
        positions = positions - (k_len - 1)
    bias = (head_slopes[None, :, None, None] * positions[:, None, None, :]).to(dtype)
    return bias.expand(-1, -1, q_len, -1) if "q" in settings["layout"] else bias


def alibi_layout(bias: torch.Tensor, params: Mapping[str, Any]) -> torch.Tensor:
    """`[b, h, 1 or q, k]` -> the tensor the model's modules take (`BiasLayoutFormat`)."""
    layout = _settings(params)["layout"]
    if layout == "b*h 1 k":
        return bias.flatten(0, 1)
    if layout.startswith("b "):
        return bias
    if layout == "1 h 1 k":
        return bias[:1]
    return bias[0]  # h 1 k, h q k: batch-free
