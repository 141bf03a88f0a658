"""Tiny random models of every built-in spec, their inputs, and the "left as found" snapshot.

Models are built from each spec's `test_config` (offline, seeded); references are untouched deep
copies taken before a bridge exists. The snapshot and its assertion are the core tests' own
(`tests/core/_helpers.py`), extended here with the hook dictionaries that the left-as-found invariant covers.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from core._helpers import assert_as_found, snapshot  # tests/ is on sys.path (rootdir-relative packages)
from torch import nn

from bridge_core import Bridge
from bridge_core.bridge.loading import random_model
from bridge_core.registry import default_registry

__all__ = [
    "BUILTIN_SPECS",
    "HOOK_DICTS",
    "assert_as_found",
    "attached_hooks",
    "call_kwargs",
    "hf_logits",
    "model_for",
    "snapshot",
    "tokens_for",
]

BUILTIN_SPECS = [name for name in default_registry().names() if default_registry().origin(name) == "builtin"]
HOOK_DICTS = (
    "_forward_hooks",
    "_forward_pre_hooks",
    "_backward_hooks",
    "_backward_pre_hooks",
    "_forward_hooks_with_kwargs",
    "_forward_pre_hooks_with_kwargs",
    "_forward_hooks_always_called",
)
BATCH, SEQ = 2, 7


def model_for(spec: str, seed: int = 0, dtype: torch.dtype | None = None) -> nn.Module:
    """A tiny random model of `spec` in eval mode, every parameter perturbed so that norms are not identities."""
    model = random_model(default_registry().get(spec), seed=seed)
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        torch.manual_seed(seed + 1)
        for param in model.parameters():
            param.add_(torch.randn_like(param) * 0.05)
    return model if dtype is None else model.to(dtype)


def tokens_for(bridge_or_model: Any, batch: int = BATCH, seq: int = SEQ, seed: int = 1) -> torch.Tensor:
    config = bridge_or_model.config if hasattr(bridge_or_model, "config") else bridge_or_model.model.config
    return torch.randint(0, config.vocab_size, (batch, seq), generator=torch.Generator().manual_seed(seed))


def call_kwargs(model: nn.Module, toks: torch.Tensor) -> dict[str, Any]:
    """Extra keyword arguments a plain forward needs (T5's decoder inputs)."""
    if getattr(model.config, "is_encoder_decoder", False):
        start = model.config.decoder_start_token_id
        decoder = torch.cat([torch.full((toks.shape[0], 1), start), toks[:, :3]], dim=1)
        return {"decoder_input_ids": decoder}
    return {}


def hf_logits(model: nn.Module, toks: torch.Tensor, **kwargs: Any) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=toks, **call_kwargs(model, toks), **kwargs).logits


def attached_hooks(model: nn.Module) -> dict[tuple[str, str], list]:
    """Every non-empty hook dictionary of every module (the left-as-found invariant, docs/architecture.md)."""
    out = {}
    for name, module in model.named_modules():
        for attr in HOOK_DICTS:
            hooks = getattr(module, attr, None)
            if hooks:
                out[(name, attr)] = list(hooks)
    return out


def bridge_and_copy(spec: str, seed: int = 0) -> tuple[Bridge, nn.Module]:
    model = model_for(spec, seed)
    reference = copy.deepcopy(model)
    return Bridge.from_hf(model, spec=spec), reference
