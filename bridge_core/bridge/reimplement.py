"""The `reimplement` attention path (DESIGN §3.3): attention recomputed around the module.

For models whose attention does not go through transformers' AttentionInterface, or any spec
forced onto this path. When a layer has an internal hook (`hook_rot_q/k`, `hook_attn_scores`,
`hook_pattern`), a forward hook on its attention module recomputes attention from the module's
captured inputs: the module's own projections (and q/k norms, and output projection) are called
again, rotary is applied by the position kind, scores and softmax by the bridge's eager function,
and the module's output is replaced. The bridge's hooks on those submodules are held back during
the module's original forward, so each hook point still fires exactly once.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..kinds import PositionKind
from ..spec.config import evaluate_field
from ..spec.schema import Spec
from .attention import AttentionRoute, _eager, _rotated
from .places import qkv_views


@dataclass
class ReimplementedLayer:
    """What the bridge knows about one attention module on the reimplement path."""

    module: nn.Module
    projections: dict[str, nn.Module]  # "qkv" or "q", "k", "v"
    views: dict[str, Any]  # q/k/v views over the projection outputs
    o: nn.Module
    q_norm: nn.Module | None
    k_norm: nn.Module | None
    norm_heads_first: bool
    position: PositionKind | None
    rotary_dim: int
    scaling: float
    softcap: float | None
    softmax_float32: bool
    output_index: int | None
    hidden_kwarg: str = "hidden_states"
    mask_kwarg: str = "attention_mask"
    position_embeddings_kwarg: str | None = None
    submodules: set[int] = field(default_factory=set)


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
        query, key, value = self._project(hidden)
        if layer.position is not None and layer.position.rotate is not None:
            cos, sin = kwargs[layer.position_embeddings_kwarg]
            query = layer.position.rotate(query, cos, sin, layer.rotary_dim)
            key = layer.position.rotate(key, cos, sin, layer.rotary_dim)
        query, key = _rotated(self.route, query, key)
        out, _ = _eager(
            module,
            query,
            key,
            value,
            mask,
            scaling=layer.scaling,
            softcap=layer.softcap,
            route=self.route,
        )
        new = layer.o(out.reshape(*out.shape[:2], -1))
        if isinstance(output, torch.Tensor):
            return new
        items = list(output)
        items[0 if layer.output_index is None else layer.output_index] = new
        return tuple(items)

    def _project(self, hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """q, k, v as `[b, heads, s, d]` from the module's own projections (their hooks fire here)."""
        layer = self.layer
        if "qkv" in layer.projections:
            fused = layer.projections["qkv"](hidden)
            parts = {n: layer.views[n](fused) for n in "qkv"}
        else:
            parts = {n: layer.views[n](layer.projections[n](hidden)) for n in "qkv"}
        q, k, v = (parts[n].transpose(1, 2) for n in "qkv")  # [b, s, h, d] -> [b, h, s, d]
        if layer.q_norm is not None:
            q = layer.q_norm(q) if layer.norm_heads_first else layer.q_norm(q.transpose(1, 2)).transpose(1, 2)
        if layer.k_norm is not None:
            k = layer.k_norm(k) if layer.norm_heads_first else layer.k_norm(k.transpose(1, 2)).transpose(1, 2)
        return q, k, v


def reimplemented_layers(bridge: Any) -> dict[int, ReimplementedLayer]:
    """The reimplement-path description of every attention module, by module id."""
    spec, cfg, hf_config = bridge.spec, bridge.cfg, bridge.model.config
    if spec.encoder is not None or spec.score_bias is not None:
        raise NotImplementedError(
            f"{spec.name}: the reimplement attention path does not support score biases or cross attention yet"
        )
    attn_spec = spec.block.attn
    softcap = evaluate_field(bridge.spec_file, "block.attn.softcap", attn_spec.softcap, hf_config, spec)
    rotary_dim = int(cfg.extra.get("rotary_dim") or cfg.d_head)
    position = bridge.position_kind if bridge.position_kind.rotates_qk else None
    out: dict[int, ReimplementedLayer] = {}
    for block in bridge._bound.blocks:
        attn = block.attn
        layer = ReimplementedLayer(
            module=attn.module,
            projections=attn.qkv,
            views=qkv_views(cfg.n_heads, cfg.n_kv_heads, cfg.d_head, "qkv" in attn.qkv, attn.order),
            o=attn.o,
            q_norm=attn.q_norm.module if attn.q_norm else None,
            k_norm=attn.k_norm.module if attn.k_norm else None,
            norm_heads_first=attn_spec.qk_norm_layout == "bhsd",
            position=position,
            rotary_dim=rotary_dim,
            scaling=1.0 / cfg.attn_scale,
            softcap=softcap,
            softmax_float32=attn_spec.softmax_dtype == "float32",
            output_index=attn_spec.output_index,
            hidden_kwarg="hidden_states",
            mask_kwarg=spec.call.mask_kwarg,
            position_embeddings_kwarg=spec.call.position_embeddings_kwarg,
            submodules={id(m) for m in attn.module.modules() if m is not attn.module},
        )
        out[id(attn.module)] = layer
    return out


def with_attention_implementation(spec: Spec, implementation: str) -> Spec:
    """A copy of `spec` whose attention takes the `interface` or `reimplement` path."""
    attn = spec.block.attn.model_copy(update={"implementation": implementation})
    return spec.model_copy(update={"block": spec.block.model_copy(update={"attn": attn})})
