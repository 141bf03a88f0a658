"""Observers of the normalized config: each field is the config attribute (or a short expression over
attributes) whose value equals a shape or number the observed forward showed."""

from __future__ import annotations

import contextlib
from typing import Any

from ...registry import default_registry
from ..draft import DraftContext
from ..shrink import plain_fields
from .modules import eps_of

_PREFER = {
    "n_layers": ("num_hidden_layers", "n_layer", "num_layers", "n_layers", "decoder_layers"),
    "d_model": ("hidden_size", "n_embd", "d_model", "dim"),
    "n_heads": ("num_attention_heads", "n_head", "num_heads", "n_heads", "decoder_attention_heads"),
    "n_kv_heads": ("num_key_value_heads", "n_kv_heads", "num_kv_heads", "multi_query_group_num"),
    "d_head": ("head_dim", "kv_channels", "attention_head_dim"),
    "d_mlp": ("intermediate_size", "n_inner", "ffn_dim", "d_ff", "dff", "decoder_ffn_dim", "ffn_hidden_size"),
    "d_vocab": ("vocab_size", "padded_vocab_size"),
    "n_ctx": ("max_position_embeddings", "n_positions", "n_ctx", "max_sequence_length", "seq_length"),
}
_KEYWORDS = {"n_layers": ("layer",), "n_heads": ("head",), "n_kv_heads": ("head", "kv"), "d_mlp": ("ffn", "inter")}
_ACT_FIELDS = (
    "hidden_act", "hidden_activation", "activation_function", "act_fn", "ffn_act", "activation", "dense_act_fn"
)  # fmt: skip


def observe_config(ctx: DraftContext) -> None:
    cfg: dict[str, Any] = ctx.draft.fields.setdefault("config", {})
    found, fields = ctx.found, plain_fields(ctx.config)
    observed = {
        "n_layers": len(ctx.obs.module(ctx.blocks)),
        "d_model": int(ctx.obs.input(ctx.block).shape[-1]),
        "n_heads": found["n_heads"],
        "n_kv_heads": found["n_kv_heads"],
        "d_head": found["d_head"],
        "d_mlp": found.get("d_mlp"),
        "d_vocab": int(ctx.obs.logits.shape[-1]),
        "n_ctx": found.get("n_ctx_rows") or fields.get("max_position_embeddings") or fields.get("n_positions"),
    }
    for key, value in observed.items():
        if value is None and key == "n_ctx":
            continue  # no position table and no context field (T5): the model has no context limit to state
        if value is None:
            ctx.draft.gap("config", f"{key} was not observed")
            continue
        name = ctx.attr(value, _PREFER[key], _KEYWORDS.get(key, ()))
        if key == "n_kv_heads" and name not in (*_PREFER[key], None) and "kv" not in name and "key_value" not in name:
            name = None  # a head count matched by keyword only (BlenderbotSmall's encoder_attention_heads): derived
        if name is not None:
            cfg[key] = _or_fallback(ctx, key, name, cfg)
        else:
            expr = _derived(ctx, key, value, cfg, fields)
            if expr is None:
                ctx.draft.gap("config", f"no config attribute or simple expression gives {key} = {value}")
                cfg[key] = value
            else:
                cfg[key] = expr
    if "multi_query" in fields and "n_kv_heads" in cfg:
        ctx.draft.note("config.n_kv_heads: the config has `multi_query`; check the expression on both settings")
        if fields["multi_query"] and observed["n_kv_heads"] == 1:
            cfg["n_kv_heads"] = f"1 if multi_query else {cfg['n_heads']}"
            ctx.found.setdefault("variants", {})["multi_head"] = {"multi_query": False}
    _eps(ctx, cfg)
    _act(ctx, cfg, fields)
    _rotary_dim(ctx, cfg, fields)


def _or_fallback(ctx: DraftContext, key: str, name: str, cfg: dict[str, Any]) -> str:
    """`head_dim or hidden_size // num_attention_heads` where the default config leaves head_dim unset."""
    defaults = plain_fields(ctx.cls.config_class()) if _constructible(ctx) else {}
    if key == "d_head" and name in defaults and defaults[name] is None:
        return f"{name} or {cfg['d_model']} // {cfg['n_heads']}"
    if key == "d_mlp" and name in defaults and defaults[name] is None:
        return f"{name} or 4 * {cfg['d_model']}"
    return name


