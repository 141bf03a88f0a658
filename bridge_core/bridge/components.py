"""Calling one block or one attention module on its own, as the model would call it.

The inputs a module needs besides the hidden states (its mask in its own format, rotary
cos/sin from the model's rotary module, per-layer arguments) are built through the extension
points: the spec's `call:` conventions pick a mask format kind and name the keywords. Used by
the component conformance checks and by layer ranges.
"""

from __future__ import annotations

from typing import Any

import torch

from ..spec.config import config_lookup, evaluate_field, spec_error
from ..spec.expressions import ExpressionError, evaluate
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

    def check_expressions(self) -> None:
        """Evaluate every expression a later call would need, so a bad one fails when the bridge is built
        (with its file and line), not in the middle of `start_at_layer` or a component check."""
        spec, hf_config, file = self.spec, self.bridge.model.config, self.bridge.spec_file
        fields = {
            "unembed.pre_scale": spec.unembed.pre_scale,
            "unembed.softcap": spec.unembed.softcap,
            "block.attn.softcap": spec.block.attn.softcap,
        }
        for bias, at in (
            (spec.score_bias, "score_bias"),
            (spec.encoder.score_bias if spec.encoder else None, "encoder"),
        ):
            if bias is not None:
                fields[f"{at}.num_buckets"] = bias.num_buckets
                fields[f"{at}.max_distance"] = bias.max_distance
        for field, value in fields.items():
            evaluate_field(file, field, value, hf_config, spec)
        per_layer = {
            "call.window": self.call.window,
            **{f"call.rotary_args.{k}": v for k, v in self.call.rotary_args.items()},
        }
        for layer in range(self.bridge.cfg.n_layers):
            for field, value in per_layer.items():
                try:
                    self._per_layer(value, layer)
                except ExpressionError as exc:
                    raise spec_error(f"{exc.reason} (expression '{value}', layer {layer})", spec, file, field) from None

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
        out: dict[str, Any] = {}
        mask_kwarg = mask_kwarg or self.call.mask_kwarg
        if mask_kwarg:
            window = None if encoder else self.window(layer)
            out[mask_kwarg] = self.mask_format.build(
                padding, batch, seq, seq, not encoder, hidden.dtype, hidden.device, window
            )
        if self.call.position_embeddings_kwarg:
            rotary = self.bridge._bound.pos_embed
            extra = {k: self._per_layer(v, layer) for k, v in self.call.rotary_args.items()}
            out[self.call.position_embeddings_kwarg] = rotary(hidden, position_ids, **extra)
        if self.call.position_ids_kwarg:
            out[self.call.position_ids_kwarg] = position_ids
        bias_spec = self.spec.encoder.score_bias if encoder else self.spec.score_bias
        if self.call.position_bias_kwarg and bias_spec is not None:
            table = self.bridge._bound.encoder.score_bias if encoder else self.bridge._bound.score_bias
            out[self.call.position_bias_kwarg] = self.score_bias(bias_spec, table, seq, padding, hidden)
        return out

    def score_bias(
        self, bias_spec: Any, table: Any, seq: int, padding: torch.Tensor | None, hidden: torch.Tensor
    ) -> torch.Tensor:
        """A stack's score bias from its kind, in the format the model's modules take."""
        kind = self.bridge.registry.plugins.kinds.score_biases[bias_spec.kind]
        bias = kind.compute(
            table=table,
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

    def _bound_block(self, layer: int, stack: str):
        if stack == "encoder":
            if self.bridge._bound.encoder is None:
                raise ValueError("this model has no encoder stack")
            return self.bridge._bound.encoder.blocks[layer], self.spec.encoder.block
        return self.bridge._bound.blocks[layer], self.spec.block

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
        bound, block_spec = self._bound_block(layer, stack)
        kwargs = self.kwargs(layer, hidden, attention_mask, stack=stack)
        if block_spec.cross_attn is not None:
            if encoder_states is None:
                raise ValueError(f"decoder block {layer} has cross attention: pass encoder_states")
            cross = block_spec.cross_attn
            kind = self.bridge.registry.plugins.kinds.cross_attentions[cross.kind]
            kwargs.update(
                kind.block_kwargs(
                    encoder_states, encoder_mask, hidden.shape[1], hidden.dtype, self.mask_format,
                    cross.encoder_states_kwarg, cross.encoder_mask_kwarg,
                )
            )  # fmt: skip
        output = bound.module(**{block_spec.hidden_states_kwarg: hidden}, **kwargs)
        return _select(output, block_spec.output_index)

    def attention(
        self,
        layer: int,
        normalized: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        stack: str = "decoder",
    ) -> torch.Tensor:
        """The self-attention module of block `layer` on its (already normalized) input: its contribution
        to the residual (a module that adds the residual itself is given a zero residual)."""
        bound, block_spec = self._bound_block(layer, stack)
        attn_spec = block_spec.attn
        kwargs = self.kwargs(layer, normalized, attention_mask, stack=stack, mask_kwarg=self.call.attention_mask_kwarg)
        if attn_spec.residual_kwarg is not None:
            kwargs[attn_spec.residual_kwarg] = torch.zeros_like(normalized)
        output = bound.attn.module(hidden_states=normalized, **kwargs)
        return _select(output, attn_spec.output_index)
