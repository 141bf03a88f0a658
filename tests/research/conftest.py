"""Shared setup of the research-API tests: tiny random models with every parameter randomized.

HF initializes norm weights to 1 (Gemma: 0) and biases to 0, which would make folding and centering
trivially exact; `tiny` perturbs all of them, then keeps an untouched deep copy as the reference.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from bridge_core.bridge.bridge import Bridge
from bridge_core.bridge.loading import random_model
from bridge_core.registry import default_registry


@pytest.fixture(scope="session", autouse=True)
def single_threaded_torch():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def randomize(model: nn.Module, seed: int = 0) -> nn.Module:
    """Norm weights around 1 (around 0 for `(1 + w)` norms), biases small and non-zero."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _module_name, module in model.named_modules():
            is_norm = "norm" in type(module).__name__.lower()
            for name, param in module.named_parameters(recurse=False):
                if param.dim() != 1:
                    continue
                noise = torch.randn(param.shape, generator=generator) * 0.2
                offset = 1.0 if is_norm and name == "weight" and "Gemma" not in type(module).__name__ else 0.0
                param.copy_(noise + offset)
    return model


def tiny(name: str, seed: int = 0, **overrides) -> tuple[Bridge, nn.Module]:
    """A bridge over a randomized tiny model of spec `name`, and an untouched deep copy taken before the bridge."""
    spec = default_registry().get(name)
    model = randomize(random_model(spec, seed=seed, **overrides), seed)
    reference = copy.deepcopy(model)
    return Bridge.from_hf(model, name), reference


def tokens(batch: int = 2, seq: int = 9, vocab: int = 101, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, vocab, (batch, seq), generator=torch.Generator().manual_seed(seed))
