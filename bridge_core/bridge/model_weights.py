"""Model-level weight views of a bridge: `W_E`, `W_pos`, `W_U`, `b_U`, stacked per-layer weights
(`bridge.W_Q` is `[n_layers, n_heads, d_model, d_head]`) and the factored `OV` / `QK` circuits.

A mixin of `Bridge`; per-block views live in `weights.py`. Offloaded parameters are read through
`materialize`, so a view is never a meta tensor.
"""

from __future__ import annotations

from typing import Any

import torch

from . import factored
from .weights import materialize

STACKED = {
    "W_Q": "attn", "W_K": "attn", "W_V": "attn", "W_O": "attn",
    "b_Q": "attn", "b_K": "attn", "b_V": "attn", "b_O": "attn",
    "W_in": "mlp", "W_gate": "mlp", "W_out": "mlp", "b_in": "mlp", "b_out": "mlp",
}  # fmt: skip


class ModelWeights:
    """Weight views over the whole model (needs `bound`, `blocks` and `cfg`)."""

    @property
    def W_E(self) -> torch.Tensor:
        return materialize(self.bound.embed, "weight")

    @property
    def W_pos(self) -> torch.Tensor:
        if self.bound.pos_embed is None or not self.position_kind.has_table:
            raise AttributeError(
                f"{self.cfg.architecture} has no learned position table (W_pos): its positions are "
                f"'{self.position_kind.name}'"
            )
        bound = self.bound
        return bound.position_kind.table_rows(
            materialize(bound.pos_embed, bound.position_kind.table_attr), bound.pos_offset, self.cfg.n_ctx
        )

    @property
    def W_U(self) -> torch.Tensor:
        return materialize(self.bound.unembed, "weight").t()

    @property
    def b_U(self) -> torch.Tensor:
        bias = materialize(self.bound.unembed, "bias")
        extra = self.bound.unembed_bias  # added after the unembedding (BART's final_logits_bias)
        if extra is not None:
            extra = extra.reshape(-1)
            return extra if bias is None else bias + extra
        if bias is not None:
            return bias
        weight = self.bound.unembed.weight
        device = weight.device if weight.device.type != "meta" else "cpu"
        return torch.zeros(self.cfg.d_vocab, dtype=weight.dtype, device=device)

    def __getattr__(self, name: str) -> Any:
        # Stacked per-layer weights, computed on access: bridge.W_Q is [n_layers, n_heads, d_model, d_head].
        if name in STACKED:
            part = STACKED[name]
            values = [getattr(getattr(block, part), name) for block in self.__dict__.get("blocks", [])]
            if any(v is None for v in values):
                raise AttributeError(f"this model has no {name}")
            return torch.stack(values)
        prop = getattr(type(self), name, None)
        if isinstance(prop, property):  # a property raised AttributeError: show its own message
            prop.fget(self)
        raise AttributeError(f"'Bridge' object has no attribute '{name}'")

    @property
    def OV(self) -> factored.FactoredMatrix:
        """`W_V @ W_O` per layer and head, `[n_layers, n_heads, d_model, d_model]`, kept factored."""
        return factored.OV(self)

    @property
    def QK(self) -> factored.FactoredMatrix:
        """`W_Q @ W_K^T` per layer and head, `[n_layers, n_heads, d_model, d_model]`, kept factored."""
        return factored.QK(self)
