"""ActivationCache: what `run_with_cache` returns, a mapping from hook name to tensor.

Keys are full hook names; TransformerLens shortcuts work too (`cache["pattern", 0]`,
`cache["resid_post", 3]`, `cache["scale", 2, "ln1"]`).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

import torch

from ..errors import HookNameError, close_matches

_ALIASES = {
    "attn": "pattern",
    "attn_logits": "attn_scores",
    "key": "k",
    "query": "q",
    "value": "v",
    "mlp_pre": "pre",
    "mlp_post": "post",
}
_LAYER_TYPE_ALIASES = {"a": "attn", "m": "mlp", "b": "", "block": "", "blocks": "", "attention": "attn"}
_ATTN = {"q", "k", "v", "z", "rot_q", "rot_k", "result", "pattern", "attn_scores"}
_MLP = {"pre", "pre_linear", "post"}


def act_name(name: str, layer: int | None = None, layer_type: str | None = None) -> str:
    """TransformerLens's short names to full hook names: ("pattern", 0) -> blocks.0.attn.hook_pattern."""
    if "." in name or (name.startswith("hook_") and layer is None):
        return name
    name = _ALIASES.get(name, name)
    if layer_type is not None:
        layer_type = _LAYER_TYPE_ALIASES.get(layer_type, layer_type)
    elif name in _ATTN:
        layer_type = "attn"
    elif name in _MLP:
        layer_type = "mlp"
    out = "" if layer is None else f"blocks.{layer}."
    if layer_type:
        out += f"{layer_type}."
    return out + (name if name.startswith("hook_") else f"hook_{name}")


class ActivationCache(Mapping[str, torch.Tensor]):
    """Cached activations of one forward, by hook name."""

    def __init__(self, cache: dict[str, torch.Tensor], bridge=None) -> None:
        self.cache_dict = cache
        self.bridge = bridge

    def _key(self, key) -> str:
        if isinstance(key, tuple):
            return act_name(*key)
        return key

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
        return ActivationCache({k: v.to(device) for k, v in self.cache_dict.items()}, self.bridge)

    def remove_batch_dim(self) -> ActivationCache:
        """Drop a batch dimension of size 1 from every tensor."""
        for name, value in self.cache_dict.items():
            if value.shape[0] != 1:
                raise ValueError(f"cannot remove the batch dim: '{name}' has batch size {value.shape[0]}")
        return ActivationCache({k: v[0] for k, v in self.cache_dict.items()}, self.bridge)

    def __repr__(self) -> str:
        return f"ActivationCache({len(self)} tensors: {', '.join(list(self)[:4])}{', ...' if len(self) > 4 else ''})"
