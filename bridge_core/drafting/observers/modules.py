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
    """The registered norm kind whose arithmetic reproduces this module's output on its observed input, with
    the epsilon the kind reads (the module's attribute, or the kind's fixed one: OLMo's LayerNorm)."""
    from ...registry import default_registry

    for name, kind in default_registry().plugins.kinds.norms.items():
        try:
            eps = kind.eps(module)
        except AttributeError:  # the module keeps no epsilon and the kind fixes none
            continue
        if _reproduces(kind, module, x, y, eps):
            return name
    return None


def kind_without_eps(module: nn.Module, x: torch.Tensor, y: torch.Tensor) -> str | None:
    """For a module keeping no epsilon that no kind matched: the kind that would match at a common epsilon
    (what a gap names), or None."""
    from ...registry import default_registry

    for name, kind in default_registry().plugins.kinds.norms.items():
        for eps in (1e-5, 1e-6):
            if _reproduces(kind, module, x, y, eps):
                return name
    return None


def _reproduces(kind: Any, module: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float) -> bool:
    if x is None or y is None or x.shape != y.shape:
        return False
    xf = x.float()
    prepared = kind.prepare(xf)
    try:
        value = kind.output(prepared / kind.scale(prepared, eps), kind.weight(module), kind.bias(module), xf.dtype)
    except RuntimeError:  # a weight of another width: not this kind's arithmetic
        return False
    return same(value, y.float(), atol=1e-5)


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
