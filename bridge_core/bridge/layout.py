"""Laying out the hook points over a bound model: which name sits at which place.

Called once by `bind`. The names are HookedTransformer's (decoder-only) or HookedEncoderDecoder's
(encoder-decoder); the order is the order the forward reaches them, which is `hook_names()`.
"""

from __future__ import annotations

from torch import nn

from ..plugin_host import Kinds
from ..records import record
from ..spec.config import BridgeConfig
from .bound import BoundAttention, BoundBlock, BoundModel, BoundNorm, BoundScoreBias, BoundStack, Spot
from .hook_points import HookPoint
from .latent_attention import latent_points
from .moe import moe_points
from .places import (
    AttentionValue,
    BatchBroadcast,
    FlatTokens,
    HeadResult,
    HeadsFirst,
    ModuleInput,
    ModuleOutput,
    NormValue,
    Phase,
    Scaled,
    SplitHeads,
    TokenShape,
    View,
)


def lay_out_points(bound: BoundModel, cfg: BridgeConfig, kinds: Kinds) -> dict[str, HookPoint]:
    """Every hook point, in the order the forward reaches them (the order of `hook_names()`).

    Decoder-only models use HookedTransformer's names (`blocks.{i}.…`, `ln_final`); encoder-decoder
    models HookedEncoderDecoder's (`encoder.{i}.…`, `decoder.{i}.…`, `encoder_final_ln`, ...).
    """
    layout = _Layout(cfg)
    # a norm in two roles (NanoChat): each role's places act on its own calls (the phase of the decoder's forward)
    blocks = tuple(b.module for b in bound.blocks)
    layout.phases = {role: Phase(role, bound.decoder.embed, blocks) for role in ("embed", "final")}
    encoder = bound.encoder
    if encoder is not None:
        layout.embedding(encoder, "")
        layout.score_bias("encoder", encoder.score_bias)
        for block in encoder.blocks:
            layout.block(block, rotary=False)
        layout.norm(encoder.ln_final)
    layout.embedding(bound.decoder, "decoder." if encoder is not None else "", bound.embed_project)
    if encoder is not None:
        layout.score_bias("decoder", bound.score_bias)
    for block in bound.blocks:
        layout.block(block, rotary=bound.position_kind.rotates_qk)
    layout.norm(bound.ln_final)
    if bound.unembed_project is not None:
        layout.output("hook_project_out", bound.unembed_project, "unembed.project")
    layout.output("hook_unembed", bound.unembed, bound.unembed_path)
    return layout.points


