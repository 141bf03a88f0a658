"""Binding: the one walk of a spec over a model, producing the bound model (bound.py).

Every spec field that names a module, a kind or a setting is read here and nowhere else. `bind`
fails fast on the first problem (building a bridge); `collect_problems` walks the same way but
records every problem and carries on (`bridge-core validate`). The hook layout is laid over the
result at the end (layout.py).
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import TYPE_CHECKING

import torch
from torch import nn

from ..errors import BindError, BridgeCoreError, SpecError
from ..kinds import Position
from ..plugin_host import Kinds
from ..spec.choices import BLOCK_KINDS, QKV_ORDERS
from ..spec.config import BridgeConfig, spec_error
from .bound import (
    BoundAttention,
    BoundBlock,
    BoundCall,
    BoundCrossAttention,
    BoundMLP,
    BoundModel,
    BoundNorm,
    BoundOutGate,
    BoundScoreBias,
    BoundStack,
    Spot,
)
from .call_fields import call_conflicts
from .latent_attention import latent_views
from .latent_binding import bind_latent
from .layout import lay_out_points
from .moe_binding import bind_moe
from .places import gate_up_views, qkv_views
from .spec_walker import Missing, SpecWalker, forward_parameters, resolve_path
from .tensor_parallel import shard_points

if TYPE_CHECKING:
    from ..spec.schema import (
        AttentionSpec,
        BlockSpec,
        MLPSpec,
        ModulePath,
        NormSpec,
        QKVSpec,
        ScoreBiasSpec,
        Spec,
        StackSpec,
    )

__all__ = ["bind", "collect_problems", "resolve_path"]


class _Binder(SpecWalker):
    """The one walk of the spec into the bound model."""

    # ---------------------------------------------------------------- parts
    def norm(self, root: nn.Module, n: NormSpec | None, field: str, prefix: str, name: str, feeds: str):
        if n is None:
            return None
        if n.optional:
            found = self.optional(root, n.path, prefix)
            if found is None:
                return None
            module, path = found
        else:
            module, path = self.resolve(root, n.path, f"{field}.path", prefix)
        kind = self.kind(f"{field}.kind")
        try:  # a kind reading an epsilon the module does not keep (OLMo's LayerNorm) fails here, not per call
            kind.eps(module)
        except AttributeError as exc:
            raise BindError(
                f"{exc}; a norm whose forward fixes its epsilon needs a kind that fixes it too "
                "(layernorm_fixed_eps: 1e-5)",
                spec_path=f"{field}.kind",
                module_path=path,
            ) from None
        return BoundNorm(module, path, kind, name, field, feeds)

    def attention(
        self, block: nn.Module, a: AttentionSpec, field: str, prefix: str, layer: int | None = None
    ) -> BoundAttention:
        module, path = self.resolve(block, a.path, f"{field}.path", prefix)
        inner = f"{path}."
        latent = None
        if a.qkv.kind == "latent":
            latent = self.attempt(bind_latent, self, module, a, field, inner)
            qkv = (
                {"q": None, "kv": None}
                if latent is None
                else {"q": (latent.q_a if latent.q_a is not None else latent.q, ""), "kv": (latent.kv_a, "")}
            )
        elif a.qkv.kind == "fused":
            qkv = {"qkv": self.attempt(self.resolve, module, a.qkv.path, f"{field}.qkv.path", inner)}
        else:
            qkv = {n: self.attempt(self.resolve, module, getattr(a.qkv, n), f"{field}.qkv.{n}", inner) for n in "qkv"}
        o = self.attempt(self.resolve, module, a.o, f"{field}.o", inner)
        q_norm = self.attempt(self.norm, module, a.q_norm, f"{field}.q_norm", inner, "q_norm", "q")
        k_norm = self.attempt(self.norm, module, a.k_norm, f"{field}.k_norm", inner, "k_norm", "k")
        o_norm = self.attempt(self.norm, module, a.o_norm, f"{field}.o_norm", inner, "o_norm", "o")
        out_gate = self.attempt(self.out_gate, module, a, field, inner) if a.out_gate is not None else None
        softcap = self.attempt(self.value, f"{field}.softcap", a.softcap)
        rotary = self.attempt(self.flag, f"{field}.rotary", a.rotary, layer)
        sinks = self.attempt(_sinks, module, a.sinks, f"{field}.sinks", path)
        order = self.attempt(self.choice, f"{field}.qkv.order", a.qkv.order, QKV_ORDERS, layer)
        if None in qkv.values() or o is None or rotary is None or order is None:
            raise Missing
        groups = self.attempt(self._qkv_groups, a.qkv, order, f"{field}.qkv.groups", layer)
        cfg = self.cfg
        views = qkv_views(cfg.n_heads, cfg.n_kv_heads, cfg.d_head, "qkv" in qkv, order, groups) if cfg else {}
        if latent is not None:
            views = latent_views(cfg.n_heads, cfg.d_head, latent, module)
        return BoundAttention(
            module=module,
            path=path,
            field=field,
            qkv={n: m[0] for n, m in qkv.items()},
            views=views,
            o=o[0],
            layout=a.layout,
            order=order,
            implementation=a.implementation,
            softmax_float32=a.softmax_dtype == "float32",
            output_index=a.output_index,
            residual_kwarg=a.residual_kwarg,
            hidden_kwarg=_hidden_param(module),
            own_causal_mask=a.own_causal_mask,
            q_prescaled=a.q_prescaled,
            softcap=softcap,
            sinks=sinks,
            q_norm=q_norm,
            k_norm=k_norm,
            qk_norm_heads_first=a.qk_norm_layout == "bhsd",
            qk_norm_layout=a.qk_norm_layout,
            qk_norm_after_rotary=a.qk_norm_at == "after_rotary",
            rotary=rotary,
            latent=latent,
            o_norm=o_norm,
            out_gate=out_gate,
        )

    def _qkv_groups(self, qkv: QKVSpec, order: str, field: str, layer: int | None) -> int | None:
        """`qkv.groups` for a `grouped_*` order: a count that splits the q width evenly (CodeGen: 4)."""
        grouped = order.startswith("grouped_")
        if qkv.groups is None:
            if grouped:
                raise spec_error(f"order '{order}' needs 'groups'", self.spec, self.spec_file, field)
            return None
        groups = self.value(field, qkv.groups, layer)
        cfg = self.cfg
        if not grouped or not isinstance(groups, int) or groups < 1:
            raise spec_error(
                f"evaluates to {groups!r}; expected a positive int, with an order grouped_*", self.spec, None, field
            )
        if cfg is not None and ((cfg.n_heads * cfg.d_head) % groups or cfg.n_kv_heads != cfg.n_heads):
            raise spec_error(
                f"{groups} groups cannot split {cfg.n_heads} query and {cfg.n_kv_heads} key/value heads"
                f" of {cfg.d_head} evenly",
                self.spec,
                None,
                field,
            )
        return groups

    def out_gate(self, module: nn.Module, a: AttentionSpec, field: str, inner: str) -> BoundOutGate:
        """The gate on the attention output (`attn.out_gate`): as wide as z (per element) or n_heads (per head)."""
        gate, path = self.resolve(module, a.out_gate.path, f"{field}.out_gate.path", inner)
        act = self.kind(f"{field}.out_gate.act")
        width = getattr(gate, "out_features", None)
        if self.cfg is None:
            return BoundOutGate(gate, path, act, per_head=False)
        h, d = self.cfg.n_heads, self.cfg.d_head
        if width not in (h, h * d):
            raise BindError(
                f"the gate has {width} outputs; expected n_heads * d_head = {h * d} or n_heads = {h}",
                spec_path=f"{field}.out_gate.path",
                module_path=path,
            )
        return BoundOutGate(gate, path, act, per_head=width == h)

    def mlp(self, block: nn.Module, b: BlockSpec, field: str, prefix: str, layer: int | None = None) -> BoundMLP:
        m = b.mlp
        module, path = self.resolve(block, m.path, f"{field}.mlp.path", prefix)
        inner = f"{path}." if module is not block else prefix
        kind = self.choice(f"{field}.mlp.kind", m.kind, ("plain", "gated", "moe"), layer)
        if kind == "moe":
            return bind_moe(self, module, path, m, field)
        if (m.in_ is None and m.gate_up is None) or m.out is None:
            raise spec_error(f"the MLP kind is '{kind}' here but names no 'in'/'out'", self.spec, None, f"{field}.mlp")
        gated = kind == "gated"
        if m.gate_up is not None:
            return self.fused_gate_up_mlp(block, module, path, inner, m, kind, field)
        w_in = self.attempt(self.resolve, module, m.in_, f"{field}.mlp.in", inner)
        w_gate = None
        if gated:
            if m.gate is None:
                self.fail(
                    spec_error(
                        "the MLP is gated for this config but names no 'gate'", self.spec, None, f"{field}.mlp.gate"
                    )
                )
            else:
                w_gate = self.attempt(self.resolve, module, m.gate, f"{field}.mlp.gate", inner)
        w_out = self.attempt(self.resolve, module, m.out, f"{field}.mlp.out", inner)
        act_name, act, act_field = self.activation(m, field, module, inner)
        if w_in is None or w_out is None or (gated and w_gate is None) or act is None:
            raise Missing
        own = module is not block  # OPT's MLP lives in the block itself: its input is fc1's
        out_norm = self.attempt(self.norm, module, m.out_norm, f"{field}.mlp.out_norm", inner, "out_norm", "out")
        return BoundMLP(
            module=module,
            path=path,
            w_in=w_in[0],
            w_gate=w_gate[0] if w_gate else None,
            w_out=w_out[0],
            layout=m.layout,
            act_name=str(act_name),
            act=act,
            act_field=act_field,
            flat_tokens=m.flat_tokens,
            input=Spot(module, path, "input") if own else Spot(w_in[0], w_in[1], "input"),
            out_norm=out_norm,
        )

    def fused_gate_up_mlp(
        self, block: nn.Module, module: nn.Module, path: str, inner: str, m: MLPSpec, kind: str, field: str
    ) -> BoundMLP:
        """A gated MLP whose gate and up projections are one module (`mlp.gate_up`, Phi-3): `w_in` and `w_gate`
        are that module, and `gate_up_views` take each half out of its output and weight."""
        if kind != "gated":
            raise spec_error(
                f"'gate_up' (a fused gate and up projection) needs a gated MLP, but the kind is '{kind}' here",
                self.spec,
                None,
                f"{field}.mlp.gate_up",
            )
        fused = self.attempt(self.resolve, module, m.gate_up.path, f"{field}.mlp.gate_up.path", inner)
        w_out = self.attempt(self.resolve, module, m.out, f"{field}.mlp.out", inner)
        act_name, act, act_field = self.activation(m, field, module, inner)
        if fused is None or w_out is None or act is None:
            raise Missing
        d_mlp = self.cfg.d_mlp if self.cfg else fused[0].weight.shape[0 if m.layout == "linear" else 1] // 2
        return BoundMLP(
            module=module,
            path=path,
            w_in=fused[0],
            w_gate=fused[0],
            w_out=w_out[0],
            layout=m.layout,
            act_name=str(act_name),
            act=act,
            act_field=act_field,
            flat_tokens=m.flat_tokens,
            input=Spot(module, path, "input") if module is not block else Spot(fused[0], fused[1], "input"),
            gate_up_views=gate_up_views(d_mlp, m.gate_up.order),
            gate_up_order=m.gate_up.order,
        )

    def block(self, index: int, module: nn.Module, b: BlockSpec, field: str, stack: str, prefix: str, kind: str):
        path = prefix.rstrip(".")
        hook_prefix = f"blocks.{index}" if stack == "decoder" and self.spec.encoder is None else f"{stack}.{index}"
        cross_spec = b.cross_attn
        mlp_norm_name = "ln3" if cross_spec is not None else "ln2"
        pre = kind != "post_norm"
        ln2 = self.attempt(
            self.norm, module, b.ln2, f"{field}.ln2", prefix, mlp_norm_name, "mlp" if pre else "resid_post"
        )
        # A parallel block with ln1 and no ln2 has one norm feeding attention and MLP (GPT-J, Phi); read from
        # the bound norm, so an `optional` ln2 absent in this config (StableLM's parallel form) counts too.
        shared = kind == "parallel" and ln2 is None and cross_spec is None
        ln1_feeds = ("attn+mlp" if shared else "attn") if pre else "resid_mid"
        ln1 = self.attempt(self.norm, module, b.ln1, f"{field}.ln1", prefix, "ln1", ln1_feeds)
        # Norms only after the sublayers (OLMo 2): HookedTransformer names them ln1 / ln2.
        post1 = "ln1" if b.ln1 is None else "ln1_post"
        post2 = "ln2" if b.ln2 is None and cross_spec is None else "ln2_post"
        ln1_post = self.attempt(self.norm, module, b.ln1_post, f"{field}.ln1_post", prefix, post1, "attn_out")
        ln2_post = self.attempt(self.norm, module, b.ln2_post, f"{field}.ln2_post", prefix, post2, "mlp_out")
        attn = self.attempt(self.attention, module, b.attn, f"{field}.attn", prefix, index)
        mlp = self.attempt(self.mlp, module, b, field, prefix, index)
        cross = self.attempt(self.cross, module, b, field, prefix, pre) if cross_spec is not None else None
        at = {
            role: self.attempt(self.resolve, module, getattr(b, role), f"{field}.{role}", prefix)
            if getattr(b, role) is not None
            else None
            for role in ("attn_out_at", "mlp_out_at", "resid_mid_at")
        }
        norms = [ln1, ln2, ln1_post, ln2_post, cross.ln if cross else None]
        seen: dict[int, BoundNorm] = {}
        for norm in (n for n in norms if n is not None):
            if id(norm.module) in seen:
                self.fail(
                    BindError(
                        f"{norm.field} and {seen[id(norm.module)].field} name the same module; each norm is one module",
                        spec_path=f"{norm.field}.path",
                        module_path=norm.path,
                    )
                )
            seen[id(norm.module)] = norm
        if kind == "post_norm" and (ln1 is None or ln2 is None):
            self.fail(spec_error("a post_norm block needs ln1 and ln2", self.spec, None, f"{field}.kind"))
        if attn is None or mlp is None or (cross_spec is not None and cross is None):
            raise Missing
        # Where each value of the residual stream lives, by the block's form. HF multiplies each sublayer's
        # output by config.residual_multiplier before the add (Granite): the contribution is that tensor
        # times it (docs/decisions/0013-multipliers.md).
        times = self.cfg.residual_multiplier if self.cfg is not None and self.cfg.residual_multiplier != 1 else None
        if ln1_post is not None:
            attn_out = Spot(ln1_post.module, ln1_post.path, scale=times)
        elif at["attn_out_at"] is not None:
            attn_out = Spot(at["attn_out_at"][0], at["attn_out_at"][1], scale=times)
        else:
            attn_out = Spot(attn.module, attn.path, index=attn.output_index, scale=times)
        if ln2_post is not None:
            mlp_out = Spot(ln2_post.module, ln2_post.path, scale=times)
        elif at["mlp_out_at"] is not None:
            mlp_out = Spot(at["mlp_out_at"][0], at["mlp_out_at"][1], scale=times)
        elif mlp.module is module:  # no MLP module of its own (OPT): its output projection's output
            mlp_out = Spot(mlp.w_out, f"{mlp.path}.out", scale=times)
        else:
            mlp_out = Spot(mlp.module, mlp.path, scale=times)
        if cross is not None and cross.residual is None and cross.ln is not None:
            # no module returns the residual after cross attention (BART): it is the next norm's input,
            # held twice by HF in pre-norm blocks (normalized and added back), so edited in place there
            after = (ln2 if pre else cross.ln) if ln2 is not None else None
            if after is not None:
                cross = replace(cross, residual=Spot(after.module, after.path, "input", in_place=pre))
        if at["resid_mid_at"] is not None:
            resid_mid = Spot(at["resid_mid_at"][0], at["resid_mid_at"][1], index=0)
        elif kind == "sequential" and cross is not None and cross.ln is not None:
            resid_mid = Spot(cross.ln.module, cross.ln.path, "input", in_place=True)  # mBART: the cross norm's input
        elif kind == "sequential" and ln2 is not None:
            # HF adds the attention output to the residual and hands that one tensor both to ln2 and,
            # as `residual`, to the add after the MLP: an edit must be made in place to reach both.
            resid_mid = Spot(ln2.module, ln2.path, "input", in_place=True)
        elif kind == "sequential" and b.ln2 is None and mlp.module is not module and cross_spec is None:
            # no norm before the MLP (OLMo 2): the MLP reads the mid residual, the same tensor HF adds back
            resid_mid = Spot(mlp.module, mlp.path, "input", in_place=True)
        elif kind == "post_norm":  # ln1 normalizes the mid residual, ln2 the block output
            resid_mid = Spot(ln1.module, ln1.path, "input")
        else:
            resid_mid = None
        if kind == "post_norm":
            resid_post = Spot(ln2.module, ln2.path, "input")
        else:
            resid_post = Spot(module, path, index=b.output_index)
        return BoundBlock(
            index=index,
            module=module,
            path=path,
            stack=stack,
            prefix=hook_prefix,
            field=field,
            kind=kind,
            attn=attn,
            mlp=mlp,
            resid_pre=Spot(module, path, "input", kwarg=b.hidden_states_kwarg),
            attn_out=attn_out,
            mlp_out=mlp_out,
            resid_mid=resid_mid,
            resid_post=resid_post,
            ln1=ln1,
            ln2=ln2,
            ln1_post=ln1_post,
            ln2_post=ln2_post,
            cross=cross,
            hidden_kwarg=b.hidden_states_kwarg,
            output_index=b.output_index,
        )

    def cross(self, module: nn.Module, b: BlockSpec, field: str, prefix: str, pre: bool) -> BoundCrossAttention:
        c = b.cross_attn
        at = f"{field}.cross_attn"
        attn = self.attempt(self.attention, module, c.attn, f"{at}.attn", prefix)
        # post-norm blocks (BART) normalize the residual after cross attention itself
        feeds = "cross_attn" if pre else "resid_mid_cross"
        ln = self.attempt(self.norm, module, c.ln, f"{at}.ln", prefix, "ln2", feeds)
        residual = (
            self.attempt(self.resolve, module, c.residual_at, f"{at}.residual_at", prefix) if c.residual_at else None
        )
        kind = self.attempt(self.kind, f"{at}.kind")
        if attn is None or kind is None:
            raise Missing
        return BoundCrossAttention(
            attn=attn,
            ln=ln,
            kind=kind,
            out=Spot(attn.module, attn.path, index=attn.output_index),
            residual=Spot(residual[0], residual[1], index=0) if residual else None,
            states_kwarg=c.encoder_states_kwarg,
            mask_kwarg=c.encoder_mask_kwarg,
        )

    def blocks(self, path: ModulePath, b: BlockSpec, field: str, stack: str, n_layers: int | None) -> list[BoundBlock]:
        list_field = "encoder.blocks" if stack == "encoder" else "blocks"
        blocks_list, blocks_path = self.resolve(self.model, path, list_field)
        if not isinstance(blocks_list, (nn.ModuleList, nn.Sequential)):
            self.fail(
                BindError(
                    f"'{blocks_path}' is a {type(blocks_list).__name__}, not a ModuleList of blocks",
                    spec_path=list_field,
                    module_path=blocks_path,
                )
            )
            raise Missing
        if n_layers is not None and len(blocks_list) != n_layers:
            count_field = "config.n_encoder_layers" if stack == "encoder" else "config.n_layers"
            self.fail(
                BindError(
                    f"{count_field} evaluates to {n_layers} but '{blocks_path}' holds {len(blocks_list)} blocks",
                    spec_path=count_field,
                    module_path=blocks_path,
                )
            )
        kind = self.choice(f"{field}.kind", b.kind, BLOCK_KINDS)
        found = [
            self.attempt(self.block, i, block, b, field, stack, f"{blocks_path}.{i}.", kind)
            for i, block in enumerate(blocks_list)
        ]
        if None in found:
            raise Missing
        return found

    def score_bias(
        self, s: ScoreBiasSpec | None, field: str, root: nn.Module | None = None, prefix: str = ""
    ) -> BoundScoreBias | None:
        if s is None:
            return None
        table = self.attempt(self.resolve, root or self.model, s.path, f"{field}.path", prefix) if s.path else None
        params = {k: self.attempt(self.value, f"{field}.params.{k}", v) for k, v in s.params.items()}
        return BoundScoreBias(
            self.kind(f"{field}.kind"), table[0] if table else None, table[1] if table else None, params
        )

    def call(self) -> BoundCall:
        c = self.spec.call
        n = self.cfg.n_layers if self.cfg else 0
        windows = tuple(self.attempt(self.value, "call.window", c.window, layer) for layer in range(n))
        rotary = tuple(
            {k: self.attempt(self.value, f"call.rotary_args.{k}", v, layer) for k, v in c.rotary_args.items()}
            for layer in range(n)
        )
        for problem in call_conflicts(self.spec, self.spec_file):
            self.fail(problem)
        extra = tuple(
            {k: self.attempt(self.value, f"call.extra_kwargs.{k}", v, layer) for k, v in c.extra_kwargs.items()}
            for layer in range(n)
        )
        return BoundCall(
            mask_format=self.kind("call.mask_format"),
            mask_kwarg=c.mask_kwarg,
            attention_mask_kwarg=c.attention_mask_kwarg,
            position_embeddings_kwarg=c.position_embeddings_kwarg,
            position_ids_kwarg=c.position_ids_kwarg,
            position_bias_kwarg=c.position_bias_kwarg,
            windows=windows,
            rotary_args=rotary,
            extra_kwargs=extra,
        )

    def stack(self, name: str, s: Spec | StackSpec, n_layers: int | None) -> BoundStack:
        """One stack: `s` is the encoder's StackSpec, or the Spec itself for the decoder (same field names)."""
        at, embed_spec, pos = ("encoder." if name == "encoder" else ""), s.embed, s.pos_embed
        embed = self.attempt(self.resolve, self.model, embed_spec.path, f"{at}embed.path")
        found = self.attempt(self.blocks, s.blocks, s.block, f"{at}block", name, n_layers)
        final_name = {"encoder": "encoder_final_ln"}.get(name, "decoder_final_ln" if self.spec.encoder else "ln_final")
        ln = self.attempt(self.norm, self.model, s.ln_final, f"{at}ln_final", "", final_name, "unembed")
        per_layer = s.score_bias is not None and s.score_bias.per_layer
        score_bias = None if per_layer else self.attempt(self.score_bias, s.score_bias, f"{at}score_bias")
        if per_layer and found is not None:  # UMT5: each block's self attention computes its own from its table
            found = [self._own_score_bias(block, s.score_bias, f"{at}score_bias") for block in found]
        # an encoder-decoder's decoder names its embedding norm decoder.embed.ln; the encoder's is embed.ln
        norm_name = "decoder.embed.ln" if name == "decoder" and self.spec.encoder else "embed.ln"
        embed_norm = self.attempt(self.norm, self.model, embed_spec.norm, f"{at}embed.norm", "", norm_name, "embed")
        position_kind = self.attempt(self.kind, f"{at}pos_embed.kind") if pos is not None or not at else None
        table = self.attempt(self.resolve, self.model, pos.path, f"{at}pos_embed.path") if pos and pos.path else None
        if table and position_kind is not None and position_kind.has_table:
            self._check_table(table[0], position_kind, f"{at}pos_embed")
        if at and position_kind is not None and not position_kind.has_table:  # rotary encoders: not yet
            self.fail(spec_error(f"the encoder's positions must be a table kind, not '{position_kind.name}'",
                                 self.spec, self.spec_file, f"{at}pos_embed.kind"))  # fmt: skip
        token_scale = self.cfg.embed_scale if self.cfg is not None else 1.0  # a stack's own (BlenderbotSmall)
        if embed_spec.scale is not None:
            token_scale = self.attempt(self._scale, f"{at}embed.scale", embed_spec.scale)
        scale = None  # HF multiplies the embedding's output outside the module (Granite): hook_embed shows the product
        if embed_spec.scale_at == "forward" and token_scale is not None and token_scale != 1:
            scale = token_scale
            # a norm on embeddings + positions reads the scaled embedding; otherwise HF's order is not declared
            if embed_spec.norm is not None and not embed_spec.norm_after_pos:
                self.fail(spec_error("embed.scale_at 'forward' with an embedding norm before the positions is not "
                                     "supported: the spec cannot say whether HF scales before or after the norm",
                                     self.spec, self.spec_file, f"{at}embed.scale_at"))  # fmt: skip
        if ln is not None and embed_norm is not None and ln.module is embed_norm.module:
            embed_norm, ln = self._two_roles(embed_norm, ln)
        if embed is None or found is None:
            raise Missing
        table = table or (None, None)
        return BoundStack(name, embed[0], embed[1], found, ln, score_bias, embed_norm, position_kind, *table,
                          pos_offset=pos.offset if pos else 0, norm_after_pos=embed_spec.norm_after_pos,
                          embed_scale=scale, token_scale=token_scale if token_scale is not None else 1.0)  # fmt: skip

    def _scale(self, field: str, value) -> float:
        """A stack's embedding scale (`embed.scale`): a finite non-zero number."""
        result = self.value(field, value)
        if isinstance(result, bool) or not isinstance(result, (int, float)) or not math.isfinite(result) or not result:
            raise spec_error(f"evaluates to {result!r}; an embedding scale is a finite non-zero number",
                             self.spec, self.spec_file, field)  # fmt: skip
        return float(result)

    def _two_roles(self, embed_norm: BoundNorm, final: BoundNorm) -> tuple[BoundNorm, BoundNorm]:
        """One norm module as embedding norm and final norm (NanoChat's `model.norm`): each role's hooks act on its
        own calls. A norm holding parameters is refused: folding it into the unembedding would change both."""
        held = [n for n, _ in embed_norm.module.named_parameters()]
        if held:
            self.fail(spec_error(f"'{final.path}' is named as embed.norm and ln_final, but holds parameters {held}: "
                                 "one norm in two roles must hold none (processing folds the final norm's)",
                                 self.spec, self.spec_file, final.field))  # fmt: skip
        return replace(embed_norm, role="embed"), replace(final, role="final")

    def _own_score_bias(self, block: BoundBlock, s: ScoreBiasSpec, field: str) -> BoundBlock:
        """`block` with its self attention's own score bias (`score_bias.per_layer`, path relative to the block)."""
        bias = self.attempt(self.score_bias, s, field, block.module, f"{block.path}.")
        return replace(block, attn=replace(block.attn, score_bias=bias)) if bias is not None else block

    def _check_table(self, module: nn.Module, kind: Position, field: str) -> None:
        """A table kind reads its rows from one attribute of the module (`weight`; M2M100's `weights`). A module
        holding no tensors at all is a wrong path, left to the checks (hook_fire_counts names a dead one)."""
        held = [n for n, _ in [*module.named_parameters(recurse=False), *module.named_buffers(recurse=False)]]
        if held and not isinstance(getattr(module, kind.table_attr, None), torch.Tensor):
            self.fail(spec_error(f"position kind '{kind.name}' reads its table from {type(module).__name__}."
                                 f"{kind.table_attr}, which it does not have (it holds {held})",
                                 self.spec, self.spec_file, f"{field}.kind"))  # fmt: skip

    def model_(self) -> BoundModel:
        spec, cfg = self.spec, self.cfg
        encoder = None
        if spec.encoder is not None:
            enc = spec.encoder
            n_encoder = cfg.extra.get("n_encoder_layers") if cfg else None
            if cfg is not None and not isinstance(n_encoder, int):
                self.fail(
                    spec_error("an encoder stack needs the normalized field n_encoder_layers", spec, None, "config")
                )
            encoder = self.attempt(self.stack, "encoder", enc, n_encoder)
        decoder = self.attempt(self.stack, "decoder", spec, cfg.n_layers if cfg else None)
        embed_project = self.optional(self.model, spec.embed.project)
        position_kind = self.attempt(self.kind, "pos_embed.kind")
        unembed_bias = self.attempt(self.tensor, spec.unembed.bias, "unembed.bias")
        unembed = self.attempt(self.resolve, self.model, spec.unembed.path, "unembed.path")
        unembed_project = self.optional(self.model, spec.unembed.project)
        pre_scale = self.attempt(self.value, "unembed.pre_scale", spec.unembed.pre_scale)
        softcap = self.attempt(self.value, "unembed.softcap", spec.unembed.softcap)
        call = self.attempt(self.call)
        if decoder is None or unembed is None or position_kind is None or call is None:
            raise Missing
        if spec.encoder is not None and encoder is None:
            raise Missing
        return BoundModel(
            decoder=decoder,
            embed_norm=decoder.embed_norm,
            embed_project=embed_project[0] if embed_project else None,
            embed_spot=decoder.embed_spot(),
            embed_scale=decoder.token_scale,
            position_kind=position_kind,
            pos_embed=decoder.pos_embed,
            pos_offset=decoder.pos_offset,
            unembed=unembed[0],
            unembed_path=unembed[1],
            unembed_project=unembed_project[0] if unembed_project else None,
            unembed_pre_scale=pre_scale,
            final_softcap=softcap,
            call=call,
            logit_scale=cfg.logit_scale if cfg is not None and cfg.logit_scale != 1 else None,
            encoder=encoder,
            default_prepend_bos=spec.tokenizer.default_prepend_bos,
            rotary_sin_first=spec.pos_embed is not None and spec.pos_embed.rotary_output == "sin_cos",
            unembed_bias=unembed_bias,
        )


