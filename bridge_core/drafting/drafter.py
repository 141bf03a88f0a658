"""Drafting a spec by observation: build a tiny model, watch one forward, let each observer write its part.

`draft_model_type("mistral")` drafts from transformers' default config for a model type;
`draft_config(config)` from a checkpoint's own config (a tiny twin of it). Both return a `Draft` whose
fields follow the schema of `bridge_core/spec/schema.py`, with a `# NOTE:` for every guess and a `Gap`
for everything the vocabulary cannot say yet.
"""

from __future__ import annotations

import re
from typing import Any

from torch import nn

from ..conformance.runner import perturb
from . import build
from .draft import Draft, DraftContext
from .errors import DraftingError, OutOfScopeError
from .observers import OBSERVERS
from .probe import observe
from .scope import borrowed_kv_reason, structure_gaps
from .shrink import complete, shrink, tiny_overrides

_ORDER = ("name", "description", "match", "hf_class", "config", "test_config", "variants", "embed", "pos_embed",
          "blocks", "block", "ln_final", "unembed", "call")  # fmt: skip
_BLOCK_ORDER = ("kind", "ln1", "attn", "ln2", "mlp", "ln1_post", "ln2_post", "output_index", "hidden_states_kwarg")
# booleans whose name says they may change how a block is wired: flipped to see whether the kind changes
_STRUCTURAL_BOOL = re.compile(r"parallel|norm_before|post_norm|pre_norm|sandwich")


def draft_model_type(model_type: str) -> Draft:
    """A draft for a model type, from its config class's defaults shrunk to a tiny model."""
    cls = build.model_class_for(model_type)
    reason = borrowed_kv_reason(cls)  # read from the class: an assistant's default config may not validate
    if reason:
        raise OutOfScopeError(reason)
    base = build.default_config(cls, model_type)
    reason = build.out_of_scope(cls, base)
    if reason:
        raise OutOfScopeError(reason)
    overrides, notes = shrink(base)
    try:
        return _draft(cls, complete(cls.config_class, base, overrides), notes, model_type)
    except OutOfScopeError:
        raise
    except DraftingError as exc:
        if exc.step in ("shrink", "build", "forward") and not exc.gaps:
            exc.gaps = structure_gaps(base)  # drafting stopped before observing: what the config says instead
        if exc.step == "build" and not build.builds_on_meta(cls, base):
            unset = [n for n in getattr(exc, "reads", []) if _unset(base, n)]
            what = f"leaving {', '.join(unset)} unset" if unset else "a checkpoint sets what it leaves unset"
            raise DraftingError(  # the finding first: the coverage table shows a row's first 160 characters
                "build",
                f"HF's default {cls.config_class.__name__} fails too ({what}): {exc.reason}",
                exc.gaps,
            ) from None
        raise


def _unset(config: Any, name: str) -> bool:
    """Whether `config` (or one of its sub-configs, DBRX's attn_config) leaves `name` unset."""
    subs = [getattr(config, k, None) for k in (getattr(type(config), "sub_configs", None) or {})]
    holders = [c for c in (config, *subs) if c is not None and hasattr(c, "to_dict")]
    return any(getattr(c, name, None) is None for c in holders)


def draft_config(config: Any, cls: type[nn.Module] | None = None) -> Draft:
    """A draft for a checkpoint's config: a tiny twin keeps the config's own choices, shrunk."""
    model_type = config.model_type
    cls = cls or build.model_class_for(model_type)
    reason = build.out_of_scope(cls, config)
    if reason:
        raise OutOfScopeError(reason)
    defaults = build.default_config(cls, model_type)
    overrides = tiny_overrides(config, defaults)
    _, notes = shrink(config)
    return _draft(cls, overrides, notes, model_type)


def _observe(cls: type[nn.Module], overrides: dict[str, Any]) -> tuple[Any, Any]:
    config = build.config_from(cls, overrides)
    model = build.build(cls, config)
    perturb(model, 0)  # norms initialized to ones/zeros compute alike: random ones tell them apart
    inputs = build.example_inputs(model)
    build.forward(model, inputs)  # a test configuration HF itself runs, before any probe is attached
    return config, observe(model, inputs)


def _run_observers(cls, overrides, notes, model_type) -> DraftContext:
    if getattr(cls.config_class, "is_encoder_decoder", False) or "ForConditionalGeneration" in cls.__name__:
        raise DraftingError(
            "observe", f"{cls.__name__} is a conditional-generation class whose config is not encoder-decoder"
        ) from None
    config, obs = _observe(cls, overrides)
    draft = Draft(notes=list(notes))
    ctx = DraftContext(cls, config, obs, overrides, draft)
    for observer in OBSERVERS:
        try:
            observer(ctx)
        except (DraftingError, OutOfScopeError):
            raise
        except Exception as exc:  # an observer that could not read this model: a drafting failure, named
            raise DraftingError("observe", f"{observer.__name__}: {type(exc).__name__}: {exc}") from exc
    return ctx


