"""Built-in mask formats: `2d`, `4d_additive`, `4d_bool` (True = attend), `4d_bool_masked`
(True = masked, MPT), `none`.

`build` makes the mask a module takes when the core calls it alone; `to_additive` reads the mask
the model itself passes, for the reimplement path (a boolean mask is ambiguous without the format).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from bridge_core.plugin_host import hookimpl

if TYPE_CHECKING:
    import torch

    from bridge_core.kinds import MaskFormat


def _two_d(padding_mask, batch, q_len, k_len, causal, dtype, device, window=None):
    import torch

    if padding_mask is None:
        return torch.ones(batch, k_len, dtype=torch.long, device=device)
    return padding_mask.to(torch.long)


def _four_d_additive(padding_mask, batch, q_len, k_len, causal, dtype, device, window=None):
    from bridge_core.kinds import additive_mask

    return additive_mask(padding_mask, batch, q_len, k_len, causal, dtype, device, window)


def _four_d_bool(padding_mask, batch, q_len, k_len, causal, dtype, device, window=None):
    from bridge_core.kinds import additive_mask

    return additive_mask(padding_mask, batch, q_len, k_len, causal, dtype, device, window) == 0


def _four_d_bool_masked(padding_mask, batch, q_len, k_len, causal, dtype, device, window=None):
    from bridge_core.kinds import additive_mask

    return additive_mask(padding_mask, batch, q_len, k_len, causal, dtype, device, window) != 0


def _where(masked: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    import torch

    zero = torch.zeros((), dtype=dtype, device=masked.device)
    return torch.where(masked, torch.finfo(dtype).min, zero)


def _read_attend(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Boolean True = attend; a float mask is additive already (transformers picks the mask's dtype
    by the configured implementation, so a model may hand over either)."""
    import torch

    return _where(~mask, dtype) if mask.dtype == torch.bool else mask


def _read_masked(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Boolean True = masked (MPT's `masked_fill(mask, min)`); a float mask is additive already."""
    import torch

    return _where(mask, dtype) if mask.dtype == torch.bool else mask


def _none(*args, **kwargs):
    return None


@hookimpl
def bridge_core_mask_formats() -> list[MaskFormat]:
    from bridge_core.kinds import MaskFormat

    return [
        MaskFormat("2d", _two_d),
        MaskFormat("4d_additive", _four_d_additive, _read_attend),
        MaskFormat("4d_bool", _four_d_bool, _read_attend),
        MaskFormat("4d_bool_masked", _four_d_bool_masked, _read_masked),
        MaskFormat("none", _none),
    ]
