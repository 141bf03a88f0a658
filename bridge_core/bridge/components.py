"""Calling one block or one attention module on its own, as the model would call it.

The inputs a module needs besides the hidden states (its mask in its own format, rotary
cos/sin from the model's rotary module, per-layer arguments) are built through the extension
points: the spec's `call:` conventions pick a mask format kind and name the keywords. Used by
the component conformance checks and by layer ranges.
"""

from __future__ import annotations

from typing import Any

import torch

from ..errors import InputError
from .bound import BoundBlock, BoundModel, BoundScoreBias
from .places import select_output


class ComponentCaller:
    """Builds the keyword arguments of block `i` and calls it (or its attention) alone."""

    def __init__(self, bound: BoundModel, cfg: Any) -> None:
        self.bound = bound
        self.cfg = cfg
        self.call = bound.call

    def window(self, layer: int) -> int | None:
        """The sliding window of decoder layer `layer` (None: full attention)."""
        return self.call.windows[layer]

    def kwargs(
        self,
        layer: int,
        hidden: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        stack: str = "decoder",
        mask_kwarg: str | None = None,
    ) -> dict[str, Any]:
        """Everything but the hidden states that block `layer` of `stack` (or its attention) takes."""
        batch, seq = hidden.shape[:2]
        if position_ids is None:
            position_ids = torch.arange(seq, device=hidden.device).unsqueeze(0).expand(batch, -1)
        padding = None if attention_mask is None else attention_mask.to(hidden.device).bool()
        encoder = stack == "encoder"
        call = self.call
        out: dict[str, Any] = {}
        mask_kwarg = mask_kwarg or call.mask_kwarg
        if mask_kwarg:
            window = None if encoder else self.window(layer)
            out[mask_kwarg] = call.mask_format.build(
                padding, batch, seq, seq, not encoder, hidden.dtype, hidden.device, window
            )
        if call.position_embeddings_kwarg:
            out[call.position_embeddings_kwarg] = self.bound.pos_embed(hidden, position_ids, **call.rotary_args[layer])
        if call.position_ids_kwarg:
            out[call.position_ids_kwarg] = position_ids
        bias = self.bound.stack_of(stack).score_bias
        if call.position_bias_kwarg and bias is not None:
            out[call.position_bias_kwarg] = self.score_bias(bias, seq, padding, hidden)
        if not encoder and call.extra_kwargs:
            out.update(call.extra_kwargs[layer])
        return out

    def score_bias(
        self, bias: BoundScoreBias, seq: int, padding: torch.Tensor | None, hidden: torch.Tensor
    ) -> torch.Tensor:
        """A stack's score bias from its kind, in the format the model's modules take."""
        kind = bias.kind
        values = kind.compute(
            table=bias.module,
            q_len=seq,
            k_len=seq,
            offset=0,
            padding_mask=padding,
            n_heads=self.cfg.n_heads,
            dtype=hidden.dtype,
            device=hidden.device,
            params=bias.params,
        )
        if values.shape[0] == 1:
            values = values.expand(hidden.shape[0], *values.shape[1:])
        if kind.params_format is not None:
            return kind.params_format(values, bias.params)
        return kind.module_format(values) if kind.module_format is not None else values

    def _block(self, layer: int, stack: str) -> BoundBlock:
        return self.bound.stack_of(stack).blocks[layer]

    def block(
        self,
        layer: int,
        hidden: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        stack: str = "decoder",
        encoder_states: torch.Tensor | None = None,
        encoder_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Block `layer` of `stack` applied to residual `hidden` `[b, s, d_model]`; returns the new residual.

        A decoder block with cross attention needs `encoder_states` (the encoder's final output) and
        takes the encoder's padding mask as `encoder_mask`.
        """
        block = self._block(layer, stack)
        kwargs = self.kwargs(layer, hidden, attention_mask, stack=stack)
        if block.cross is not None:
            if encoder_states is None:
                raise InputError(f"decoder block {layer} has cross attention: pass encoder_states")
            cross = block.cross
            kwargs.update(
                cross.kind.block_kwargs(
                    encoder_states, encoder_mask, hidden.shape[1], hidden.dtype, self.call.mask_format,
                    cross.states_kwarg, cross.mask_kwarg,
                )
            )  # fmt: skip
        output = block.module(**{block.hidden_kwarg: hidden}, **kwargs)
        return select_output(output, block.output_index)

    def attention(
        self,
        layer: int,
        normalized: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        stack: str = "decoder",
    ) -> torch.Tensor:
        """The self-attention module of block `layer` on its (already normalized) input: its contribution
        to the residual (a module that adds the residual itself is given a zero residual)."""
        attn = self._block(layer, stack).attn
        kwargs = self.kwargs(layer, normalized, attention_mask, stack=stack, mask_kwarg=self.call.attention_mask_kwarg)
        if attn.residual_kwarg is not None:
            kwargs[attn.residual_kwarg] = torch.zeros_like(normalized)
        output = attn.module(**{attn.hidden_kwarg: normalized}, **kwargs)
        return select_output(output, attn.output_index)
