"""Built-in mask formats for calling a module on its own: `2d`, `4d_additive`, `4d_bool`, `none`."""

from __future__ import annotations

import torch

from bridge_core.kinds import MaskFormat, additive_mask
from bridge_core.plugin_host import hookimpl


def _two_d(padding_mask, batch, q_len, k_len, causal, dtype, device, window=None):
    if padding_mask is None:
        return torch.ones(batch, k_len, dtype=torch.long, device=device)
    return padding_mask.to(torch.long)


def _four_d_additive(padding_mask, batch, q_len, k_len, causal, dtype, device, window=None):
    return additive_mask(padding_mask, batch, q_len, k_len, causal, dtype, device, window)


def _four_d_bool(padding_mask, batch, q_len, k_len, causal, dtype, device, window=None):
    return additive_mask(padding_mask, batch, q_len, k_len, causal, dtype, device, window) == 0


def _none(*args, **kwargs):
    return None


@hookimpl
def bridge_core_mask_formats() -> list[MaskFormat]:
    return [
        MaskFormat("2d", _two_d),
        MaskFormat("4d_additive", _four_d_additive),
        MaskFormat("4d_bool", _four_d_bool),
        MaskFormat("none", _none),
    ]
