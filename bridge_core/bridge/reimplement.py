"""The `reimplement` attention path: attention recomputed around the module (docs/architecture.md).

For models whose attention does not go through transformers' AttentionInterface, or any spec
forced onto this path. When a layer has an internal hook (`hook_rot_q/k`, `hook_attn_scores`,
`hook_pattern`), a forward hook on its attention module recomputes attention from the module's
captured inputs: the module's own projections (and q/k norms, and output projection) are called
again, rotary is applied by the position kind, scores and softmax by the bridge's eager function,
and the module's output is replaced. The bridge's hooks on those submodules are held back during
the module's original forward, so each hook point still fires exactly once.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import field
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from ..kinds import PositionKind
from ..records import record
from .attention import AttentionRoute, _eager, _rotated, as_additive_mask
from .bound import BoundModel
from .spec_walker import forward_parameters

if TYPE_CHECKING:
    from ..spec.schema import Spec


@record
class ReimplementedLayer:
    """What the bridge knows about one attention module on the reimplement path."""

    module: nn.Module
    projections: dict[str, nn.Module]  # "qkv" or "q", "k", "v"
    views: dict[str, Any]  # q/k/v views over the projection outputs
    o: nn.Module
    q_norm: nn.Module | None
    k_norm: nn.Module | None
    norm_heads_first: bool
    norm_layout: str  # bhsd | bshd | flat (one norm over [b, s, h * d], before the head split)
    norm_after_rotary: bool  # HunYuan: rotary first, then the q/k norms
    position: PositionKind | None
    rotary_dim: int
    scaling: float
    softcap: float | None
    softmax_float32: bool
    output_index: int | None
    hidden_kwarg: str = "hidden_states"
    mask_kwarg: str = "attention_mask"
    position_embeddings_kwarg: str | None = None
    sin_first: bool = False  # the rotary module returns (sin, cos) (GPT-J)
    residual_kwarg: str | None = None
    residual_position: int | None = None  # where the residual sits among positional arguments
    score_bias: Callable[..., torch.Tensor] | None = None  # the spec's score-bias kind, bound to its inputs
    read_mask: Callable[[torch.Tensor, torch.dtype], torch.Tensor] | None = None  # call.mask_format's reader
    own_causal_mask: bool = False  # the module masks future keys itself (OpenAI GPT), whatever it is handed
    window: int | None = None  # call.window of this layer: keys further back than this are masked here
    submodules: set[int] = field(default_factory=set)
    sinks: torch.Tensor | None = None  # per-head attention-sink logits (GPT-OSS, Granite SWA)
    o_norm: nn.Module | None = None  # BitNet's sub-norm over the attention output, before `o`
    out_gate: Any = None  # a BoundOutGate: the attention output gated from the hidden input, before `o` (AFMoE)


class ReimplementRun:
    """One forward's recomputation of one attention module, with its internal hooks."""

    def __init__(self, layer: ReimplementedLayer, route: AttentionRoute) -> None:
        self.layer = layer
        self.route = route
        self.original_running = False

    def pre_hook(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        self.original_running = True

    def post_hook(self, module: nn.Module, args: tuple, kwargs: dict, output: Any) -> Any:
        self.original_running = False
        layer = self.layer
        if any(name in kwargs and kwargs[name] is not None for name in ("cache", "layer_past", "past_key_values")):
            raise NotImplementedError(
                "internal attention hooks on the reimplement path do not support a KV cache yet; run without use_cache"
            )
        hidden = kwargs[layer.hidden_kwarg] if layer.hidden_kwarg in kwargs else args[0]
        mask = kwargs.get(layer.mask_kwarg)
        if mask is not None and layer.read_mask is not None:  # the declared format says what a bool means
            mask = layer.read_mask(mask, hidden.dtype)
        query, key, value = self._project(hidden)
        if layer.own_causal_mask:
            mask = _causal(mask, module, query.shape[2], key.shape[2], hidden.dtype, hidden.device)
        if layer.window is not None:  # a window the module applies itself, not in the mask it is handed (GPT-Neo)
            mask = _windowed(mask, module, query.shape[2], key.shape[2], layer.window, hidden.dtype, hidden.device)
        if not layer.norm_after_rotary:
            query, key = self._normed(query, key)
        if layer.position is not None and layer.position.rotate is not None:  # None on NoPE layers too
            cos, sin = kwargs[layer.position_embeddings_kwarg]
            if layer.sin_first:
                cos, sin = sin, cos
            query = layer.position.rotate(query, cos, sin, layer.rotary_dim)
            key = layer.position.rotate(key, cos, sin, layer.rotary_dim)
        if layer.norm_after_rotary:
            query, key = self._normed(query, key)
        query, key = _rotated(self.route, query, key)
        bias = None
        if layer.score_bias is not None:
            q_len, k_len = query.shape[2], key.shape[2]
            bias = layer.score_bias(
                q_len=q_len,
                k_len=k_len,
                offset=k_len - q_len,
                padding_mask=_real_keys(mask),
                dtype=query.dtype,
                device=query.device,
            )
        out, _ = _eager(
            module,
            query,
            key,
            value,
            mask,
            scaling=layer.scaling,
            softcap=layer.softcap,
            position_bias=bias,
            route=self.route,
            s_aux=layer.sinks,
        )
        flat = out.reshape(*out.shape[:2], -1)
        if layer.out_gate is not None:
            flat = layer.out_gate.apply(flat, layer.out_gate.module(hidden))
        new = layer.o(flat if layer.o_norm is None else layer.o_norm(flat))
        if layer.residual_kwarg is not None:  # the module adds the residual itself (BLOOM)
            in_kwargs = layer.residual_kwarg in kwargs
            new = new + (kwargs[layer.residual_kwarg] if in_kwargs else args[layer.residual_position])
        if isinstance(output, torch.Tensor):
            return new
        items = list(output)
        items[0 if layer.output_index is None else layer.output_index] = new
        return items if isinstance(output, list) else tuple(items)  # a list stays a list (OpenAI GPT)

    def _project(self, hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """q, k, v as `[b, heads, s, d]` from the module's own projections (their hooks fire here)."""
        layer = self.layer
        if "qkv" in layer.projections:
            fused = layer.projections["qkv"](hidden)
            parts = {n: layer.views[n](fused) for n in "qkv"}
        else:
            parts = {n: layer.views[n](layer.projections[n](hidden)) for n in "qkv"}
        q, k, v = (parts[n].transpose(1, 2) for n in "qkv")  # [b, s, h, d] -> [b, h, s, d]
        return q, k, v

    def _normed(self, q: torch.Tensor, k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """q and k ([b, h, s, d]) through the module's own q/k norms, where it has them."""
        layer = self.layer
        if layer.q_norm is not None:
            q = _normed(layer.q_norm, q, layer.norm_layout)
        if layer.k_norm is not None:
            k = _normed(layer.k_norm, k, layer.norm_layout)
        return q, k


def _normed(norm: nn.Module, x: torch.Tensor, layout: str) -> torch.Tensor:
    """`norm` applied to `x` ([b, h, s, d]) in the layout HF hands it, returned as [b, h, s, d]."""
    if layout == "bhsd":
        return norm(x)
    heads_last = x.transpose(1, 2)  # [b, s, h, d]
    if layout == "flat":  # one norm over the whole projection (OLMo 2)
        return norm(heads_last.flatten(-2)).unflatten(-1, heads_last.shape[-2:]).transpose(1, 2)
    return norm(heads_last).transpose(1, 2)


def _position_of(module: nn.Module, name: str | None) -> int | None:
    """The positional index of `forward`'s parameter `name` (read once, at bind time)."""
    if name is None:
        return None
    names = [p.name for p in forward_parameters(module)]
    return names.index(name) if name in names else None


def _windowed(
    mask: torch.Tensor | None, module: nn.Module, q_len: int, k_len: int, window: int, dtype: torch.dtype, device
) -> torch.Tensor:
    """`mask` (additive, or None for causal) with every key `window` or more positions before its query masked
    too (query `i` is key position `k_len - q_len + i`): HF's sliding-window rule, `q - k < window`."""
    additive = as_additive_mask(mask, module, q_len, k_len, dtype, device)
    q_pos = torch.arange(k_len - q_len, k_len, device=device)[:, None]
    inside = (q_pos - torch.arange(k_len, device=device)[None, :]) < window
    if additive is None:
        return torch.where(inside, 0.0, torch.finfo(dtype).min).to(dtype)[None, None]
    return torch.where(inside, additive[..., :k_len], torch.finfo(additive.dtype).min)


def _causal(mask: torch.Tensor | None, module: nn.Module, q_len: int, k_len: int, dtype: torch.dtype, device):
    """`mask` (additive, or None) with every key after its query masked too (query `i` is key position
    `k_len - q_len + i`)."""
    additive = as_additive_mask(mask, module, q_len, k_len, dtype, device)
    allowed = torch.ones(q_len, k_len, dtype=torch.bool, device=device).tril(k_len - q_len)
    if additive is None:
        return torch.where(allowed, 0.0, torch.finfo(dtype).min).to(dtype)[None, None]
    return torch.where(allowed, additive[..., :k_len], torch.finfo(additive.dtype).min)


def _real_keys(mask: torch.Tensor | None) -> torch.Tensor | None:
    """`[b, k]` True at keys some query may attend, from the model's 4D mask (None: no padding)."""
    if mask is None:
        return None
    allowed = mask if mask.dtype == torch.bool else mask > torch.finfo(mask.dtype).min / 2
    return allowed.any(dim=-2)[:, 0]


def reimplemented_layers(bound: BoundModel, cfg: Any) -> dict[int, ReimplementedLayer]:
    """The reimplement-path description of every attention module that takes that path, by module id."""
    chosen = [block for block in bound.all_blocks() if block.attn.implementation == "reimplement"]
    if not chosen:
        return {}
    if bound.encoder is not None:
        raise NotImplementedError("the reimplement attention path does not support cross attention yet")

    def bias_of(block) -> Callable[..., torch.Tensor] | None:  # the layer's own (score_bias.per_layer), or the stack's
        bias = block.attn.score_bias or bound.score_bias
        if bias is None:
            return None
        return functools.partial(bias.kind.compute, table=bias.module, n_heads=cfg.n_heads, params=bias.params)

    rotary_dim = int(cfg.extra.get("rotary_dim") or cfg.d_head)
    position = bound.position_kind if bound.position_kind.rotates_qk else None
    out: dict[int, ReimplementedLayer] = {}
    for block in chosen:
        attn = block.attn
        if attn.latent is not None:
            raise NotImplementedError(
                "latent attention (qkv kind: latent) is not on the reimplement path: its keys are built from a "
                "shared rotary part and a per-head latent expansion; DeepSeek and MiniCPM3 call AttentionInterface"
            )
        out[id(attn.module)] = ReimplementedLayer(
            module=attn.module,
            projections=dict(attn.qkv),
            views=attn.views,
            o=attn.o,
            o_norm=attn.o_norm.module if attn.o_norm else None,
            out_gate=attn.out_gate,
            q_norm=attn.q_norm.module if attn.q_norm else None,
            k_norm=attn.k_norm.module if attn.k_norm else None,
            norm_heads_first=attn.qk_norm_heads_first,
            norm_layout=attn.qk_norm_layout,
            norm_after_rotary=attn.qk_norm_after_rotary,
            position=position if attn.rotary else None,
            rotary_dim=rotary_dim,
            scaling=1.0 / cfg.attn_scale,
            softcap=attn.softcap,
            softmax_float32=attn.softmax_float32,
            output_index=attn.output_index,
            hidden_kwarg=attn.hidden_kwarg,
            mask_kwarg=bound.call.mask_kwarg,
            position_embeddings_kwarg=bound.call.position_embeddings_kwarg,
            sin_first=bound.rotary_sin_first,
            residual_kwarg=attn.residual_kwarg,
            residual_position=_position_of(attn.module, attn.residual_kwarg),
            score_bias=bias_of(block),
            read_mask=bound.call.mask_format.to_additive,
            own_causal_mask=attn.own_causal_mask,
            window=bound.call.windows[block.index] if block.stack == "decoder" else None,
            submodules={id(m) for m in attn.module.modules() if m is not attn.module},
            sinks=attn.sinks,
        )
    return out


def with_attention_implementation(spec: Spec, implementation: str) -> Spec:
    """A copy of `spec` whose attention takes the `interface` or `reimplement` path."""
    attn = spec.block.attn.model_copy(update={"implementation": implementation})
    return spec.model_copy(update={"block": spec.block.model_copy(update={"attn": attn})})