def _constructible(ctx: DraftContext) -> bool:
    try:
        ctx.cls.config_class()
        return True
    except Exception:
        return False


def _derived(ctx, key, value, cfg, fields) -> str | None:
    d_model, n_heads = cfg.get("d_model"), cfg.get("n_heads")
    if key == "d_head" and d_model and n_heads:
        unset = next((n for n in _PREFER["d_head"] if n in fields and fields[n] is None), None)
        base = f"{d_model} // {n_heads}"
        return f"{unset} or {base}" if unset else base
    if key == "n_kv_heads" and value == ctx.found["n_heads"] and n_heads:
        return n_heads
    if key == "n_kv_heads" and value == 1:
        return "1"
    if key == "d_mlp" and d_model:
        unset = next((n for n in _PREFER["d_mlp"] if n in fields and fields[n] is None), None)
        for k in (2, 3, 4, 8):
            if value == k * ctx.obs.input(ctx.block).shape[-1]:
                return f"{unset} or {k} * {d_model}" if unset else f"{k} * {d_model}"
    return None


def _eps(ctx: DraftContext, cfg: dict[str, Any]) -> None:
    block = ctx.draft.fields.get("block", {})
    role = next((r for r in ("ln1", "ln2", "ln1_post", "ln2_post") if r in block), None)
    if role is None:
        return
    module = ctx.obs.module(f"{ctx.block}.{block[role]['path']}")
    eps = eps_of(module)
    kind = default_registry().plugins.kinds.norms.get(block[role]["kind"])
    if eps is None and kind is not None:  # a kind with a fixed epsilon (OLMo's LayerNorm keeps none)
        with contextlib.suppress(AttributeError):
            eps = kind.eps(module)
    if eps is None:
        return
    name = ctx.attr(eps, ("rms_norm_eps", "layer_norm_eps", "layer_norm_epsilon", "norm_eps"), ("eps", "epsilon"))
    if name:
        cfg["eps"] = name
    else:
        cfg["eps"] = eps
        ctx.draft.note(f"config.eps: no config attribute holds the norms' eps; the literal {eps} is written")


def _act(ctx: DraftContext, cfg: dict[str, Any], fields: dict[str, Any]) -> None:
    act = ctx.found.get("act")
    if act is None:
        return
    name = next((n for n in _ACT_FIELDS if fields.get(n) == act), None)
    alias = {"gelu_pytorch_tanh": ("gelu_new", "gelu_fast"), "silu": ("swish",), "gelu_new": ("gelu_pytorch_tanh",)}
    if name is None:
        name = next((n for n in _ACT_FIELDS if fields.get(n) in alias.get(act, ())), None)
        if name is not None:
            act = fields[name]
    if name is not None:
        cfg["act_fn"] = name
    else:
        ctx.draft.fields["block"]["mlp"]["act_fn"] = act
        ctx.draft.note(f"block.mlp.act_fn: '{act}' observed; no config attribute names it")


def _rotary_dim(ctx: DraftContext, cfg: dict[str, Any], fields: dict[str, Any]) -> None:
    rotary = ctx.found.get("rotary_dim")
    if rotary is None or rotary == ctx.found["d_head"]:
        return
    name = ctx.attr(rotary, ("rotary_dim", "rotary_emb_dim"), ("rotary",))
    if name:
        cfg["rotary_dim"] = name
        return
    rope = fields.get("rope_parameters") or {}
    factor = rope.get("partial_rotary_factor") if isinstance(rope, dict) else None
    if factor is None:
        factor = fields.get("partial_rotary_factor")
        where = "partial_rotary_factor"
    else:
        where = "rope_parameters['partial_rotary_factor']"
    if factor and int(ctx.found["d_head"] * factor) == rotary:
        cfg["rotary_dim"] = f"int(({cfg['d_head']}) * {where})"
    else:
        ctx.draft.gap("partial rotary", f"{rotary} of {ctx.found['d_head']} dims rotate; no config field gives it")
        cfg["rotary_dim"] = rotary
