"""A drop-in for code written against TransformerLens: `from bridge_core.compat import HookedTransformer`
turns `HookedTransformer.from_pretrained(...)` into a bridge (a processed copy when folding is asked for),
accepting HookedTransformer's constructor arguments or refusing them with a typed error.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .bridge.bridge import Bridge
from .errors import BridgeCoreError, ProcessingError

__all__ = ["CompatError", "HookedSAETransformer", "HookedTransformer"]


class CompatError(BridgeCoreError, ValueError):
    """A HookedTransformer argument that a bridge cannot honour; says which and what to do instead."""


# HookedTransformer.from_pretrained arguments a bridge refuses unless left at these defaults, with the reason.
_REFUSED: dict[str, tuple[Any, str]] = {
    "refactor_factored_attn_matrices": (False, "a bridge keeps the model's own attention weights"),
    "checkpoint_index": (None, "load that checkpoint's directory or revision with transformers, then pass the model"),
    "checkpoint_value": (None, "load that checkpoint's directory or revision with transformers, then pass the model"),
    "first_n_layers": (None, "a bridge wraps the whole model; use stop_at_layer= on the forward instead"),
    "default_prepend_bos": (None, "the spec sets whether a BOS is prepended; pass prepend_bos= to to_tokens"),
    "default_padding_side": ("right", "set tokenizer.padding_side on the tokenizer you pass"),
    "n_devices": (1, "load with Bridge.from_pretrained(name, device_map='auto') to spread a model over devices"),
}


def _dtype(dtype: str | torch.dtype | None) -> torch.dtype | None:
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    found = getattr(torch, str(dtype).removeprefix("torch."), None)
    if not isinstance(found, torch.dtype):
        raise CompatError(f"dtype={dtype!r} is not a torch dtype (e.g. 'float32', 'bfloat16', torch.float16)")
    return found


def _refuse(options: dict[str, Any]) -> None:
    for name, value in options.items():
        if name not in _REFUSED:
            known = ", ".join(["fold_ln", "center_writing_weights", "center_unembed", "fold_value_biases"])
            raise CompatError(
                f"HookedTransformer.from_pretrained got '{name}', which bridge-core does not know; it takes {known}, "
                f"device, dtype, tokenizer, hf_model, move_to_device and (at their defaults) {', '.join(_REFUSED)}"
            )
        default, instead = _REFUSED[name]
        if value != default:
            raise CompatError(f"{name}={value!r} is not supported on a bridge (only {default!r}): {instead}")


def _load(path_or_model: Any, hf_model: nn.Module | None, tokenizer: Any, dtype: torch.dtype | None) -> Bridge:
    model = hf_model if hf_model is not None else path_or_model
    if isinstance(model, Bridge):
        return model
    if isinstance(model, nn.Module):
        current = next(model.parameters()).dtype
        if dtype is not None and dtype != current:  # casting in place would change the user's model
            raise CompatError(f"dtype={dtype} differs from the model's {current}: cast the model yourself first")
        return Bridge.from_hf(model, tokenizer=tokenizer)
    if not isinstance(path_or_model, str | Path):
        raise CompatError(f"from_pretrained takes a checkpoint path, a hub id or a model, got {type(model).__name__}")
    hf_kwargs = {"dtype": dtype} if dtype is not None else {}
    return Bridge.from_pretrained(path_or_model, tokenizer=True if tokenizer is None else tokenizer, **hf_kwargs)


def _processed(bridge: Bridge, fold_ln: bool, center_writing: bool, center_unembed: bool, fold_biases: bool) -> Bridge:
    if not (fold_ln or center_writing or center_unembed or fold_biases):
        return bridge
    try:
        return bridge.processed_copy(fold_ln, center_writing, center_unembed, fold_biases)
    except ProcessingError as error:
        # HookedTransformer itself skips centering for RMSNorm models (with a warning); do the same
        if error.transform != "center_writing_weights" or not center_writing:
            raise
        warnings.warn(f"center_writing_weights skipped: {error.reason}", stacklevel=3)
        return bridge.processed_copy(fold_ln, False, center_unembed, fold_biases)


class HookedTransformer:
    """Not a class to instantiate: `from_pretrained` returns a `Bridge` with HookedTransformer's surface."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        raise CompatError(
            "HookedTransformer(cfg) builds TransformerLens's own model; bridge-core wraps a Hugging Face model: "
            "use HookedTransformer.from_pretrained(path_or_model) or Bridge.from_spec(spec) for a random one"
        )

    @classmethod
    def from_pretrained(
        cls,
        path_or_model: str | Path | nn.Module,
        fold_ln: bool = True,
        center_writing_weights: bool = True,
        center_unembed: bool = True,
        fold_value_biases: bool = True,
        hf_model: nn.Module | None = None,
        device: str | torch.device | None = None,
        dtype: str | torch.dtype | None = None,
        tokenizer: Any = None,
        move_to_device: bool = True,
        **options: Any,
    ) -> Bridge:
        """A bridge over `path_or_model` (checkpoint path, hub id, HF model, or `hf_model=`), processed as
        HookedTransformer processes weights by default; the model you pass is never changed."""
        _refuse(options)
        bridge = _load(path_or_model, hf_model, tokenizer, _dtype(dtype))
        if tokenizer is not None and bridge.tokenizer is None:
            bridge.tokenizer = tokenizer
        processed = _processed(bridge, fold_ln, center_writing_weights, center_unembed, fold_value_biases)
        if device is not None and move_to_device:
            users = hf_model is not None or isinstance(path_or_model, nn.Module | Bridge)
            if processed is bridge and users:
                if torch.device(device) != next(bridge.model.parameters()).device:
                    raise CompatError("moving your model would change it: move it yourself, or ask for processing")
            else:
                processed.to(device)  # our own copy (loaded or processed)
        return processed

    @classmethod
    def from_pretrained_no_processing(cls, path_or_model: str | Path | nn.Module, **kwargs: Any) -> Bridge:
        """`from_pretrained` with no weight processing: the model's own weights, as loaded."""
        processing = {"fold_ln": False, "center_writing_weights": False, "center_unembed": False}
        return cls.from_pretrained(path_or_model, **{**processing, "fold_value_biases": False, **kwargs})


class HookedSAETransformer(HookedTransformer):
    """`HookedTransformer.from_pretrained` returning an `SAEBridge` (needs the `sae` extra)."""

    @classmethod
    def from_pretrained(cls, path_or_model: Any, **kwargs: Any) -> Any:  # type: ignore[override]
        from .sae import SAEBridge

        return SAEBridge(HookedTransformer.from_pretrained(path_or_model, **kwargs))

    @classmethod
    def from_pretrained_no_processing(cls, path_or_model: Any, **kwargs: Any) -> Any:  # type: ignore[override]
        from .sae import SAEBridge

        return SAEBridge(HookedTransformer.from_pretrained_no_processing(path_or_model, **kwargs))
