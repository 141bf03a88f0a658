"""Laying out the hook points over a bound model: which name sits at which place.

Called once by `bind`. The names are HookedTransformer's (decoder-only) or HookedEncoderDecoder's
(encoder-decoder); the order is the order the forward reaches them, which is `hook_names()`.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from ..kinds import PositionKind
from ..plugin_host import Kinds
from ..spec.config import BridgeConfig
from ..spec.schema import Spec
from .bound import BoundAttention, BoundBlock, BoundModel, BoundNorm
from .hook_points import HookPoint
from .places import (
    AttentionValue,
    BatchBroadcast,
    FlatTokens,
    HeadResult,
    HeadsFirst,
    ModuleInput,
    ModuleOutput,
    NormValue,
    SplitHeads,
    TokenShape,
    View,
    qkv_views,
)


def lay_out_points(
    bound: BoundModel, spec: Spec, cfg: BridgeConfig, position_kind: PositionKind, kinds: Kinds
) -> dict[str, HookPoint]:
    """Every hook point, in the order the forward reaches them (the order of `hook_names()`).

    Decoder-only models use HookedTransformer's names (`blocks.{i}.…`, `ln_final`); encoder-decoder
    models HookedEncoderDecoder's (`encoder.{i}.…`, `decoder.{i}.…`, `encoder_final_ln`, ...).
    """
    layout = _Layout(cfg, kinds)
    if bound.encoder is not None:
        enc = spec.encoder
        layout.output("hook_embed", bound.encoder.embed, "encoder.embed")
        layout.score_bias("encoder", bound.encoder.score_bias, enc.score_bias)
        for block in bound.encoder.blocks:
            layout.block(f"encoder.{block.index}", block, enc.block, rotary=False)
        layout.norm("encoder_final_ln", bound.encoder.ln_final)
        prefix, embed_name, final_name = "decoder.", "decoder.hook_embed", "decoder_final_ln"
    else:
        prefix, embed_name, final_name = "blocks.", "hook_embed", "ln_final"
    layout.output(embed_name, bound.embed, "embed")
    layout.norm("ln_embed", bound.embed_norm)
    if bound.embed_project is not None:
        layout.output("hook_project_in", bound.embed_project, "embed.project")
    if bound.pos_embed is not None and position_kind.has_table:
        # shown [batch, pos, d_model] as in HookedTransformer, even where HF computes it once for the batch
        batch = BatchBroadcast(TokenShape(), bound.embed)
        layout.output("hook_pos_embed", bound.pos_embed, "pos_embed", view=batch)
    if bound.encoder is not None:
        layout.score_bias("decoder", bound.score_bias, spec.score_bias)
    for block in bound.blocks:
        layout.block(f"{prefix}{block.index}", block, spec.block, rotary=position_kind.rotates_qk)
    layout.norm(final_name, bound.ln_final)
    if bound.unembed_project is not None:
        layout.output("hook_project_out", bound.unembed_project, "unembed.project")
    layout.output("hook_unembed", bound.unembed, bound.unembed_path)
    return layout.points


class _Layout:
    """Collects hook points in forward order."""

    def __init__(self, cfg: BridgeConfig, kinds: Kinds) -> None:
        self.cfg = cfg
        self.kinds = kinds
        self.points: dict[str, HookPoint] = {}

    def add(self, name: str, place) -> None:
        self.points[name] = HookPoint(name, place)

    def output(self, name: str, module: nn.Module, path: str, **kwargs) -> None:
        self.add(name, ModuleOutput(module, path, **kwargs))

    def norm(self, prefix: str, norm: BoundNorm | None, view=None) -> None:
        if norm is None:
            return
        for which in ("scale", "normalized"):
            self.add(
                f"{prefix}.hook_{which}", NormValue(norm.module, norm.path, which=which, kind=norm.kind, view=view)
            )

    def score_bias(self, stack: str, module: nn.Module | None, bias_spec) -> None:
        if module is None or bias_spec is None:
            return
        kind = self.kinds.score_biases[bias_spec.kind]
        if kind.hook_view is not None:
            self.output(f"{stack}.hook_rel_pos_bias", module, f"{stack}.score_bias", view=_FunctionView(kind.hook_view))

    def attention(self, p: str, attn: BoundAttention, spec_attn, rotary: bool) -> None:
        cfg = self.cfg
        h, d = cfg.n_heads, cfg.d_head
        views = qkv_views(h, cfg.n_kv_heads, d, "qkv" in attn.qkv, attn.order)
        modules = dict.fromkeys("qkv", attn.qkv["qkv"]) if "qkv" in attn.qkv else attn.qkv
        for n in "qkv":
            self.output(f"{p}.hook_{n}", modules[n], f"{attn.path}.{n}", view=views[n])
        norm_view = HeadsFirst() if spec_attn.qk_norm_layout == "bhsd" else None
        self.norm(f"{p}.q_norm", attn.q_norm, norm_view)
        self.norm(f"{p}.k_norm", attn.k_norm, norm_view)
        internal = ["rot_q", "rot_k", "scores", "pattern"] if rotary else ["scores", "pattern"]
        for which in internal:
            name = "hook_attn_scores" if which == "scores" else f"hook_{which}"
            self.add(f"{p}.{name}", AttentionValue(attn.module, attn.path, which=which))
        self.add(f"{p}.hook_z", ModuleInput(attn.o, f"{attn.path}.o", view=SplitHeads(h, d), kwarg="input"))
        self.add(f"{p}.hook_result", HeadResult(attn.o, f"{attn.path}.o", n_heads=h, d_head=d, layout=attn.layout))

    def block(self, p: str, block: BoundBlock, b, rotary: bool) -> None:
        flat = FlatTokens(TokenShape(), block.module) if b.mlp.flat_tokens else None
        self.add(f"{p}.hook_resid_pre", ModuleInput(block.module, block.path, arg=0, kwarg=b.hidden_states_kwarg))
        if block.kind != "post_norm":
            self.norm(f"{p}.ln1", block.ln1)
        self.attention(f"{p}.attn", block.attn, b.attn, rotary)
        if block.ln1_post is not None:
            self.norm(f"{p}.ln1_post", block.ln1_post)
            self.output(f"{p}.hook_attn_out", block.ln1_post.module, block.ln1_post.path)
        elif block.attn_out_at is not None:
            self.output(f"{p}.hook_attn_out", block.attn_out_at, block.path)
        else:
            self.output(f"{p}.hook_attn_out", block.attn.module, block.attn.path, index=b.attn.output_index)
        mlp_norm = f"{p}.ln3" if block.cross is not None else f"{p}.ln2"
        if block.resid_mid_at is not None:
            self.output(f"{p}.hook_resid_mid", block.resid_mid_at, block.path, index=0)
        elif block.kind == "sequential" and block.ln2 is not None:
            # HF adds the attention output to the residual and hands that one tensor both to ln2 and,
            # as `residual`, to the add after the MLP: an edit must be made in place to reach both.
            self.add(f"{p}.hook_resid_mid", ModuleInput(block.ln2.module, block.ln2.path, in_place=True, view=flat))
        elif block.kind == "post_norm":  # ln1 normalizes the mid residual, ln2 the block output
            self.add(f"{p}.hook_resid_mid", ModuleInput(block.ln1.module, block.ln1.path))
            self.norm(f"{p}.ln1", block.ln1)
        if block.cross is not None:
            cross = block.cross
            self.norm(f"{p}.ln2", cross.ln)
            self.attention(f"{p}.cross_attn", cross.attn, b.cross_attn.attn, rotary=False)
            index = b.cross_attn.attn.output_index
            self.output(f"{p}.hook_cross_attn_out", cross.attn.module, cross.attn.path, index=index)
            if cross.residual_at is not None:
                self.output(f"{p}.hook_resid_mid_cross", cross.residual_at, block.path, index=0)
        if block.kind != "post_norm":
            self.norm(mlp_norm, block.ln2, flat)
        mlp = block.mlp
        if mlp.w_gate is not None:
            self.output(f"{p}.mlp.hook_pre", mlp.w_gate, f"{mlp.path}.gate", view=flat)
            self.output(f"{p}.mlp.hook_pre_linear", mlp.w_in, f"{mlp.path}.in", view=flat)
        else:
            self.output(f"{p}.mlp.hook_pre", mlp.w_in, f"{mlp.path}.in", view=flat)
        self.add(f"{p}.mlp.hook_post", ModuleInput(mlp.w_out, f"{mlp.path}.out", kwarg="input", view=flat))
        if block.ln2_post is not None:
            self.norm(f"{p}.ln2_post", block.ln2_post)
            self.output(f"{p}.hook_mlp_out", block.ln2_post.module, block.ln2_post.path)
        elif block.mlp_out_at is not None:
            self.output(f"{p}.hook_mlp_out", block.mlp_out_at, block.path, view=flat)
        elif mlp.module is block.module:  # no MLP module of its own (OPT): its output projection's output
            self.output(f"{p}.hook_mlp_out", mlp.w_out, f"{mlp.path}.out", view=flat)
        else:
            self.output(f"{p}.hook_mlp_out", mlp.module, mlp.path, view=flat)
        if block.kind == "post_norm":
            self.add(f"{p}.hook_resid_post", ModuleInput(block.ln2.module, block.ln2.path))
            self.norm(f"{p}.ln2", block.ln2)
            self.output(f"{p}.hook_normalized_resid_post", block.module, block.path, index=b.output_index)
        else:
            self.output(f"{p}.hook_resid_post", block.module, block.path, index=b.output_index)


@dataclass(frozen=True, eq=False)
class _FunctionView(View):
    """A view given by a kind's function (e.g. a score-bias table shown as `[1, h, q, k]`)."""

    function: object

    def __call__(self, base):
        return self.function(base)
