"""What kind of module something is, told from its class and its computation."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..probe import same


def is_linear(module: nn.Module) -> bool:
    return isinstance(module, nn.Linear) or type(module).__name__ == "Conv1D"


def layout(module: nn.Module) -> str:
    return "conv1d" if type(module).__name__ == "Conv1D" else "linear"


def is_norm(module: nn.Module) -> bool:
    if list(module.children()):
        return False
    return isinstance(module, (nn.LayerNorm, nn.RMSNorm)) or "norm" in type(module).__name__.lower()


def eps_of(module: nn.Module) -> float | None:
    for name in ("eps", "variance_epsilon", "epsilon"):
        value = getattr(module, name, None)
        if isinstance(value, float):
            return value
    return None


def norm_kind(module: nn.Module, x: torch.Tensor, y: torch.Tensor) -> str | None:
    """The registered norm kind whose formula reproduces this module's output on its observed input."""
    for eps in dict.fromkeys((eps_of(module), 1e-5, 1e-6)):
        if eps is not None:
            found = _kind_at(module, x, y, eps)
            if found:
                return found
    return None


def _kind_at(module: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float) -> str | None:
    weight = getattr(module, "weight", None)
    bias = getattr(module, "bias", None)
    w = weight.detach().float() if isinstance(weight, torch.Tensor) else torch.ones(x.shape[-1])
    xf = x.float()
    centered = xf - xf.mean(-1, keepdim=True)
    layer = centered / torch.sqrt(centered.pow(2).mean(-1, keepdim=True) + eps) * w
    if isinstance(bias, torch.Tensor):
        layer = layer + bias.detach().float()
    rms = xf / torch.sqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    for kind, value in (("layernorm", layer), ("rmsnorm", rms * w), ("rmsnorm_offset", rms * (1.0 + w))):
        if same(value, y.float(), atol=1e-5):
            return kind
    return None


def leaves(root: nn.Module, prefix: str, test) -> list[tuple[str, nn.Module]]:
    base = f"{prefix}." if prefix else ""
    return [(f"{base}{n}" if n else prefix, m) for n, m in root.named_modules() if test(m)]


def under(path: str, root: str) -> bool:
    return path == root or path.startswith(root + ".")


def first_tensor(value: Any) -> torch.Tensor | None:
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, (tuple, list)) and value and isinstance(value[0], torch.Tensor):
        return value[0]
    return None
