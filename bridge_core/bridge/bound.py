"""The model's modules as a spec names them, resolved once by `bind` (binding.py).

Plain records: the hook layout, the weight views, the component caller and the conformance suite
read them; nothing here looks anything up.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import nn

from ..kinds import NormKind
from .hook_points import HookPoint


@dataclass
class BoundNorm:
    module: nn.Module
    path: str
    kind: NormKind


@dataclass
class BoundAttention:
    module: nn.Module
    path: str
    qkv: dict[str, nn.Module]  # "qkv" (fused) or "q", "k", "v"
    o: nn.Module
    layout: str
    order: str
    q_norm: BoundNorm | None = None
    k_norm: BoundNorm | None = None


@dataclass
class BoundMLP:
    module: nn.Module
    path: str
    w_in: nn.Module
    w_gate: nn.Module | None
    w_out: nn.Module
    layout: str


@dataclass
class BoundCrossAttention:
    attn: BoundAttention
    ln: BoundNorm | None
    residual_at: nn.Module | None


@dataclass
class BoundBlock:
    index: int
    module: nn.Module
    path: str
    kind: str  # sequential | parallel | post_norm, evaluated for this model
    ln1: BoundNorm | None
    attn: BoundAttention
    ln2: BoundNorm | None
    mlp: BoundMLP
    ln1_post: BoundNorm | None = None
    ln2_post: BoundNorm | None = None
    cross: BoundCrossAttention | None = None
    resid_mid_at: nn.Module | None = None
    attn_out_at: nn.Module | None = None
    mlp_out_at: nn.Module | None = None


@dataclass
class BoundStack:
    """The encoder of an encoder-decoder model (the decoder is the BoundModel itself)."""

    embed: nn.Module
    blocks: list[BoundBlock]
    ln_final: BoundNorm | None
    score_bias: nn.Module | None


@dataclass
class BoundModel:
    """The model's modules as the spec names them, and the hook points laid over them."""

    embed: nn.Module
    pos_embed: nn.Module | None
    blocks: list[BoundBlock]
    ln_final: BoundNorm | None
    unembed: nn.Module
    unembed_path: str
    embed_project: nn.Module | None = None
    unembed_project: nn.Module | None = None
    score_bias: nn.Module | None = None
    encoder: BoundStack | None = None
    embed_norm: BoundNorm | None = None
    points: dict[str, HookPoint] = field(default_factory=dict)

    def all_blocks(self) -> list[BoundBlock]:
        return [*(self.encoder.blocks if self.encoder else []), *self.blocks]
