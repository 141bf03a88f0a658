"""Drafting an encoder-decoder model: one observed forward, each stack drafted with the decoder-only observers
where they apply, plus the observers of `observers/encoder_decoder.py` (stacks, cross attention, per-stack
embeddings and positions, cross-block norm roles) and `observers/score_bias.py` (T5's buckets).

The tiny config makes the encoder and decoder depths differ (2 and 3) so `n_layers` and `n_encoder_layers`
each name their own config attribute, and gives T5's `d_kv` its own value (12, not d_model // heads).
"""

from __future__ import annotations

from typing import Any

from torch import nn

from .draft import Draft, DraftContext
from .errors import DraftingError
from .observers.attention import observe_attention
from .observers.block import _wire, observe_norms_and_kind
from .observers.calls import observe_scale
from .observers.config_fields import observe_config
from .observers.encoder_decoder import (
    block_param,
    cross_calls,
    mask_param,
    mlp_path,
    observe_cross_block,
    observe_stack_embedding,
    observe_stack_final,
    stack_context,
    stacks,
)
from .observers.layout import observe_final
from .observers.score_bias import observe_score_bias
from .probe import same, tensor_at

_DECODER_LAYERS = ("num_decoder_layers", "decoder_layers")
_ENCODER_LAYERS = ("num_layers", "encoder_layers", "num_hidden_layers")
_DISTINCT = {"d_kv": 12, "relative_attention_num_buckets": 8, "relative_attention_max_distance": 12}
_ORDER = ("name", "description", "match", "hf_class", "config", "test_config", "variants", "encoder", "embed",
          "pos_embed", "blocks", "score_bias", "block", "ln_final", "unembed", "call")  # fmt: skip
_STACK_ORDER = ("embed", "pos_embed", "blocks", "score_bias", "block", "ln_final")
_BLOCK_ORDER = ("kind", "ln1", "attn", "cross_attn", "ln2", "mlp", "output_index")


def is_encoder_decoder(cls: type[nn.Module], overrides: dict[str, Any]) -> bool:
    from . import build

    return bool(getattr(build.config_from(cls, overrides), "is_encoder_decoder", False))


