"""Built-in cross-attention kind `encoder_output`: keys and values from the encoder's final output."""

from __future__ import annotations

from typing import TYPE_CHECKING

from bridge_core.plugin_host import hookimpl

if TYPE_CHECKING:
    import torch

    from bridge_core.kinds import CrossAttentionKind, MaskFormat


def _encoder_output_kwargs(
    encoder_states: torch.Tensor,
    encoder_mask: torch.Tensor | None,
    q_len: int,
    dtype: torch.dtype,
    mask_format: MaskFormat,
    states_kwarg: str,
    mask_kwarg: str,
) -> dict:
    batch, k_len = encoder_states.shape[:2]
    padding = None if encoder_mask is None else encoder_mask.to(encoder_states.device).bool()
    mask = mask_format.build(padding, batch, q_len, k_len, False, dtype, encoder_states.device, None)
    return {states_kwarg: encoder_states, mask_kwarg: mask}


@hookimpl
def bridge_core_cross_attention_kinds() -> list[CrossAttentionKind]:
    from bridge_core.kinds import CrossAttentionKind

    return [CrossAttentionKind("encoder_output", block_kwargs=_encoder_output_kwargs)]
