"""Consistent tiny configs: the overrides that shrink an HF config to a model that builds in milliseconds.

Every size is shrunk together with what depends on it (special token ids inside the vocabulary, rope
parameters against the context, rotary_dim against the head, windows against the test sequences,
per-layer lists against the layer count, experts against their top-k). Values are chosen distinct
(2 layers, 4 heads, 2 kv heads, d_head 16, d_model 64, d_mlp 96, vocab 101, context 64) so an observed
shape names the config attribute that gives it.
"""

from __future__ import annotations

from typing import Any

N_LAYERS, D_MODEL, N_HEADS, D_HEAD, D_MLP, D_VOCAB, N_CTX, WINDOW = 2, 64, 4, 16, 96, 101, 64, 3

# attribute names transformers configs use for each size (stored names, not attribute_map aliases)
_SIZES: dict[str, int] = {
    **dict.fromkeys(("num_hidden_layers", "n_layer", "num_layers", "n_layers", "num_decoder_layers",
                     "decoder_layers", "encoder_layers"), N_LAYERS),
    **dict.fromkeys(("hidden_size", "n_embd", "d_model", "dim", "embed_dim", "word_embed_proj_dim"), D_MODEL),
    **dict.fromkeys(("num_attention_heads", "n_head", "num_heads", "n_heads", "decoder_attention_heads",
                     "encoder_attention_heads"), N_HEADS),
    **dict.fromkeys(("head_dim", "kv_channels", "attention_head_dim", "d_head"), D_HEAD),
    **dict.fromkeys(("intermediate_size", "n_inner", "ffn_dim", "d_ff", "dff", "decoder_ffn_dim", "encoder_ffn_dim",
                     "ffn_hidden_size", "mlp_dim"), D_MLP),
    **dict.fromkeys(("vocab_size", "padded_vocab_size"), D_VOCAB),
    **dict.fromkeys(("max_position_embeddings", "n_positions", "n_ctx", "max_sequence_length", "seq_length",
                     "max_seq_len"), N_CTX),
    **dict.fromkeys(("num_experts", "num_local_experts", "n_routed_experts", "moe_num_experts"), 4),
    **dict.fromkeys(("num_experts_per_tok", "moe_topk", "num_experts_per_token", "moe_k"), 2),
    **dict.fromkeys(("moe_intermediate_size", "expert_intermediate_size", "shared_expert_intermediate_size"), 32),
}  # fmt: skip
_EXPERTS = ("num_experts", "num_local_experts", "n_routed_experts", "moe_num_experts", "num_experts_per_tok")
_KV_HEADS = ("num_key_value_heads", "n_kv_heads", "num_kv_heads", "kv_n_heads", "multi_query_group_num")
_WINDOWS = ("sliding_window", "attention_window", "window_size")
_SPECIAL_IDS = {"pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2, "decoder_start_token_id": 0}
_LAYER_COUNTS = ("num_hidden_layers", "n_layer", "num_layers", "n_layers", "decoder_layers")


def plain_fields(config: Any) -> dict[str, Any]:
    """The config's stored public fields (`to_dict`, without nested configs or bookkeeping)."""
    out = {}
    for key, value in config.to_dict().items():
        if key.startswith("_") or key in ("architectures", "transformers_version", "model_type", "dtype"):
            continue
        out[key] = value
    return out


def _layer_count(fields: dict[str, Any]) -> int | None:
    return next((fields[k] for k in _LAYER_COUNTS if isinstance(fields.get(k), int)), None)


def _per_layer(values: list[Any], n: int) -> list[Any]:
    """`n` entries of a per-layer list, keeping each distinct value seen (sliding and full layers both)."""
    return [values[i] for i in _kept_layers(values, n)]


def _kept_layers(values: list[Any], n: int) -> list[int]:
    """The original layers `_per_layer` keeps: the first of each distinct value, then the first layers."""
    firsts = list({repr(v): i for i, v in reversed(list(enumerate(values)))}.values())[::-1]
    chosen = sorted(firsts, key=lambda i: i)[:n]
    return (chosen + list(range(n - len(chosen))))[:n] if len(chosen) < n else chosen


def _per_layer_config(fields: dict[str, Any], out: dict[str, Any], layers: int) -> None:
    """A `per_layer_config` ({layer index: overrides}, Gemma 4, dots3) kept for the layers the tiny model keeps
    (as `layer_types` is shrunk), re-indexed, its sizes shrunk like the config's own (a per-layer head_dim that
    differs from the config's stays different: twice the tiny one)."""
    table = fields.get("per_layer_config")
    if not isinstance(table, dict) or not table:
        return
    types = fields.get("layer_types")
    kept = _kept_layers(types, N_LAYERS) if isinstance(types, list) and len(types) == layers else list(range(N_LAYERS))
    by_index = {int(k): v for k, v in table.items() if str(k).lstrip("-").isdigit() and isinstance(v, dict)}
    new: dict[int, dict[str, Any]] = {}
    for position, old in enumerate(kept):
        if old not in by_index:
            continue
        entry = {}
        for key, value in by_index[old].items():
            if key in out and isinstance(value, int) and not isinstance(value, bool):
                differs = key in ("head_dim", "global_head_dim") and value != fields.get(key)
                entry[key] = out[key] * 2 if differs else out[key]
            else:
                entry[key] = value
        new[position] = entry
    out["per_layer_config"] = new


def _remap_id(value: Any, default: int) -> Any:
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, int):
        return value if 0 <= value < D_VOCAB else default
    if isinstance(value, list):
        return [_remap_id(v, default) for v in value]
    return value