class _Layout:
    """Collects hook points in forward order."""

    def __init__(self, cfg: BridgeConfig) -> None:
        self.cfg = cfg
        self.points: dict[str, HookPoint] = {}
        self.phases: dict[str, Phase] = {}

    def add(self, name: str, place) -> None:
        self.points[name] = HookPoint(name, place)

    def output(self, name: str, module: nn.Module, path: str, **kwargs) -> None:
        self.add(name, ModuleOutput(module, path, **kwargs))

    def spot(self, name: str, spot: Spot, view=None) -> None:
        """A hook point at a value the bound model located (a module's output or its hidden input)."""
        if spot.scale is not None:  # HF multiplies the tensor outside the module: show the product
            view = Scaled(spot.scale, view)
        if spot.side == "output":
            phase = self.phases.get(spot.role) if spot.role else None
            self.output(name, spot.module, spot.path, index=spot.index, view=view, phase=phase)
        else:
            self.add(
                name, ModuleInput(spot.module, spot.path, arg=0, kwarg=spot.kwarg, in_place=spot.in_place, view=view)
            )

    def norm(self, norm: BoundNorm | None, prefix: str | None = None, view=None) -> None:
        if norm is None:
            return
        prefix = prefix or norm.name
        phase = self.phases.get(norm.role) if norm.role else None
        for which in ("scale", "normalized"):
            self.add(
                f"{prefix}.hook_{which}",
                NormValue(norm.module, norm.path, which=which, kind=norm.kind, view=view, phase=phase),
            )

    def embedding(self, stack: BoundStack, prefix: str, project: nn.Module | None = None) -> None:
        """hook_embed, hook_pos_embed and the embedding norm of one stack, in forward order."""
        after = stack.norm_after_pos
        if not after:
            self.norm(stack.embed_norm)
        self.spot(f"{prefix}hook_embed", stack.embed_spot())
        if project is not None:
            self.output("hook_project_in", project, "embed.project")
        if stack.pos_embed is not None and stack.position_kind is not None and stack.position_kind.has_table:
            # shown [batch, pos, d_model] as in HookedTransformer, even where HF computes it once for the batch
            batch = BatchBroadcast(TokenShape(), stack.embed)
            self.output(f"{prefix}hook_pos_embed", stack.pos_embed, f"{prefix}pos_embed", view=batch)
        if after:
            self.norm(stack.embed_norm)

    def score_bias(self, stack: str, bias: BoundScoreBias | None) -> None:
        if bias is None or bias.module is None or bias.kind.hook_view is None:
            return
        self.output(
            f"{stack}.hook_rel_pos_bias", bias.module, f"{stack}.score_bias", view=_FunctionView(bias.kind.hook_view)
        )

    def attention(self, p: str, attn: BoundAttention, rotary: bool) -> None:
        h, d = self.cfg.n_heads, attn.d_head_v or self.cfg.d_head  # z and result: the value width
        if attn.latent is not None:
            for name, place in latent_points(p, attn):
                self.add(name, place)
        for n in "qkv" if attn.latent is None else "":
            self.output(f"{p}.hook_{n}", attn.projection(n), f"{attn.path}.{n}", view=attn.views[n])
        norm_view = HeadsFirst() if attn.qk_norm_layout == "bhsd" else None  # flat: [b, s, h * d] as HF has it
        self.norm(attn.q_norm, f"{p}.q_norm", norm_view)
        self.norm(attn.k_norm, f"{p}.k_norm", norm_view)
        bias = attn.score_bias  # a layer's own score bias (UMT5), computed after its projections
        if bias is not None and bias.module is not None and bias.kind.hook_view is not None:
            self.output(f"{p}.hook_rel_pos_bias", bias.module, bias.path, view=_FunctionView(bias.kind.hook_view))
        internal = ["rot_q", "rot_k", "scores", "pattern"] if rotary else ["scores", "pattern"]
        for which in internal:
            name = "hook_attn_scores" if which == "scores" else f"hook_{which}"
            self.add(f"{p}.{name}", AttentionValue(attn.module, attn.path, which=which))
        if attn.o_norm is not None:  # BitNet: z is what the sub-norm before the output projection receives
            z = ModuleInput(attn.o_norm.module, attn.o_norm.path, view=SplitHeads(h, d))
        else:
            z = ModuleInput(attn.o, f"{attn.path}.o", view=SplitHeads(h, d), kwarg="input")
        self.add(f"{p}.hook_z", z)
        self.add(f"{p}.hook_result", HeadResult(attn.o, f"{attn.path}.o", n_heads=h, d_head=d, layout=attn.layout))

    def block(self, block: BoundBlock, rotary: bool) -> None:
        p = block.prefix
        flat = FlatTokens(TokenShape(), block.module) if block.mlp.flat_tokens else None
        post_norm = block.kind == "post_norm"
        self.spot(f"{p}.hook_resid_pre", block.resid_pre)
        if not post_norm:
            self.norm(block.ln1, f"{p}.ln1")
        self.attention(f"{p}.attn", block.attn, rotary)
        self.norm(block.ln1_post, f"{p}.{block.ln1_post.name}" if block.ln1_post else None)
        self.spot(f"{p}.hook_attn_out", block.attn_out)
        if block.resid_mid is not None:
            self.spot(f"{p}.hook_resid_mid", block.resid_mid, view=flat if block.resid_mid.in_place else None)
        if post_norm:
            self.norm(block.ln1, f"{p}.ln1")
        if block.cross is not None:
            cross = block.cross
            if not post_norm:
                self.norm(cross.ln, f"{p}.{cross.ln.name}" if cross.ln else None)
            self.attention(f"{p}.cross_attn", cross.attn, rotary=False)
            self.spot(f"{p}.hook_cross_attn_out", cross.out)
            if cross.residual is not None:
                self.spot(f"{p}.hook_resid_mid_cross", cross.residual)
            if post_norm:  # BART: the norm after the cross-attention add
                self.norm(cross.ln, f"{p}.{cross.ln.name}" if cross.ln else None)
        if not post_norm and block.ln2 is not None:
            self.norm(block.ln2, f"{p}.{block.ln2.name}", flat)
        mlp = block.mlp
        if mlp.moe is not None:  # a mixture of experts (bridge/moe.py): router, experts, shared expert
            for name, place in moe_points(p, mlp, FlatTokens(TokenShape(), mlp.module)):
                self.add(name, place)
        elif mlp.w_gate is not None:
            # a fused gate/up module (Phi-3): each hook is a half of its output (the schema refuses flat_tokens there)
            halves = mlp.gate_up_views or {}
            self.output(f"{p}.mlp.hook_pre", mlp.w_gate, f"{mlp.path}.gate", view=halves.get("gate", flat))
            self.output(f"{p}.mlp.hook_pre_linear", mlp.w_in, f"{mlp.path}.in", view=halves.get("in", flat))
        else:
            self.output(f"{p}.mlp.hook_pre", mlp.w_in, f"{mlp.path}.in", view=flat)
        if mlp.out_norm is not None:  # BitNet: the activations are what the sub-norm before w_out receives
            self.add(f"{p}.mlp.hook_post", ModuleInput(mlp.out_norm.module, mlp.out_norm.path, view=flat))
        elif mlp.moe is None:
            self.add(f"{p}.mlp.hook_post", ModuleInput(mlp.w_out, f"{mlp.path}.out", kwarg="input", view=flat))
        self.norm(block.ln2_post, f"{p}.{block.ln2_post.name}" if block.ln2_post else None)
        self.spot(f"{p}.hook_mlp_out", block.mlp_out, view=flat if block.ln2_post is None else None)
        self.spot(f"{p}.hook_resid_post", block.resid_post)
        if post_norm:
            self.norm(block.ln2, f"{p}.{block.ln2.name}")
            self.output(f"{p}.hook_normalized_resid_post", block.module, block.path, index=block.output_index)


@record(frozen=True, eq=False)
class _FunctionView(View):
    """A view given by a kind's function (e.g. a score-bias table shown as `[1, h, q, k]`)."""

    function: object

    def __call__(self, base):
        return self.function(base)
