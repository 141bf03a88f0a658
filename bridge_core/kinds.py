"""The kinds that plugins register through the extension points (DESIGN §3.4).

A spec picks a kind by name (`kind: layernorm`); the classes here say what a kind must provide.
Built-in kinds live in `plugins/`; third-party packages register their own the same way.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

ActivationFunction = Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class NormKind:
    """A normalization: `output = normalized * (w + weight_offset) + b`, `normalized = x' / scale`.

    `x'` is `x` minus its mean when `centered` (LayerNorm) and `x` itself otherwise (RMSNorm);
    `scale = sqrt(mean(x'^2) + eps)`. These are HookedTransformer's `hook_scale` / `hook_normalized`.
    """

    name: str
    centered: bool
    weight_offset: float = 0.0
    upcast: bool = False  # compute in float32 and cast back (RMSNorm families)
    eps_attributes: tuple[str, ...] = ("eps", "variance_epsilon", "epsilon")

    def eps(self, module: nn.Module) -> float:
        for name in self.eps_attributes:
            value = getattr(module, name, None)
            if isinstance(value, (int, float)):
                return float(value)
        raise AttributeError(
            f"norm kind '{self.name}' found no epsilon on {type(module).__name__} "
            f"(looked for {', '.join(self.eps_attributes)})"
        )

    def prepare(self, x: torch.Tensor) -> torch.Tensor:
        if self.upcast:
            x = x.float()
        return x - x.mean(-1, keepdim=True) if self.centered else x

    def scale(self, prepared: torch.Tensor, eps: float) -> torch.Tensor:
        return (prepared.pow(2).mean(-1, keepdim=True) + eps).sqrt()

    def output(
        self, normalized: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None, dtype: torch.dtype
    ) -> torch.Tensor:
        """The norm's output from (possibly edited) normalized values and the module's weight and bias."""
        out = normalized
        if weight is not None:
            w = weight.float() if self.upcast else weight
            out = out * (w + self.weight_offset) if self.weight_offset else out * w
        if bias is not None:
            out = out + bias
        return out.to(dtype)

    def weight(self, module: nn.Module) -> torch.Tensor | None:
        """The raw weight parameter (a view); `weight_offset` is not folded in."""
        return getattr(module, "weight", None)

    def bias(self, module: nn.Module) -> torch.Tensor | None:
        return getattr(module, "bias", None)


@dataclass(frozen=True)
class PositionKind:
    """How positional information enters the model.

    `table_rows(weight, offset, n_ctx)` gives the usable rows of a learned table (`W_pos`);
    `limits_length` says whether inputs longer than `n_ctx` must be refused; `rotates_qk` whether
    queries and keys are rotated inside attention (then `hook_rot_q` / `hook_rot_k` exist).
    """

    name: str
    limits_length: bool
    has_table: bool
    rotates_qk: bool = False
    # (x [b, h, s, d], cos, sin, rotary_dim) -> x rotated; used by the reimplement attention path
    rotate: Callable[[torch.Tensor, torch.Tensor, torch.Tensor, int], torch.Tensor] | None = None

    def table_rows(self, weight: torch.Tensor, offset: int, n_ctx: int | None) -> torch.Tensor:
        end = None if n_ctx is None else offset + n_ctx
        return weight[offset:end]


@dataclass(frozen=True)
class ScoreBiasKind:
    """An additive score bias `[1 or b, h, q or 1, k]` shared by the layers of one stack call.

    `compute(**inputs)` builds it for component calls and the reimplement path. It receives keyword
    arguments and takes what it needs: `table` (the module holding a learned table, or None),
    `q_len`, `k_len`, `offset` (position of the first query), `padding_mask` (`[b, k]` bool, True =
    real token, or None), `n_heads`, `dtype`, `device`, and the spec's `bidirectional`,
    `num_buckets`, `max_distance`.
    `hook_view` shows the table module's output as `[1, h, q, k]` for `hook_rel_pos_bias` (a view,
    so an edit made there reaches every layer that shares the bias); None when the bias has no module.
    `module_format` turns `[b, h, q or 1, k]` into what the model's modules take (BLOOM: `[b*h, 1, k]`).
    """

    name: str
    compute: Callable[..., torch.Tensor]
    hook_view: Callable[[torch.Tensor], torch.Tensor] | None = None
    module_format: Callable[[torch.Tensor], torch.Tensor] | None = None


@dataclass(frozen=True)
class CrossAttentionKind:
    """Where a decoder block's cross-attention keys and values come from, and how it is called.

    `block_kwargs(encoder_states, encoder_mask, q_len, dtype, mask_format, spec)` returns the keyword
    arguments a decoder block needs for cross attention when the core calls it alone.
    """

    name: str
    block_kwargs: Callable[..., dict]


@dataclass(frozen=True)
class MaskFormat:
    """The mask a module expects when the core calls it on its own.

    `build(padding_mask, q_len, causal, window, dtype)` receives a `[b, k]` bool padding mask (True =
    attend) and returns what the module takes; `additive(...)` is always the `[b, 1, q, k]` float form.
    """

    name: str
    build: Callable[..., torch.Tensor | None]


def additive_mask(
    padding_mask: torch.Tensor | None,
    batch: int,
    q_len: int,
    k_len: int,
    causal: bool,
    dtype: torch.dtype,
    device: torch.device | str = "cpu",
    window: int | None = None,
) -> torch.Tensor:
    """`[b, 1, q, k]` additive mask: 0 where attended, dtype-min elsewhere (queries are the last q keys)."""
    q_pos = torch.arange(k_len - q_len, k_len, device=device)[:, None]
    k_pos = torch.arange(k_len, device=device)[None, :]
    allowed = torch.ones(q_len, k_len, dtype=torch.bool, device=device)
    if causal:
        allowed &= k_pos <= q_pos
    if window is not None:
        allowed &= q_pos - k_pos < window
    allowed = allowed[None, None].expand(batch, 1, q_len, k_len)
    if padding_mask is not None:
        allowed = allowed & padding_mask.to(torch.bool)[:, None, None, :]
    zero = torch.zeros((), dtype=dtype, device=device)
    return torch.where(allowed, zero, torch.finfo(dtype).min)
