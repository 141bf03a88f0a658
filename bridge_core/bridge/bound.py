"""The bound model: one description of which module plays which role, built once from the spec.

`binding.bind` walks the spec once and produces these read-only records; everything else (the hook
layout, weight views, the component caller, the reimplement path, processing, inspect and every
conformance check) reads roles and settings from here and never interprets a spec field itself.
Public as `bridge.bound`; see docs/architecture.md.

Each record is built once per role and compares by identity (`eq=False`): nothing compares two
records by value (docs/decisions/0031). They are `records.record` classes, dataclasses whose methods
are shared rather than compiled per class (docs/decisions/0032).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import field
from typing import Any, Literal

import torch
from torch import nn

from ..errors import InputError
from ..kinds import ActivationFunction, CrossAttentionKind, MaskFormat, NormKind, PositionKind, ScoreBiasKind
from ..records import record
from .hook_points import HookPoint
from .places import View

BlockKind = Literal["sequential", "parallel", "post_norm"]


@record(frozen=True, eq=False, repr=False)
class Spot:
    """A tensor of the forward: `module`'s output (element `index` of a tuple) or its input.

    `side="input"` is the hidden-states input (keyword `kwarg`, else the first positional argument).
    `scale`: the value is that tensor times `scale`, a multiplier HF applies outside any module before the
    value joins the residual (Granite's residual and embedding multipliers); None: the tensor itself.
    """

    module: nn.Module
    path: str
    side: Literal["output", "input"] = "output"
    index: int | None = None
    kwarg: str = "hidden_states"
    in_place: bool = False  # HF holds this tensor twice (ln2's input is also the residual it adds back)
    scale: float | None = None  # the value is the tensor times this (docs/decisions/0013-multipliers.md)
    role: str | None = None  # a module in two roles: "embed" or "final" calls only (places.Phase)

    def __repr__(self) -> str:
        at = f"[{self.index}]" if self.index not in (None, 0) else ""
        times = f" × {self.scale:g}" if self.scale is not None else ""
        return f"Spot({self.side} of {self.path}{at}{times})"


@record(frozen=True, eq=False)
class BoundNorm:
    """A norm, its kind, and the role it plays.

    `name` is its hook prefix inside the block (`ln1`, `ln2`, `ln3` beside cross attention, `ln1_post`,
    `ln2_post`; model-wide `ln_final`, `embed.ln`, ...); `field` the spec field that declared it;
    `feeds` what its output becomes: `attn`, `cross_attn`, `mlp` (pre-norms), `attn+mlp` (one norm
    shared by a parallel block's attention and MLP: GPT-J, Phi), `attn_out`, `mlp_out`
    (post-sublayer norms: their output is the contribution), `resid_mid`, `resid_post` (post-norm
    blocks normalize the residual itself), `embed` (an embedding norm), `unembed` (a final norm).
    """

    module: nn.Module
    path: str
    kind: NormKind
    name: str
    field: str
    feeds: str
    role: str | None = None  # one module as embedding norm and final norm (NanoChat): "embed" or "final"

    def feeds_into(self, role: str) -> bool:
        """Whether this norm's output is the input of `role` (`attn`, `mlp`, ...), alone or shared."""
        return role in self.feeds.split("+")


@record(frozen=True, eq=False)
class BoundLatent:
    """The factored projections of multi-head latent attention (MLA; bridge/latent_attention.py).

    Queries: `q_b(q_a_norm(q_a(x)))`, or the plain `q` when the model has no query latent (`q_a` is
    None). Keys and values: `kv_a(x)` is `[kv latent (kv_rank) | shared rotary key (d_rope)]`; the
    normalized latent goes through `kv_b` to `[k_nope (d_nope) | v (d_head_v)]` per head; a head's key
    is `[k_nope | rotary key]`, the rotary part shared by every head.
    """

    q: nn.Module | None
    q_a: nn.Module | None
    q_a_norm: BoundNorm | None
    q_b: nn.Module | None
    kv_a: nn.Module
    kv_a_norm: BoundNorm
    kv_b: nn.Module
    q_rank: int | None  # None: no query latent
    kv_rank: int
    d_nope: int  # per-head key/query width without rotary
    d_rope: int  # the rotary width, shared by every head's key
    d_head_v: int
    rope_deinterleave: bool = False  # HF hands attention each rope part as [even dims | odd dims] (DeepSeek-V3)

    @property
    def query(self) -> nn.Module:
        """The module whose output is the queries, all heads: q_b, or the plain q."""
        return self.q_b if self.q_b is not None else self.q


@record(frozen=True, eq=False)
class BoundOutGate:
    """`z * act(module(x))` before the output projection, `x` the attention module's hidden input (AFMoE)."""

    module: nn.Module
    path: str
    act: ActivationFunction
    per_head: bool  # the gate is [.., n_heads]: one value per head, else one per element of z

    def apply(self, z: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
        """The gated attention output `[b, s, h * d]` from `z` `[b, s, h * d]` and the gate module's output."""
        scale = self.act(gate).to(z.dtype)
        if self.per_head:
            return (z.unflatten(-1, (gate.shape[-1], -1)) * scale.unsqueeze(-1)).flatten(-2)
        return z * scale


@record(frozen=True, eq=False)
class BoundAttention:
    """An attention module: projections, their per-head views, and the settings its spec evaluated to."""

    module: nn.Module
    path: str
    field: str  # `block.attn`, `encoder.block.attn`, `block.cross_attn.attn`
    qkv: Mapping[str, nn.Module]  # "qkv" (fused) or "q", "k", "v"
    views: Mapping[str, View]  # q/k/v `[b, s, h, d]` views over the projection outputs
    o: nn.Module
    layout: str  # conv1d | linear
    order: str  # qkv | per_head_interleaved | grouped_<parts> (views then GroupedHeads, by qkv.groups)
    implementation: str  # interface | reimplement
    softmax_float32: bool
    output_index: int | None
    hidden_kwarg: str = "hidden_states"
    residual_kwarg: str | None = None  # the module adds this residual itself (BLOOM)
    own_causal_mask: bool = False  # the module masks future keys itself (OpenAI GPT); reimplement path only
    q_prescaled: bool = False
    softcap: float | None = None
    sinks: torch.Tensor | None = None  # per-head attention-sink logits [n_heads] (the module's own parameter)
    q_norm: BoundNorm | None = None
    k_norm: BoundNorm | None = None
    qk_norm_heads_first: bool = True  # q/k norms receive [b, h, s, d]
    qk_norm_layout: str = "bhsd"  # bhsd | bshd | flat ([b, s, h * d]: one norm over the whole projection)
    qk_norm_after_rotary: bool = False  # the q/k norms take the rotated q/k (HunYuan), not the projections
    rotary: bool = True  # this layer rotates q/k when the position kind does (False: a NoPE layer)
    latent: BoundLatent | None = None  # multi-head latent attention (qkv kind latent)
    score_bias: BoundScoreBias | None = None  # this layer's own score bias (score_bias.per_layer: UMT5)
    out_gate: BoundOutGate | None = None  # gates z before `o` (AFMoE): hook_z is the gated output
    o_norm: BoundNorm | None = None  # normalizes the whole attention output before `o` (BitNet): hook_z is its input

    @property
    def d_head_v(self) -> int | None:
        """Per-head width of values and z when it differs from d_head (latent attention), else None."""
        return self.latent.d_head_v if self.latent is not None else None

    @property
    def fused(self) -> bool:
        return "qkv" in self.qkv

    def projection(self, name: str) -> nn.Module:
        """The module whose output holds `name` (q, k or v): the fused projection or its own."""
        if self.latent is not None:  # the modules reading the attention's input: q_a (or q), kv_a
            return self.qkv["q" if name == "q" else "kv"]
        return self.qkv["qkv"] if self.fused else self.qkv[name]


@record(frozen=True, eq=False)
class BoundSharedExpert:
    """A MoE layer's shared expert: a gated MLP run on every token, optionally scaled by sigmoid(gate(x))."""

    module: nn.Module
    path: str
    w_in: nn.Module
    w_gate: nn.Module | None
    w_out: nn.Module
    gate: nn.Module | None  # Linear d -> 1 (Qwen2-MoE shared_expert_gate)
    gate_path: str | None


@record(frozen=True, eq=False)
class BoundMoE:
    """A sparse mixture of experts: router, experts (fused 3-D parameters or modules) and routing settings."""

    router: nn.Module
    router_path: str
    router_output: tuple[str, ...]  # what each element of the router's output is: logits, weights, indices
    experts: nn.Module
    experts_path: str
    storage: str  # fused | modules
    gate_up: str  # fused parameter names
    down: str
    gate_first: bool
    expert_modules: tuple[tuple[nn.Module, nn.Module, nn.Module], ...]  # modules storage: (in, gate, out) each
    n_experts: int
    top_k: int
    softmax_first: bool  # softmax over all experts, then top-k (else top-k logits, then softmax)
    norm_topk_prob: bool
    shared: BoundSharedExpert | None = None
    group_limited: bool = False  # top-k within the `topk_group` best of `n_group` expert groups (DeepSeek-V2)
    n_group: int = 1
    topk_group: int = 1
    d_mlp: int | None = None  # the experts' width, where it differs from cfg.d_mlp (the dense layers')
    routed_scaling: float = 1.0  # multiplies the routed weights (DeepSeek routed_scaling_factor)
    sigmoid: bool = False  # scores are sigmoid(logits), the weights the chosen scores (DeepSeek-V3)
    sparsemixer_eps: float | None = None  # scoring sparsemixer (PhiMoE): its masks' ε (else None)
    group_score: str = "max"  # a group's rank: its best score (group_limited_greedy) or best two summed (noaux_tc)
    bias_owner: nn.Module | None = None  # the module holding the selection-only correction bias buffer
    bias_name: str | None = None
    bias_on_logits: bool = False  # the bias is added to the logits (Kolibri), not the scores
    router_linear: nn.Module | None = None  # holds the router weight [n_experts, d]: the router or its linear child
    fused_layout: str = "linear"  # fused storage: linear [E, out, in] (Mixtral) or conv1d [E, in, out] (GPT-OSS, Aria)
    interleaved: bool = False  # gate and up alternate along gate_up's outputs (GPT-OSS), else halves
    gate_up_bias: str | None = None  # fused bias parameter names ([E, 2*d_mlp], [E, d]) on the experts module
    down_bias: str | None = None
    clamp_limit: float | None = None  # clamped GLU (GPT-OSS): gate <= limit, -limit <= up <= limit
    up_offset: float = 0.0  # act(gate) * (up + up_offset)

    def correction_bias(self) -> torch.Tensor | None:
        """The selection-only bias `[n_experts]`, read now (a buffer `.to()` may have replaced)."""
        return None if self.bias_owner is None else getattr(self.bias_owner, str(self.bias_name))


@record(frozen=True, eq=False)
class BoundMLP:
    """An MLP: dense (`w_in`, `w_gate`, `w_out`) or, where `moe` is set, a mixture of experts (no w_*)."""

    module: nn.Module
    path: str
    w_in: nn.Module | None
    w_gate: nn.Module | None
    w_out: nn.Module | None
    layout: str
    act_name: str
    act: ActivationFunction
    act_field: str  # the spec field that chose it: block.mlp.act_fn, or config.act_fn
    flat_tokens: bool = False  # runs on [batch * pos, d] (OPT)
    input: Spot | None = None  # where the MLP's (normalized) input is seen
    moe: BoundMoE | None = None  # a mixture of experts (this layer's MLP kind is `moe`)
    # gate and up fused in one module (Phi-3): w_in and w_gate are that module, and these views take each
    # half out of its output, weight and bias (`gate`, `in`); None for separate projections
    gate_up_views: Mapping[str, View] | None = None
    gate_up_order: str | None = None  # gate_up | up_gate
    out_norm: BoundNorm | None = None  # normalizes the activations before `w_out` (BitNet): hook_post is its input


@record(frozen=True, eq=False)
class BoundCrossAttention:
    attn: BoundAttention
    ln: BoundNorm | None
    kind: CrossAttentionKind
    out: Spot  # the cross-attention contribution to the residual
    residual: Spot | None  # the residual after cross attention (hook_resid_mid_cross)
    states_kwarg: str = "encoder_hidden_states"
    mask_kwarg: str = "encoder_attention_mask"


@record(frozen=True, eq=False)
class BoundBlock:
    """One block: its norms by role, its sublayers, and where each residual-stream value lives."""

    index: int
    module: nn.Module
    path: str
    stack: str  # encoder | decoder (decoder-only models: decoder)
    prefix: str  # hook-name prefix: blocks.3, encoder.0, decoder.1
    field: str  # spec field of the block: block | encoder.block
    kind: BlockKind
    attn: BoundAttention
    mlp: BoundMLP
    resid_pre: Spot
    attn_out: Spot  # the attention's contribution to the residual
    mlp_out: Spot  # the MLP's contribution to the residual
    resid_mid: Spot | None  # None in parallel blocks
    resid_post: Spot
    ln1: BoundNorm | None = None
    ln2: BoundNorm | None = None  # the MLP's norm (named ln3 in hooks beside cross attention)
    ln1_post: BoundNorm | None = None
    ln2_post: BoundNorm | None = None
    cross: BoundCrossAttention | None = None
    hidden_kwarg: str = "hidden_states"
    output_index: int | None = None

    def norms(self) -> list[BoundNorm]:
        """Every norm of the block, in forward order."""
        cross_ln = self.cross.ln if self.cross else None
        found = [self.ln1, self.ln1_post, cross_ln, self.ln2, self.ln2_post]
        return [n for n in found if n is not None]

    @property
    def mlp_norm(self) -> BoundNorm | None:
        """The norm whose output the MLP reads: `ln2`, or `ln1` where one norm feeds both (GPT-J, Phi)."""
        if self.ln2 is not None:
            return self.ln2
        return self.ln1 if self.ln1 is not None and self.ln1.feeds_into("mlp") else None

    def attentions(self) -> list[tuple[str, BoundAttention]]:
        """(hook prefix, attention) of self attention and, in decoder blocks, cross attention."""
        out = [(f"{self.prefix}.attn", self.attn)]
        if self.cross is not None:
            out.append((f"{self.prefix}.cross_attn", self.cross.attn))
        return out


@record(frozen=True, eq=False)
class BoundScoreBias:
    """A stack's additive score bias: its kind, the module holding its table, its evaluated params."""

    kind: ScoreBiasKind
    module: nn.Module | None
    path: str | None
    params: Mapping[str, Any]


@record(frozen=True, eq=False)
class BoundCall:
    """How the core calls one block or attention module alone (component checks, layer ranges)."""

    mask_format: MaskFormat
    mask_kwarg: str | None
    attention_mask_kwarg: str | None
    position_embeddings_kwarg: str | None
    position_ids_kwarg: str | None
    position_bias_kwarg: str | None
    windows: tuple[int | None, ...]  # per decoder layer
    rotary_args: tuple[Mapping[str, Any], ...]  # per decoder layer
    extra_kwargs: tuple[Mapping[str, Any], ...] = ()  # per decoder layer (call.extra_kwargs)


@record(frozen=True, eq=False)
class BoundStack:
    """One stack of blocks with its embedding and final norm (the decoder, or T5's encoder)."""

    name: str  # encoder | decoder
    embed: nn.Module
    embed_path: str
    blocks: list[BoundBlock]
    ln_final: BoundNorm | None
    score_bias: BoundScoreBias | None
    embed_norm: BoundNorm | None = None
    position_kind: PositionKind | None = None
    pos_embed: nn.Module | None = None  # a position table (has_table kinds), hook_pos_embed
    pos_path: str | None = None
    pos_offset: int = 0
    norm_after_pos: bool = False  # the embedding norm takes embeddings + positions (BART)
    embed_scale: float | None = None  # HF multiplies the embedding's output outside the module (embed.scale_at)
    token_scale: float = 1.0  # W_E rows times it are the stack's token embedding (config.embed_scale, embed.scale)

    def output(self) -> Spot:
        """The stack's output: its final norm's, or the last block's (BART has no final norm)."""
        if self.ln_final is not None:
            return Spot(self.ln_final.module, self.ln_final.path, role=self.ln_final.role)
        last = self.blocks[-1]
        return Spot(last.module, last.path, index=last.output_index)

    def embed_spot(self) -> Spot:
        """Where the stack's hook_embed sits: the embedding's output, or its norm's (BLOOM)."""
        if self.embed_norm is not None and not self.norm_after_pos:
            return Spot(self.embed_norm.module, self.embed_norm.path, role=self.embed_norm.role)
        return Spot(self.embed, self.embed_path, scale=self.embed_scale)


@record(eq=False)
class BoundModel:
    """The model's modules by role (decoder-only models: the decoder stack alone), and the hook points.

    `embed` … `ln_final`, `unembed` describe the decoder; `encoder` holds the encoder of an
    encoder-decoder model. Read-only for everyone but `bind`.
    """

    decoder: BoundStack
    embed_norm: BoundNorm | None
    embed_project: nn.Module | None
    embed_spot: Spot  # where hook_embed sits: the embedding's output, or its norm's
    embed_scale: float  # the decoder's token_scale
    position_kind: PositionKind
    pos_embed: nn.Module | None
    pos_offset: int
    unembed: nn.Module
    unembed_path: str
    unembed_project: nn.Module | None
    unembed_pre_scale: float | None
    final_softcap: float | None
    call: BoundCall
    logit_scale: float | None = None  # HF multiplies the unembedding's output by it, before any softcap
    encoder: BoundStack | None = None
    unembed_bias: torch.Tensor | None = None  # added to the logits after the unembedding (BART's final_logits_bias)
    default_prepend_bos: bool | None = None  # None: prepend when the tokenizer has a BOS token
    rotary_sin_first: bool = False  # the rotary module returns (sin, cos) (GPT-J), not (cos, sin)
    points: dict[str, HookPoint] = field(default_factory=dict)

    @property
    def embed(self) -> nn.Module:
        return self.decoder.embed

    @property
    def blocks(self) -> list[BoundBlock]:
        return self.decoder.blocks

    @property
    def ln_final(self) -> BoundNorm | None:
        return self.decoder.ln_final

    @property
    def score_bias(self) -> BoundScoreBias | None:
        return self.decoder.score_bias

    def stacks(self) -> list[BoundStack]:
        return [*([self.encoder] if self.encoder else []), self.decoder]

    def all_blocks(self) -> list[BoundBlock]:
        return [block for stack in self.stacks() for block in stack.blocks]

    def attentions(self) -> Iterator[tuple[str, BoundBlock, BoundAttention]]:
        """(hook prefix, block, attention) of every attention module, in forward order."""
        for block in self.all_blocks():
            for prefix, attn in block.attentions():
                yield prefix, block, attn

    def final_norms(self) -> list[BoundNorm]:
        return [stack.ln_final for stack in self.stacks() if stack.ln_final is not None]

    def stack_of(self, name: str) -> BoundStack:
        if name == "encoder":
            if self.encoder is None:
                raise InputError("this model has no encoder stack")
            return self.encoder
        return self.decoder