def shrink(config: Any, parent: dict[str, Any] | None = None) -> tuple[dict[str, Any], list[str]]:
    """Overrides that make `config` tiny, and notes on what the tiny model does not exercise. `parent`: the
    fields of the config holding this one as a sub-config (its head count decides a kv-head count here)."""
    fields = plain_fields(config)
    notes: list[str] = []
    out: dict[str, Any] = {}
    _shrink_sub_configs(config, fields, out, notes)
    for key, value in fields.items():
        if key in _SIZES and isinstance(value, int) and not isinstance(value, bool):
            out[key] = _SIZES[key]
    if any(fields.get(k) is None for k in _EXPERTS if k in fields):  # unset expert counts (dots1): set them all
        for key in (*_EXPERTS, "n_shared_experts"):
            if key in fields and fields[key] is None:
                out[key] = _SIZES.get(key, 1)
    if "head_dim" in fields and fields["head_dim"] is None:
        out["head_dim"] = D_HEAD  # = d_model // n_heads here; some classes use an unset head_dim as is
    outer = {**(parent or {}), **fields}
    heads = next((outer[k] for k in ("num_attention_heads", "n_head", "num_heads", "n_heads") if k in outer), None)
    for key in _KV_HEADS:
        if key in fields and fields[key] is None and key != "multi_query_group_num":
            out[key] = N_HEADS  # HF's documented meaning of an unset kv-head count: one per query head
        if isinstance(fields.get(key), int):
            grouped = isinstance(heads, int) and fields[key] < heads
            out[key] = 2 if grouped else N_HEADS  # keep the family's choice: grouped or one kv head per head
            if fields[key] == 1 and grouped:
                out[key] = 1  # multi-query stays multi-query
    for key, value in fields.items():
        if key.endswith("token_id") or key in _SPECIAL_IDS:
            remapped = _remap_id(value, _SPECIAL_IDS.get(key, 3))
            if remapped != value:
                out[key] = remapped
        elif isinstance(value, float) and ("dropout" in key or "pdrop" in key) and value:
            out[key] = 0.0
        elif key in _WINDOWS and isinstance(value, int) and not isinstance(value, bool):
            out[key] = WINDOW
    layers = _layer_count(fields)
    for key, value in fields.items():
        if isinstance(value, list) and layers and len(value) == layers and layers != N_LAYERS:
            out[key] = _per_layer(value, N_LAYERS)
    # multipliers left at 1.0 are invisible to observation: distinct values show where each one acts
    ones = [k for k, v in fields.items() if "multiplier" in k and isinstance(v, float) and v == 1.0]
    for i, key in enumerate(sorted(ones)):
        out[key] = 0.5 + 0.125 * i
    _shrink_rotary(fields, out, notes)
    _shrink_latent(fields, out)
    if layers and layers != N_LAYERS:  # after the latent widths: a layer's own widths shrink with them (dots3)
        _per_layer_config(fields, out, layers)
    if isinstance(fields.get("n_group"), int) and fields["n_group"] > 1:
        out["n_group"] = 2  # expert groups of the shrunk 4 experts: 2 groups of 2, one kept (DeepSeek)
        if isinstance(fields.get("topk_group"), int):
            out["topk_group"] = 1
    shared = fields.get("num_kv_shared_layers")
    if isinstance(shared, int) and not isinstance(shared, bool) and shared > 0 and layers != N_LAYERS:
        out["num_kv_shared_layers"] = 0  # 2 layers cannot keep a producer of every layer type before the sharers
        notes.append(f"test_config: num_kv_shared_layers {shared} -> 0 (layers reusing earlier layers' keys and "
                     "values are not exercised by conformance)")  # fmt: skip
    if isinstance(fields.get("first_k_dense_replace"), int) and fields["first_k_dense_replace"] > 1:
        out["first_k_dense_replace"] = 1
    return out, notes


def _shrink_sub_configs(config: Any, fields: dict[str, Any], out: dict[str, Any], notes: list[str]) -> None:
    """A model's own sub-configs of its parts (DBRX's `attn_config` and `ffn_config`), shrunk like the config:
    each override is the sub-config's fields with its sizes shrunk, so a checkpoint's own values stay. A
    `text_config` or any-model-type (`AutoConfig`) sub-config is a whole model, not a part: left alone."""
    from transformers import AutoConfig

    for key, declared in (getattr(type(config), "sub_configs", None) or {}).items():
        sub = getattr(config, key, None)
        if declared is AutoConfig or not key.endswith("_config") or key == "text_config" or sub is None:
            continue
        if not hasattr(sub, "to_dict"):
            continue
        small, sub_notes = shrink(sub, parent=fields)
        if not small:
            continue
        candidate = {**plain_fields(sub), **small}
        try:  # a part rejected shrunk, alone or by its parent (Moshi's depth decoder), stays as the parent passes it
            type(sub)(**candidate)
            type(config)(**{**out, key: candidate})
        except Exception as error:  # any rejection: keep the unshrunk part, say so
            notes.append(f"test_config: {key} kept unshrunk ({type(sub).__name__} rejects it shrunk: {error!s:.120})")
            continue
        out[key] = candidate
        notes.extend(sub_notes)


