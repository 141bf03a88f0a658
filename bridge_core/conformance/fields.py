"""Which spec field a hook point or weight view comes from, so a failure can name the field most
likely wrong; and the TransformerLens shape each hook point must have, derived from `cfg`."""

from __future__ import annotations

import re

from ..spec.config import BridgeConfig

_FIELDS: list[tuple[str, str]] = [
    (r"^hook_embed$", "embed.path"),
    (r"^(decoder\.)?hook_pos_embed$", "pos_embed"),
    (r"\.hook_resid_pre$", "blocks / block.hidden_states_kwarg"),
    (r"(^|\.)ln1\.", "block.ln1"),
    (r"(^|\.)ln2\.", "block.ln2"),
    (r"^ln_final\.", "ln_final"),
    (r"^(de|en)coder_final_ln\.", "ln_final / encoder.ln_final"),
    (r"(^|\.)ln3\.", "block.ln2"),
    (r"\.attn\.hook_[qkv]$", "block.attn.qkv"),
    (r"\.attn\.hook_(q_latent|kv_latent|k_rope)$", "block.attn.qkv (kind: latent)"),
    (r"\.attn\.hook_(attn_scores|pattern)$", "block.attn.path / block.attn.implementation"),
    (r"\.attn\.hook_(z|result)$", "block.attn.o"),
    (r"\.hook_attn_out$", "block.attn.path / block.attn.output_index"),
    (r"\.hook_resid_mid$", "block.ln2.path / block.kind"),
    (r"\.hook_resid_mid_cross$", "block.cross_attn.residual_at"),
    (r"\.cross_attn\.hook_[qkv]$", "block.cross_attn.attn.qkv"),
    (r"\.hook_cross_attn_out$", "block.cross_attn.attn.path"),
    (r"hook_rel_pos_bias$", "score_bias"),
    (r"\.mlp\.(experts\.\d+\.hook_|hook_expert_|hook_router_|hook_routing_)", "block.mlp.moe"),
    (r"\.mlp\.(shared_expert\.|hook_shared_expert_gate)", "block.mlp.moe.shared_expert"),
    (r"\.mlp\.hook_pre(_linear)?$", "block.mlp.in / block.mlp.gate / block.mlp.gate_up"),
    (r"\.mlp\.hook_post$", "block.mlp.out"),
    (r"\.hook_mlp_out$", "block.mlp.path"),
    (r"\.hook_resid_post$", "blocks / block.output_index"),
    (r"^hook_unembed$", "unembed.path"),
]


def field_for_hook(name: str) -> str | None:
    """The spec field that places hook point `name` (None for names this table does not know)."""
    for pattern, spec_field in _FIELDS:
        if re.search(pattern, name):
            return spec_field
    return None


ENCODER_EMBEDDING_NAMES = ("hook_embed", "hook_pos_embed", "embed.ln.hook_scale", "embed.ln.hook_normalized")
"""Names of an encoder-decoder model that run over the encoder's positions besides `encoder.*`."""


def on_encoder(name: str) -> bool:
    """Whether hook point `name` of an encoder-decoder model runs over the encoder's positions."""
    return name in ENCODER_EMBEDDING_NAMES or name.startswith("encoder")


def expected_shape(
    name: str, cfg: BridgeConfig, batch: int, seq: int, encoder_seq: int | None = None
) -> tuple[int, ...] | None:
    """HookedTransformer's shape of hook point `name` for a `[batch, seq]` input (None: not known).

    Encoder-decoder models: `seq` is the decoder's length and `encoder_seq` the encoder's; encoder
    names and cross-attention keys run over the encoder's positions.
    """
    h, kv, d, dm = cfg.n_heads, cfg.n_kv_heads, cfg.d_head, cfg.d_model
    suffix = name.rsplit(".", 1)[-1]
    if encoder_seq is not None and on_encoder(name):
        seq = encoder_seq
    keys = encoder_seq if encoder_seq is not None and ".cross_attn." in name else seq
    if suffix == "hook_rel_pos_bias":
        return (1, h, seq, seq)
    if ".attn." in name or ".cross_attn." in name or name.startswith("attn."):
        table = {
            "hook_q": (batch, seq, h, d),
            "hook_rot_q": (batch, seq, h, d),
            "hook_z": (batch, seq, h, d),
            "hook_k": (batch, keys, kv, d),
            "hook_v": (batch, keys, kv, d),
            "hook_rot_k": (batch, keys, kv, d),
            "hook_attn_scores": (batch, h, seq, keys),
            "hook_pattern": (batch, h, seq, keys),
            "hook_result": (batch, seq, h, dm),
        }
        extra = cfg.extra
        if "kv_lora_rank" in extra:  # latent attention: k is the per-head part, v and z d_head_v wide
            rope, dv = extra.get("rotary_dim", 0), extra.get("d_head_v", d)
            table.update(hook_k=(batch, keys, kv, d - rope), hook_v=(batch, keys, kv, dv), hook_z=(batch, seq, h, dv))
            table.update(hook_k_rope=(batch, seq, rope), hook_kv_latent=(batch, seq, extra["kv_lora_rank"]))
            if extra.get("q_lora_rank") is not None:
                table["hook_q_latent"] = (batch, seq, extra["q_lora_rank"])
        return table.get(suffix)
    if ".mlp.experts." in name or ".mlp.shared_expert." in name:
        return None  # a mixture of experts: checked by moe_hooks (tokens per expert vary)
    if ".mlp." in name:
        return (batch, seq, cfg.d_mlp) if suffix in ("hook_pre", "hook_pre_linear", "hook_post") else None
    if suffix == "hook_scale":
        return (batch, seq, 1)
    if suffix == "hook_unembed":
        return (batch, seq, cfg.d_vocab)
    if suffix in (
        "hook_normalized",
        "hook_embed",
        "hook_pos_embed",
        "hook_resid_pre",
        "hook_resid_mid",
        "hook_resid_mid_cross",
        "hook_resid_post",
        "hook_normalized_resid_post",
        "hook_attn_out",
        "hook_cross_attn_out",
        "hook_mlp_out",
    ):
        return (batch, seq, dm)
    return None


