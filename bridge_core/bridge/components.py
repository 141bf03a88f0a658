"""Calling one block or one attention module on its own, as the model would call it.

The inputs a module needs besides the hidden states (its mask in its own format, rotary
cos/sin from the model's rotary module, per-layer arguments) are built through the extension
points: the spec's `call:` conventions pick a mask format kind and name the keywords. Used by
the component conformance checks and by layer ranges.
"""

from __future__ import annotations

from typing import Any

import torch

from ..spec.config import config_lookup
from ..spec.expressions import evaluate
from .dispatch import _select


class ComponentCaller:
    """Builds the keyword arguments of block `i` and calls it (or its attention) alone."""

    def __init__(self, bridge) -> None:
        self.bridge = bridge
        self.spec = bridge.spec
        self.call = bridge.spec.call
        kinds = bridge.registry.plugins.kinds
        self.mask_format = kinds.mask_formats[self.call.mask_format]
        self._lookup = config_lookup(bridge.model.config)

    def _per_layer(self, expression: Any, layer: int) -> Any:
        if not isinstance(expression, str):
            return expression

        def lookup(name: str) -> Any:
            return layer if name == "layer" else self._lookup(name)

        return evaluate(expression, lookup)

    def window(self, layer: int) -> int | None:
        return self._per_layer(self.call.window, layer)

    def kwargs(
        self,
        layer: int,
        hidden: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
    ) -> dict[str, Any]:
        """Everything but the hidden states that block `layer` (or its attention) takes."""
        batch, seq = hidden.shape[:2]
        if position_ids is None:
            position_ids = torch.arange(seq, device=hidden.device).unsqueeze(0).expand(batch, -1)
        padding = None if attention_mask is None else attention_mask.to(hidden.device).bool()
        out: dict[str, Any] = {}
        if self.call.mask_kwarg:
            out[self.call.mask_kwarg] = self.mask_format.build(
                padding, batch, seq, seq, True, hidden.dtype, hidden.device, self.window(layer)
            )
        if self.call.position_embeddings_kwarg:
            rotary = self.bridge._bound.pos_embed
            extra = {k: self._per_layer(v, layer) for k, v in self.call.rotary_args.items()}
            out[self.call.position_embeddings_kwarg] = rotary(hidden, position_ids, **extra)
        if self.call.position_ids_kwarg:
            out[self.call.position_ids_kwarg] = position_ids
        if self.call.position_bias_kwarg and self.spec.score_bias is not None:
            out[self.call.position_bias_kwarg] = self.score_bias(seq, padding, hidden)
        return out

    def score_bias(self, seq: int, padding: torch.Tensor | None, hidden: torch.Tensor) -> torch.Tensor:
        """The stack's score bias from its kind, in the format the model's modules take."""
        bias_spec = self.spec.score_bias
        kind = self.bridge.registry.plugins.kinds.score_biases[bias_spec.kind]
        bias = kind.compute(
            table=self.bridge._bound.score_bias,
            q_len=seq,
            k_len=seq,
            offset=0,
            padding_mask=padding,
            n_heads=self.bridge.cfg.n_heads,
            dtype=hidden.dtype,
            device=hidden.device,
            bidirectional=bias_spec.bidirectional,
            num_buckets=evaluate(bias_spec.num_buckets, self._lookup) if bias_spec.num_buckets else None,
            max_distance=evaluate(bias_spec.max_distance, self._lookup) if bias_spec.max_distance else None,
        )
        if bias.shape[0] == 1:
            bias = bias.expand(hidden.shape[0], *bias.shape[1:])
        return kind.module_format(bias) if kind.module_format is not None else bias

    def block(self, layer: int, hidden: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Block `layer` applied to residual `hidden` `[b, s, d_model]`; returns the new residual."""
        bound = self.bridge._bound.blocks[layer]
        kwargs = self.kwargs(layer, hidden, attention_mask)
        output = bound.module(**{self.spec.block.hidden_states_kwarg: hidden}, **kwargs)
        return _select(output, self.spec.block.output_index)

    def attention(
        self, layer: int, normalized: torch.Tensor, attention_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """The attention module of block `layer` on its (already normalized) input."""
        bound = self.bridge._bound.blocks[layer]
        kwargs = self.kwargs(layer, normalized, attention_mask)
        output = bound.attn.module(hidden_states=normalized, **kwargs)
        return _select(output, self.spec.block.attn.output_index)