def _shrink_rotary(fields: dict[str, Any], out: dict[str, Any], notes: list[str]) -> None:
    """rotary_dim keeps its share of the head; a rope scaling type becomes the default rotary."""
    old_head = fields.get("head_dim") or _default_head(fields)
    new_head = out.get("head_dim") or _default_head({**fields, **out})
    rotary = fields.get("rotary_dim")
    if isinstance(rotary, int) and old_head and new_head:
        out["rotary_dim"] = max(2, round(rotary / old_head * new_head / 2) * 2)
    rope = fields.get("rope_parameters")
    types = fields.get("layer_types")
    if rope == {} and isinstance(types, list) and types:  # rotary per layer type, none given (Cohere Compass)
        out["rope_parameters"] = {t: {"rope_type": "default", "rope_theta": 10000.0} for t in dict.fromkeys(types)}
        notes.append(
            "test_config: the config's defaults give no rope_parameters for its layer types: the default rotary "
            "(theta 10000) is given to each in the tiny model"
        )
    elif isinstance(rope, dict) and rope.get("rope_type") not in (None, "default"):
        out["rope_parameters"] = {**rope, "rope_type": "default"}  # other keys stay: attention may read them
        notes.append(
            f"test_config: rope scaling '{rope['rope_type']}' replaced by the default rotary in the tiny model "
            "(its scaling is not exercised by conformance)"
        )


# latent attention (MLA) widths, each distinct: query/key heads nope 8 + rope 8 = D_HEAD, values 12
_LATENT = {"qk_nope_head_dim": 8, "qk_rope_head_dim": 8, "v_head_dim": 12, "kv_lora_rank": 24, "q_lora_rank": 40}


def _shrink_latent(fields: dict[str, Any], out: dict[str, Any]) -> None:
    """Latent attention (DeepSeek V2/V3 and kin): its widths shrink together. `qk_head_dim` is nope + rope;
    a `head_dim` that held the rope width (DeepSeek V3 points it at `qk_rope_head_dim` for its rotary
    module) keeps holding it; an indexer (DeepSeek V3.2) keeps a rope part inside its own heads."""
    if not isinstance(fields.get("qk_rope_head_dim"), int):
        return
    for key, value in _LATENT.items():
        if isinstance(fields.get(key), int) and not isinstance(fields.get(key), bool):
            out[key] = value
    nope, rope = out.get("qk_nope_head_dim", 0), out["qk_rope_head_dim"]
    if isinstance(fields.get("qk_head_dim"), int):
        out["qk_head_dim"] = nope + rope
    head = fields.get("head_dim")
    if isinstance(head, int) and head == fields["qk_rope_head_dim"]:
        out["head_dim"] = rope
    elif isinstance(head, int) and head == fields.get("qk_nope_head_dim", 0) + fields["qk_rope_head_dim"]:
        out["head_dim"] = nope + rope
    if isinstance(fields.get("index_head_dim"), int):
        out["index_head_dim"] = 2 * rope
    if isinstance(fields.get("index_n_heads"), int):
        out["index_n_heads"] = 2
    if isinstance(fields.get("index_topk"), int):
        out["index_topk"] = WINDOW + 1  # shorter than the test sequences, so the indexer's top-k selects


def _default_head(fields: dict[str, Any]) -> int | None:
    d = next((fields[k] for k in ("hidden_size", "n_embd", "d_model") if isinstance(fields.get(k), int)), None)
    h = next(
        (fields[k] for k in ("num_attention_heads", "n_head", "num_heads") if isinstance(fields.get(k), int)), None
    )
    return d // h if d and h else None


def tiny_overrides(config: Any, defaults: Any) -> dict[str, Any]:
    """`test_config` for a tiny twin of `config`: its own values that differ from the class defaults, shrunk."""
    own, base = plain_fields(config), plain_fields(defaults)
    small, _ = shrink(config)
    merged = {**own, **small}
    return {k: v for k, v in merged.items() if k in small or base.get(k, object()) != v}


def complete(config_class: type, base: Any, overrides: dict[str, Any]) -> dict[str, Any]:
    """`overrides` plus every field of `base` that the class, built from the overrides alone, would not
    reproduce (a rope dict a config fills only when built without arguments): the tiny config then differs
    from `base` only where it was shrunk."""
    try:
        rebuilt = plain_fields(config_class(**overrides))
    except Exception:
        return overrides
    own = plain_fields(base)
    missing = {k: v for k, v in own.items() if k not in overrides and k in rebuilt and rebuilt[k] != v}
    return {**overrides, **missing}