def bind(model: nn.Module, spec: Spec, cfg: BridgeConfig, kinds: Kinds, spec_file: str | None = None) -> BoundModel:
    """The bound model of `spec` over `model`, with its hook points laid out; raises on the first problem."""
    binder = _Binder(model, spec, cfg, kinds, spec_file, collect=False)
    try:
        bound = binder.model_()
    except Missing:  # pragma: no cover - strict mode raises the problem itself
        raise SpecError("the spec could not be bound") from None
    bound.points = shard_points(model, lay_out_points(bound, cfg, kinds))  # tensor-parallel gathers
    return bound


def collect_problems(
    model: nn.Module, spec: Spec, cfg: BridgeConfig | None, kinds: Kinds, spec_file: str | None = None
) -> list[BridgeCoreError]:
    """Every problem binding `spec` to `model` meets, each located; empty when it binds."""
    binder = _Binder(model, spec, cfg, kinds, spec_file, collect=True)
    try:
        binder.model_()
    except Missing:
        pass
    except BridgeCoreError as error:
        binder.problems.append(error)
    return binder.problems


def _sinks(module: nn.Module, name: str | None, field: str, path: str) -> torch.Tensor | None:
    """The attention module's per-head sink logits (`block.attn.sinks` names the parameter), or None."""
    if name is None:
        return None
    value = getattr(module, name, None)
    if not isinstance(value, torch.Tensor) or value.dim() != 1:
        raise BindError(
            f"{type(module).__name__} has no 1-D parameter {name!r} of per-head sink logits",
            spec_path=field,
            module_path=f"{path}.{name}",
            suggestions=[n for n, p in module.named_parameters(recurse=False) if p.dim() == 1],
        )
    return value


def _hidden_param(module: nn.Module) -> str:
    """The attention forward's parameter taking the hidden states: `hidden_states`, or else its first one
    (OpenAI GPT's `x`), read once from the signature at bind time."""
    names = [p.name for p in forward_parameters(module)]
    return "hidden_states" if "hidden_states" in names or not names else names[0]
