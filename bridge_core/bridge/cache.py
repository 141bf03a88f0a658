"""ActivationCache: what `run_with_cache` returns, a mapping from hook name to tensor.

Keys are full hook names; TransformerLens shortcuts work too (`cache["pattern", 0]`,
`cache["resid_post", 3]`, `cache["scale", 2, "ln1"]`). The residual-stream analyses (logit lens,
decompositions, logit attribution) are methods here, implemented in `analysis.py`.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

import torch

from ..errors import HookNameError, close_matches

if TYPE_CHECKING:
    from .analysis import PosSlice

_ALIASES = {
    "attn": "pattern",
    "attn_logits": "attn_scores",
    "key": "k",
    "query": "q",
    "value": "v",
    "mlp_pre": "pre",
    "mlp_mid": "mid",
    "mlp_post": "post",
}
_LAYER_TYPE_ALIASES = {"a": "attn", "m": "mlp", "b": "", "block": "", "blocks": "", "attention": "attn"}
_ATTN = {"q", "k", "v", "z", "rot_q", "rot_k", "result", "pattern", "attn_scores"}
_MLP = {"pre", "pre_linear", "mid", "post"}
_NORM = {"scale", "normalized"}  # without a layer: the final norm's
_GLUED = re.compile(r"([a-z]+)(\d+)([a-z]?.*)")  # "pattern3", "k6a"


def act_name(name: str, layer: int | str | None = None, layer_type: str | None = None) -> str:
    """TransformerLens's short names to full hook names: ("pattern", 0) -> blocks.0.attn.hook_pattern,
    "scale" -> ln_final.hook_scale, ("scale", 0, "ln1") -> blocks.0.ln1.hook_scale, "resid_pre2"."""
    if ("." in name or name.startswith("hook_")) and layer is None and layer_type is None:
        return name
    glued = _GLUED.fullmatch(name)
    if glued is not None:
        name, layer, layer_type = glued.group(1), glued.group(2), glued.group(3) or None
    name = _ALIASES.get(name, name)
    if name in _ATTN:
        layer_type = "attn"
    elif name in _MLP:
        layer_type = "mlp"
    elif layer_type is not None:
        layer_type = _LAYER_TYPE_ALIASES.get(layer_type, layer_type)
    out = "" if layer is None else f"blocks.{layer}."
    if layer_type:
        out += f"{layer_type}."
    out += name if name.startswith("hook_") else f"hook_{name}"
    if name in _NORM and layer is None:
        out = f"ln_final.{out}"
    return out


class ActivationCache(Mapping[str, torch.Tensor]):
    """Cached activations of one forward, by hook name."""

    def __init__(self, cache: dict[str, torch.Tensor], bridge=None, has_batch_dim: bool = True) -> None:
        self.cache_dict = cache
        self.bridge = bridge
        self.has_batch_dim = has_batch_dim

    def _key(self, key) -> str:
        if isinstance(key, tuple):
            if len(key) > 1 and isinstance(key[1], int) and key[1] < 0 and self.bridge is not None:
                key = (key[0], self.bridge.cfg.n_layers + key[1], *key[2:])  # cache["resid_post", -1]
            return act_name(*key)
        if key in self.cache_dict:
            return key
        return act_name(key)  # cache["embed"] -> hook_embed, cache["scale"] -> ln_final.hook_scale

    def __getitem__(self, key) -> torch.Tensor:
        name = self._key(key)
        try:
            return self.cache_dict[name]
        except KeyError:
            raise HookNameError(name, close_matches(name, self.cache_dict)) from None

    def __contains__(self, key) -> bool:
        return self._key(key) in self.cache_dict

    def __iter__(self) -> Iterator[str]:
        return iter(self.cache_dict)

    def __len__(self) -> int:
        return len(self.cache_dict)

    def to(self, device: torch.device | str) -> ActivationCache:
        return ActivationCache({k: v.to(device) for k, v in self.cache_dict.items()}, self.bridge, self.has_batch_dim)

    def remove_batch_dim(self) -> ActivationCache:
        """Drop a batch dimension of size 1 from every tensor."""
        if not self.has_batch_dim:
            return self
        for name, value in self.cache_dict.items():
            if value.shape[0] != 1:
                raise ValueError(f"cannot remove the batch dim: '{name}' has batch size {value.shape[0]}")
        return ActivationCache({k: v[0] for k, v in self.cache_dict.items()}, self.bridge, has_batch_dim=False)

    # ------------------------------------------------------------------ residual-stream analysis
    def accumulated_resid(
        self,
        layer: int | None = None,
        incl_mid: bool = False,
        apply_ln: bool = False,
        pos_slice: PosSlice = None,
        mlp_input: bool = False,
        return_labels: bool = False,
    ) -> Any:
        """The residual entering each block up to `layer`, stacked (logit lens); see `analysis.accumulated_resid`."""
        return _analysis().accumulated_resid(self, layer, incl_mid, apply_ln, pos_slice, mlp_input, return_labels)

    def decompose_resid(
        self,
        layer: int | None = None,
        mlp_input: bool = False,
        mode: str = "all",
        apply_ln: bool = False,
        pos_slice: PosSlice = None,
        incl_embeds: bool = True,
        return_labels: bool = False,
    ) -> Any:
        """The residual at `layer` split into embeddings and attention / MLP outputs; they sum to it."""
        return _analysis().decompose_resid(
            self, layer, mlp_input, mode, apply_ln, pos_slice, incl_embeds, return_labels
        )

    def stack_head_results(
        self,
        layer: int = -1,
        return_labels: bool = False,
        incl_remainder: bool = False,
        pos_slice: PosSlice = None,
        apply_ln: bool = False,
    ) -> Any:
        """Every head's output `[n_layers * n_heads, batch, pos, d_model]` (from hook_result, else hook_z @ W_O)."""
        return _analysis().stack_head_results(self, layer, return_labels, incl_remainder, pos_slice, apply_ln)

    def stack_activation(self, activation_name: str, layer: int = -1, sublayer_type: str | None = None) -> torch.Tensor:
        """One activation of every block below `layer`, stacked on a new first dimension."""
        return _analysis().stack_activation(self, activation_name, layer, sublayer_type)

    def apply_ln_to_stack(
        self,
        residual_stack: torch.Tensor,
        layer: int | None = None,
        mlp_input: bool = False,
        pos_slice: PosSlice = None,
        batch_slice: PosSlice = None,
        has_batch_dim: bool | None = None,
    ) -> torch.Tensor:
        """Components normalized by the cached scale of the norm reading `layer` (ln_final by default)."""
        return _analysis().apply_ln_to_stack(
            self, residual_stack, layer, mlp_input, pos_slice, batch_slice, has_batch_dim
        )

    def logit_attrs(
        self,
        residual_stack: torch.Tensor,
        tokens: Any,
        incorrect_tokens: Any = None,
        pos_slice: PosSlice = None,
        batch_slice: PosSlice = None,
        has_batch_dim: bool | None = None,
    ) -> torch.Tensor:
        """Direct logit attribution of each component to `tokens` (minus `incorrect_tokens`)."""
        return _analysis().logit_attrs(
            self, residual_stack, tokens, incorrect_tokens, pos_slice, batch_slice, has_batch_dim
        )

    def compute_head_results(self) -> None:
        """Add each block's per-head outputs `blocks.{l}.attn.hook_result` `[batch, pos, n_heads, d_model]`
        (`hook_z` times each head's W_O, no b_O), as TransformerLens does."""
        _analysis().compute_head_results(self)

    def get_neuron_results(self, layer: int, neuron_slice: PosSlice = None, pos_slice: PosSlice = None) -> torch.Tensor:
        """Each neuron's contribution to the residual in block `layer`: `[batch, pos, d_mlp, d_model]`."""
        return _analysis().neuron_results(self, layer, neuron_slice, pos_slice)

    def stack_neuron_results(
        self,
        layer: int,
        pos_slice: PosSlice = None,
        neuron_slice: PosSlice = None,
        return_labels: bool = False,
        incl_remainder: bool = False,
        apply_ln: bool = False,
    ) -> Any:
        """Every neuron's output in blocks 0..layer-1, `[layer * d_mlp (+1), batch, pos, d_model]` (`L{l}N{n}`)."""
        return _analysis().stack_neuron_results(
            self, layer, pos_slice, neuron_slice, return_labels, incl_remainder, apply_ln
        )

    def get_full_resid_decomposition(
        self,
        layer: int | None = None,
        mlp_input: bool = False,
        expand_neurons: bool = True,
        apply_ln: bool = False,
        pos_slice: PosSlice = None,
        return_labels: bool = False,
    ) -> Any:
        """The residual at `layer` as heads, neurons (or MLPs), embeddings and the summed biases; sums to it."""
        return _analysis().full_resid_decomposition(
            self, layer, mlp_input, expand_neurons, apply_ln, pos_slice, return_labels
        )

    def __repr__(self) -> str:
        return f"ActivationCache({len(self)} tensors: {', '.join(list(self)[:4])}{', ...' if len(self) > 4 else ''})"


def _analysis() -> Any:
    """`analysis.py`, imported on first use: a first bridge and a plain cache do not need it."""
    from . import analysis

    return analysis