def _draft(cls, overrides, notes, model_type) -> Draft:
    from .encoder_decoder import draft_encoder_decoder, is_encoder_decoder

    if is_encoder_decoder(cls, overrides):
        return _named(draft_encoder_decoder(cls, overrides, notes), cls, model_type)
    ctx = _run_observers(cls, overrides, notes, model_type)
    draft = ctx.draft
    fields = draft.fields
    fields["name"] = model_type
    fields["description"] = f"Drafted by observation from a tiny {cls.__name__}."
    fields["match"] = {"architectures": [cls.__name__], "model_type": [model_type]}
    fields["hf_class"] = cls.__name__
    fields["test_config"] = dict(overrides)
    _variants(ctx, cls, overrides, notes, model_type)
    fields["block"] = {k: fields["block"][k] for k in _BLOCK_ORDER if k in fields["block"]}
    draft.fields = {k: fields[k] for k in _ORDER if k in fields}
    return draft


def _named(draft: Draft, cls, model_type: str) -> Draft:
    head = {
        "name": model_type,
        "description": f"Drafted by observation from a tiny {cls.__name__}.",
        "match": {"architectures": [cls.__name__], "model_type": [model_type]},
        "hf_class": cls.__name__,
    }
    draft.fields = {**head, **draft.fields}
    return draft


def _mark_optional(fields: dict[str, Any], other: dict[str, Any]) -> None:
    """A norm the flipped config does not build (OPT's final norm without do_layer_norm_before) is optional."""
    if "ln_final" in fields and "ln_final" not in other:
        fields["ln_final"]["optional"] = True
    for role in ("ln1", "ln2", "ln1_post", "ln2_post"):
        if role in fields["block"] and role not in other["block"]:
            fields["block"][role]["optional"] = True


def _variants(ctx: DraftContext, cls, overrides, notes, model_type) -> None:
    """For each structural boolean of the config: draft the flipped config; a changed block kind becomes a
    conditional `kind` and a variant, so conformance sees both branches."""
    from .shrink import plain_fields

    variants: dict[str, dict[str, Any]] = dict(ctx.found.get("variants", {}))
    for key, value in plain_fields(ctx.config).items():
        if not isinstance(value, bool) or not _STRUCTURAL_BOOL.search(key):
            continue
        try:
            other = _run_observers(cls, {**overrides, key: not value}, notes, model_type)
        except DraftingError as exc:
            ctx.draft.note(f"variants: flipping {key} did not draft ({exc.reason[:80]})")
            continue
        _mark_optional(ctx.draft.fields, other.draft.fields)
        for gap in other.draft.gaps:
            ctx.draft.gap(gap.item, f"with {key}={not value}: {gap.detail}")
        kind, flipped = ctx.found["block_kind"], other.found["block_kind"]
        if kind != flipped:
            true, false = (kind, flipped) if value else (flipped, kind)
            ctx.draft.fields["block"]["kind"] = f"'{true}' if {key} else '{false}'"
            variants[f"{key}_{str(not value).lower()}"] = {key: not value}
    for name, delta in list(variants.items()):  # a variant an observer asked for: is it drawn the same way?
        try:
            other = _run_observers(cls, {**overrides, **delta}, notes, model_type)
        except DraftingError as exc:
            ctx.draft.gap("variant", f"{name} ({delta}) did not draft: {exc.reason[:100]}")
            continue
        attn, other_attn = ctx.draft.fields["block"]["attn"], other.draft.fields["block"]["attn"]
        _conditional_qkv_order(attn, other_attn, delta)
        for part in ("qkv", "path", "o", "layout"):
            ours, theirs = attn.get(part), other_attn.get(part)
            if ours != theirs:
                ctx.draft.gap("conditional layout", f"block.attn.{part} is {ours} here but {theirs} with {delta}")
    kv = next((k for k in ("num_key_value_heads", "n_kv_heads", "num_kv_heads") if k in overrides), None)
    if ctx.found.get("latent"):
        pass  # latent attention expands its keys to every head: no kv-head variant
    elif kv and ctx.found["n_kv_heads"] not in (1, ctx.found["n_heads"]):
        variants["mha"] = {kv: ctx.found["n_heads"]}  # one kv head per query head: n_kv_heads both ways
    elif kv and ctx.found["n_kv_heads"] == ctx.found["n_heads"]:
        variants["gqa"] = {kv: 2}
    if variants:
        ctx.draft.fields["variants"] = variants


def _conditional_qkv_order(attn: dict, other: dict, delta: dict) -> None:
    """A fused projection laid out by a boolean config field (GPTBigCode's c_attn: [q | k | v] with
    multi_query, per-head [q k v] without) becomes an expression giving the order on both settings."""
    ours, theirs = attn.get("qkv", {}), other.get("qkv", {})
    if len(delta) != 1 or ours.get("kind") != "fused" or theirs.get("kind") != "fused":
        return
    (key, flipped), order, other_order = *delta.items(), ours.get("order", "qkv"), theirs.get("order", "qkv")
    if not isinstance(flipped, bool) or order == other_order or {**ours, "order": 0} != {**theirs, "order": 0}:
        return
    true, false = (other_order, order) if flipped else (order, other_order)
    ours["order"] = f"'{true}' if {key} else '{false}'"
    theirs["order"] = ours["order"]  # the same expression on both settings: no conditional layout left