def _block_names(p: str, kind: str, gated: bool, cross: bool, rotary: bool, shared_norm: bool = False) -> list[str]:
    """The names one block of this kind lists (HookedTransformer; HookedEncoderDecoder with `cross`).

    `shared_norm`: one norm feeds attention and MLP (GPT-J, Phi), so the block lists ln1 only (HookedTransformer
    computes a tied copy as ln2; docs/decisions/0012).
    """
    attn = ("q", "k", "v", *(("rot_q", "rot_k") if rotary else ()), "attn_scores", "pattern", "z", "result")
    names = [f"{p}.hook_resid_pre", f"{p}.ln1.hook_scale", f"{p}.ln1.hook_normalized"]
    names += [f"{p}.attn.hook_{n}" for n in attn]
    names += [f"{p}.hook_attn_out", *([f"{p}.hook_resid_mid"] if kind != "parallel" else [])]
    if cross:
        names += [f"{p}.ln2.hook_scale", f"{p}.ln2.hook_normalized"]
        names += [f"{p}.cross_attn.hook_{n}" for n in ("q", "k", "v", "attn_scores", "pattern", "z", "result")]
        names += [f"{p}.hook_cross_attn_out", f"{p}.hook_resid_mid_cross"]
    mlp_norm = f"{p}.ln3" if cross else f"{p}.ln2"
    names += [] if shared_norm else [f"{mlp_norm}.hook_scale", f"{mlp_norm}.hook_normalized"]
    names += [f"{p}.mlp.hook_pre"]
    names += [f"{p}.mlp.hook_pre_linear"] if gated else []
    names += [f"{p}.mlp.hook_post", f"{p}.hook_mlp_out", f"{p}.hook_resid_post"]
    names += [f"{p}.hook_normalized_resid_post"] if kind == "post_norm" else []
    return names


def standard_names(ctx) -> list[str]:
    """The HookedTransformer (HookedEncoderDecoder) names a model of this shape must list."""
    bridge = ctx.bridge
    bound = bridge.bound
    rotary = bridge.position_kind.rotates_qk
    names: list[str] = []
    if bound.encoder is not None:
        for prefix, stack in (("", bound.encoder), ("decoder.", bound.decoder)):
            names.append(f"{prefix}hook_embed")
            if stack.pos_embed is not None and stack.position_kind is not None and stack.position_kind.has_table:
                names.append(f"{prefix}hook_pos_embed")
            if stack.score_bias:
                names.append(f"{stack.name}.hook_rel_pos_bias")
    else:
        table = bound.pos_embed is not None and bridge.position_kind.has_table
        names += ["hook_embed", *(["hook_pos_embed"] if table else [])]
    for layer in ctx.layers:
        b = layer.block
        shared = b.ln1 is not None and b.ln1.feeds_into("mlp")
        rotates = rotary and layer.stack == "decoder"
        block_names = _block_names(layer.prefix, b.kind, b.mlp.w_gate is not None, b.cross is not None, rotates, shared)
        if b.attn.score_bias is not None:  # a layer's own score bias (UMT5)
            names.append(f"{layer.prefix}.attn.hook_rel_pos_bias")
        names += block_names if b.mlp.moe is None else moe_block_names(layer.prefix, b.mlp.moe, block_names)
    names += [f"{prefix}.{which}" for prefix, _, _ in ctx.final_norms() for which in ("hook_scale", "hook_normalized")]
    return [*names, "hook_unembed"]


def moe_block_names(p: str, moe, block_names: list[str]) -> list[str]:
    """A block's names with HookedTransformer's MoE names for its MLP (`mlp.hook_expert_weights`,
    `mlp.hook_expert_indices`, `mlp.experts.{e}.hook_gate / hook_pre / hook_post`)."""
    dense = {f"{p}.mlp.hook_pre", f"{p}.mlp.hook_pre_linear", f"{p}.mlp.hook_post"}
    names = [n for n in block_names if n not in dense]
    at = names.index(f"{p}.hook_mlp_out")
    experts = [f"{p}.mlp.experts.{e}.hook_{w}" for e in range(moe.n_experts) for w in ("gate", "pre", "post")]
    return [*names[:at], f"{p}.mlp.hook_expert_weights", f"{p}.mlp.hook_expert_indices", *experts, *names[at:]]
