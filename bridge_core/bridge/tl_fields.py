"""HookedTransformer conveniences that read the bound model: model-dependent cfg fields
(`cfg.device`, `cfg.normalization_type` ...), hook points as attributes, `mod_dict`, `get_token_position`.
A mixin of `Bridge` (`CompatMethods`) over plain functions.
"""

from __future__ import annotations

from typing import Any

import torch

from ..errors import InputError, TokenizerError
from . import hook_handles
from . import tokens as tk
from .hook_handles import handle
from .weights import NormWeights

# position kinds HookedTransformer names differently (its 'standard' is a learned table)
_POSITION_NAMES = {"learned": "standard", "none": None}


def normalization_type(bridge: Any) -> str | None:
    """'LN' when the norms subtract the mean, 'RMS' when not, None without norms; 'Pre' once fold_ln ran."""
    bound = bridge.bound
    norms = [n for block in bound.blocks for n in block.norms()]
    if bound.ln_final is not None:
        norms.append(bound.ln_final)
    if not norms:
        return None
    name = "LN" if all(n.kind.centered for n in norms) else "RMS"
    folded = getattr(bridge, "processing", {}).get("fold_ln", False)
    return name + "Pre" if folded else name


def config_field(bridge: Any, name: str) -> Any:
    if name == "device":
        return bridge._device()
    if name == "dtype":
        return bridge.bound.embed.weight.dtype
    if name == "normalization_type":
        return normalization_type(bridge)
    if name == "positional_embedding_type":
        kind = bridge.bound.position_kind.name
        return _POSITION_NAMES.get(kind, kind)
    if name == "default_prepend_bos":
        declared = bridge.bound.default_prepend_bos
        if declared is not None or bridge.tokenizer is None:
            return True if declared is None else bool(declared)  # HookedTransformer's default is True
        return tk.default_prepend_bos(bridge)
    raise AttributeError(f"no model-dependent config field '{name}'")


def mod_dict(bridge: Any) -> dict[str, Any]:
    """Every hook point (as a handle) by hook name, and every HF module by its HF path."""
    modules: dict[str, Any] = {name: module for name, module in bridge.model.named_modules() if name}
    modules.update({name: handle(bridge, point) for name, point in bridge._points.items()})
    return modules


def get_token_position(
    bridge: Any,
    single_token: str | int | torch.Tensor,
    input: str | torch.Tensor,
    mode: str = "first",
    prepend_bos: bool | None = None,
    padding_side: str | None = None,
) -> int:
    """The first (or last) position of `single_token` in `input` (a string, `[pos]` or `[1, pos]` tokens)."""
    if mode not in ("first", "last"):
        raise InputError(f"mode must be 'first' or 'last', got {mode!r}")
    tokens = tk.to_tokens(bridge, input, prepend_bos, padding_side) if isinstance(input, str) else input
    tokens = torch.as_tensor(tokens)
    if tokens.dim() == 2:
        if tokens.shape[0] != 1:
            raise InputError(f"get_token_position takes [pos] or [1, pos] tokens, got shape {tuple(tokens.shape)}")
        tokens = tokens[0]
    if isinstance(single_token, str):
        single_token = tk.to_single_token(bridge, single_token)
    token = int(torch.as_tensor(single_token).item())
    positions = (tokens == token).nonzero().flatten()
    if positions.numel() == 0:
        raise TokenizerError(f"token {token} does not occur in the input")
    return int(positions[0] if mode == "first" else positions[-1])


class CompatMethods:
    """HookedTransformer attributes of `Bridge` (needs `_points`, `_bound`, `model`, `tokenizer`)."""

    _points: dict
    _bound: Any

    def __getattr__(self, name: str) -> Any:
        if name.startswith("hook_") and "_points" in self.__dict__:  # bridge.hook_embed, as HookedTransformer
            return hook_handles.hook_attribute(self, "", name)
        return super().__getattr__(name)  # ModelWeights: stacked weights

    @property
    def hook_dict(self) -> dict[str, hook_handles.HookHandle]:
        """Every hook point by name, with HookedTransformer's `add_hook` / `remove_hooks`."""
        return {name: hook_handles.handle(self, point) for name, point in self._points.items()}

    @property
    def mod_dict(self) -> dict[str, Any]:
        """Every hook point by hook name (as in `hook_dict`) and every HF module by its own path."""
        return mod_dict(self)

    @property
    def ln_final(self) -> hook_handles.HookScope | None:
        """The final norm's hook points (`ln_final.hook_scale`) and weights (`w`, `b`); None without one."""
        norm = self._bound.ln_final
        return None if norm is None else hook_handles.HookScope(self, "ln_final", NormWeights(norm))

    def config_field(self, name: str) -> Any:
        """A cfg field that depends on this model (`cfg.device`, `cfg.normalization_type` ...)."""
        return config_field(self, name)

    def get_token_position(
        self,
        single_token: str | int | torch.Tensor,
        input: str | torch.Tensor,
        mode: str = "first",
        prepend_bos: bool | None = None,
        padding_side: str | None = None,
    ) -> int:
        """The first (`mode="first"`) or last position of a token in a prompt (text or tokens)."""
        return get_token_position(self, single_token, input, mode, prepend_bos, padding_side)