def distinct_sizes(config_fields: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """Overrides with a decoder one layer deeper than the encoder and T5's sizes distinct from the others."""
    out = dict(overrides)
    decoder = next((k for k in _DECODER_LAYERS if isinstance(config_fields.get(k), int)), None)
    if decoder:
        out[decoder] = int(out.get(decoder, config_fields[decoder])) + 1
    for key, value in _DISTINCT.items():
        if isinstance(config_fields.get(key), int):
            out[key] = value
    if isinstance(out.get("attention_window"), int) and out["attention_window"] % 2:
        out["attention_window"] += 1  # LED's local attention needs an even window (still shorter than the inputs)
    # generation starts the decoder somewhere (T5 sets no start id: HF's T5 starts from the pad id) and is
    # compared with greedy decoding by hand, which forced first/last tokens would not be
    if config_fields.get("decoder_start_token_id") is None:
        out["decoder_start_token_id"] = out.get("pad_token_id", config_fields.get("pad_token_id")) or 0
    for key in ("forced_eos_token_id", "forced_bos_token_id"):
        if config_fields.get(key) is not None:
            out[key] = None
    return out


def nested_shrunk(config_fields: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """Sub-configs held as dicts (T5Gemma's `encoder` and `decoder`) shrunk like a top-level config."""
    from types import SimpleNamespace

    from .shrink import shrink

    out = dict(overrides)
    for key, value in config_fields.items():
        if isinstance(value, dict) and key in ("encoder", "decoder", "text_config"):
            small, _ = shrink(SimpleNamespace(to_dict=lambda value=value: value))
            if small:
                out[key] = {**value, **small}
    return out


def _refuse_large(cls: type[nn.Module], overrides: dict[str, Any], limit: int = 20_000_000) -> None:
    """Count the tiny model's parameters on the meta device before allocating it: a size the shrink did not
    reach (a sub-config it does not know) is a drafting failure, not gigabytes allocated."""
    import torch

    from . import build

    config = build.config_from(cls, overrides)
    try:
        with torch.device("meta"):
            count = sum(p.numel() for p in cls(config).parameters())
    except Exception:
        return  # the build step names what fails
    if count > limit:
        raise DraftingError("shrink", f"the tiny {cls.__name__} would still have {count:,} parameters")


def draft_encoder_decoder(
    cls: type[nn.Module], overrides: dict[str, Any], notes: list[str], flip: bool = True
) -> Draft:
    """The draft's fields (without name and match: the drafter adds them) for an encoder-decoder; with `flip`,
    each boolean config field named for a scale is flipped and re-observed (`_conditional_scales`)."""
    draft = _draft_once(cls, overrides, notes)
    if flip:
        _conditional_scales(cls, overrides, notes, draft)
    return draft


def _conditional_scales(cls: type[nn.Module], overrides: dict[str, Any], notes: list[str], draft: Draft) -> None:
    """`scale_embedding`, `scale_decoder_outputs`...: a scale the flipped config observes differently becomes a
    conditional expression (`d_model ** 0.5 if scale_embedding else 1.0`) and a variant, so conformance sees
    both branches."""
    from .shrink import plain_fields

    fields = plain_fields(cls.config_class(**draft.fields["test_config"]))
    variants: dict[str, dict[str, Any]] = {}
    for key, value in fields.items():
        if not isinstance(value, bool) or "scale" not in key:
            continue
        try:
            other = _draft_once(cls, {**overrides, key: not value}, [])
        except DraftingError as exc:
            draft.note(f"variants: flipping {key} did not draft ({exc.reason[:80]})")
            continue
        for gap in other.gaps:  # what the flipped branch cannot say, the variant cannot pass: name it
            if gap not in draft.gaps:
                draft.gap(gap.item, f"with {key}={not value}: {gap.detail}")
        changed = False
        model_scale = draft.fields["config"].get("embed_scale", 1.0)  # this branch's, before it turns conditional
        for where, field, default in (("config", "embed_scale", 1.0), ("unembed", "pre_scale", None)):
            ours, theirs = draft.fields[where].get(field, default), other.fields[where].get(field, default)
            if ours != theirs:
                true, false = (ours, theirs) if value else (theirs, ours)
                draft.fields[where][field] = f"{true} if {key} else {false}"
                changed = True
        for stack in (draft.fields["embed"], draft.fields["encoder"]["embed"]):
            flipped = other.fields["embed"] if stack is draft.fields["embed"] else other.fields["encoder"]["embed"]
            if flipped.get("scale_at") == "forward":  # the module returns raw rows in both branches
                stack["scale_at"] = "forward"
            if "scale" in stack or "scale" in flipped:  # a stack's own scale: each branch's, else the model's
                mine = stack.get("scale", model_scale)
                its = flipped.get("scale", other.fields["config"].get("embed_scale", 1.0))
                true, false = (mine, its) if value else (its, mine)
                stack["scale"] = true if true == false else f"{true} if {key} else {false}"
                changed = True
        if changed:
            variants[f"{key}_{str(not value).lower()}"] = {key: not value}
    if variants:
        fields_out = draft.fields
        ordered = {}
        for k, v in fields_out.items():
            ordered[k] = v
            if k == "test_config":
                ordered["variants"] = variants
        draft.fields = ordered


def _draft_once(cls: type[nn.Module], overrides: dict[str, Any], notes: list[str]) -> Draft:
    from .drafter import _observe
    from .shrink import plain_fields

    overrides = nested_shrunk(plain_fields(cls.config_class(**overrides)), overrides)
    overrides = distinct_sizes(plain_fields(cls.config_class(**overrides)), overrides)
    _refuse_large(cls, overrides)
    config, obs = _observe(cls, overrides)
    if "decoder_input_ids" not in obs.inputs:
        raise DraftingError("observe", "an encoder-decoder forward was not given decoder_input_ids")
    ctx = DraftContext(cls, config, obs, overrides, Draft(notes=list(notes)))
    nested = [k for k, v in plain_fields(config).items() if isinstance(v, dict) and k in ("encoder", "decoder")]
    if nested:
        ctx.draft.gap("nested sub-configs", f"sizes live in the config's {nested} sub-configs; config: reads the top")
    encoder_blocks, decoder_blocks = stacks(ctx)
    enc = _stack(ctx, encoder_blocks, obs.inputs["input_ids"], decoder=False)
    dec = _stack(ctx, decoder_blocks, obs.inputs["decoder_input_ids"], decoder=True)
    encoder_out = _hidden(obs.first(obs.name(ctx.model.get_encoder())).output)
    final = observe_stack_final(enc, encoder_out)
    if final:
        enc.draft.fields["ln_final"] = final
    observe_final(dec)  # the decoder's final norm, the unembedding and what follows it
    observe_config(dec)
    _config(ctx, enc, dec)
    _call(ctx, enc, dec, encoder_out)
    fields = {"config": dec.draft.fields.pop("config"), "test_config": dict(overrides)}
    fields["encoder"] = {k: enc.draft.fields[k] for k in _STACK_ORDER if k in enc.draft.fields}
    fields.update(dec.draft.fields)
    for stack in (fields, fields["encoder"]):
        stack["block"] = {k: stack["block"][k] for k in _BLOCK_ORDER if k in stack["block"]}
    draft = ctx.draft
    draft.fields = {k: fields[k] for k in _ORDER if k in fields}
    return draft


def _hidden(output: Any):
    """The encoder's last hidden state (its output object is recorded as a dict)."""
    return output.get("last_hidden_state") if isinstance(output, dict) else tensor_at(output)


def _stack(ctx: DraftContext, blocks: str, ids, decoder: bool) -> DraftContext:
    sub = stack_context(ctx, blocks)
    _same_blocks(sub, blocks)
    observe_attention(sub)
    attention = [sub.found["attn"]]
    cross_spec, cross_path = None, None
    if decoder:
        cross = stack_context(ctx, blocks, attention=cross_calls(sub))
        observe_attention(cross)
        cross_path, cross_spec = cross.found["attn"], cross.draft.fields["block"]["attn"]
        attention.append(cross_path)
    mlp = mlp_path(sub, attention)
    sub.found.update(mlp=mlp, attn_paths=attention)
    spec: dict[str, Any] = {"path": sub.relative(mlp, sub.block) if mlp != sub.block else "."}
    _wire(sub, mlp, spec)
    spec.pop("flat_tokens", None) if not spec.get("flat_tokens") else None
    sub.draft.fields["block"]["mlp"] = spec
    if decoder:
        ln = observe_cross_block(sub, cross_path)
        sub.draft.fields["block"]["cross_attn"] = {"kind": "encoder_output", "attn": cross_spec}
        if ln:
            sub.draft.fields["block"]["cross_attn"]["ln"] = ln
    else:
        observe_norms_and_kind(sub)
        if sub.draft.fields["block"].get("output_index") is None:
            sub.draft.fields["block"].pop("output_index", None)
    embed, pos = observe_stack_embedding(sub, ids)
    sub.draft.fields["embed"] = embed
    if pos:
        sub.draft.fields["pos_embed"] = pos
    bias = observe_score_bias(sub)
    if bias:
        sub.draft.fields["score_bias"] = bias
    observe_scale(sub)
    return sub


def _same_blocks(ctx: DraftContext, blocks: str) -> None:
    """A stack whose blocks are built differently (Switch Transformers: a sparse MLP every other block) is one
    the spec's single block description cannot say."""
    # embeddings aside: T5's first block alone holds the stack's relative-position table (a score bias)
    shapes = [
        sorted((n, type(m).__name__) for n, m in b.named_modules() if not isinstance(m, nn.Embedding))
        for b in ctx.obs.module(blocks)
    ]
    differ = [i for i, shape in enumerate(shapes) if shape != shapes[0]]
    if differ:
        kinds = sorted({type(m).__name__ for i in differ for m in ctx.obs.module(f"{blocks}.{i}").modules()})
        kinds = [k for k in kinds if "Sparse" in k or "MoE" in k or "Moe" in k or "Expert" in k][:2]
        ctx.draft.gap("per-layer structure", f"{blocks} blocks {differ} are built differently from block 0 {kinds}")


def _config(ctx: DraftContext, enc: DraftContext, dec: DraftContext) -> None:
    """What the decoder's config observer cannot see: the encoder's depth and scale, T5's d_kv, and the
    embedding scale (one per model: the stacks must agree)."""
    cfg = dec.draft.fields["config"]
    n_enc = len(ctx.obs.module(enc.blocks))
    name = ctx.attr(n_enc, _ENCODER_LAYERS, ("layer",))
    if name is None or name == cfg.get("n_layers"):
        ctx.draft.gap("config", f"no config attribute gives the encoder's {n_enc} layers apart from the decoder's")
    cfg["n_encoder_layers"] = name or n_enc
    d_kv = ctx.attr(dec.found["d_head"], ("d_kv",))
    if d_kv:
        cfg["d_head"] = d_kv
    for what in ("n_heads", "d_head"):
        if enc.found[what] != dec.found[what]:
            ctx.draft.gap("per-stack sizes", f"{what}: encoder {enc.found[what]}, decoder {dec.found[what]}")
    enc_scale = enc.draft.fields.get("config", {}).get("attn_scale")
    if enc_scale != cfg.get("attn_scale"):
        ctx.draft.gap("per-stack attention scale", f"encoder {enc_scale}, decoder {cfg.get('attn_scale')}")
    enc_embed, dec_embed = enc.found.get("embed_scale", 1.0), dec.found.get("embed_scale", 1.0)
    scale = max(enc_embed, dec_embed, key=lambda s: abs(s - 1.0))  # the model's scale: a stack that scales
    if abs(scale - 1.0) > 1e-6:
        cfg["embed_scale"] = _scale_expression(ctx, dec, scale)
    for stack, own in ((enc, enc_embed), (dec, dec_embed)):  # a stack scaling otherwise says so (BlenderbotSmall)
        if abs(own - scale) > 1e-4 * max(abs(scale), 1.0):  # observed ratios: float noise is no difference
            stack.draft.fields["embed"]["scale"] = _scale_expression(ctx, dec, own)


def _scale_expression(ctx: DraftContext, dec: DraftContext, scale: float) -> str | float:
    """An embedding scale as the config says it: `d_model ** 0.5`, a config field holding it, or the literal
    (1.0 for a stack that does not scale; a gap for another number no field holds)."""
    if abs(scale - 1.0) <= 1e-6:
        return 1.0
    width = ctx.obs.input(dec.block).shape[-1]
    d_model = ctx.attr(width, ("d_model", "hidden_size"))
    if d_model and abs(scale - width**0.5) < 1e-4 * scale:
        return f"{d_model} ** 0.5"
    found = ctx.attr(scale, keyword=("scale", "mult"))
    if found is None:
        ctx.draft.gap("embedding multiplier", f"embeddings scaled by {scale:.4g}, no config field holds it")
    return found or scale


def _call(ctx: DraftContext, enc: DraftContext, dec: DraftContext, encoder_out) -> None:
    """Keywords for calling a block or attention module alone: the mask (named in the signatures: the tiny
    forward has no padding to observe), the score bias a later block is handed, the encoder output."""
    call: dict[str, Any] = {}
    obs = ctx.obs
    block = obs.module(dec.block)
    attn = obs.module(dec.found["attn"])
    block_mask, attn_mask = mask_param(block), mask_param(attn)
    if block_mask and block_mask != "attention_mask":
        call["mask_kwarg"] = block_mask
    if attn_mask and attn_mask != (block_mask or "attention_mask"):
        call["attention_mask_kwarg"] = attn_mask
    biases = [stack.draft.fields.get("score_bias") for stack in (enc, dec)]
    if any(bias is not None and not bias.get("per_layer") for bias in biases):  # handed on from block 0 (T5)
        later = f"{dec.blocks}.1" if len(obs.module(dec.blocks)) > 1 else dec.block
        h = dec.found["n_heads"]
        name = block_param(obs.module(later), obs.first(later), lambda v: v.dim() == 4 and v.shape[1] == h)
        if name is None:
            ctx.draft.gap("score bias", "no block parameter receives the score bias a later block is handed")
        else:
            call["position_bias_kwarg"] = name
    cross = dec.draft.fields["block"]["cross_attn"]
    states = block_param(block, obs.first(dec.block), lambda v: same(v, encoder_out))
    if states is None:
        ctx.draft.gap("cross attention", f"{dec.block} is not handed the encoder output")
    elif states != "encoder_hidden_states":
        cross["encoder_states_kwarg"] = states
    if call:
        dec.draft.fields["call"] = call
