"""Observers of how blocks and attention are called: the keyword arguments the block receives, the
attention scale, and the sliding window each layer passes to attention."""

from __future__ import annotations

from typing import Any

from ..draft import DraftContext
from ..shrink import plain_fields
from .modules import under


def observe_call(ctx: DraftContext) -> None:
    call_spec: dict[str, Any] = ctx.draft.fields.setdefault("call", {})
    kwargs = ctx.obs.first(ctx.block).kwargs
    for key in ("attention_mask", "mask", "causal_mask"):
        if key in kwargs:
            if key != "attention_mask":
                call_spec["mask_kwarg"] = key
            break
    if "position_ids" in kwargs and "position_embeddings_kwarg" in call_spec:
        call_spec["position_ids_kwarg"] = "position_ids"
    if "hidden_states" not in kwargs and not ctx.obs.first(ctx.block).args:
        tensor_kw = next((k for k, v in kwargs.items() if hasattr(v, "dim") and v.is_floating_point()), None)
        if tensor_kw:
            ctx.draft.fields["block"]["hidden_states_kwarg"] = tensor_kw
    elif ctx.obs.first(ctx.block).args:  # passed by position: the first parameter names it (OpenAI GPT's, CTRL's `x`)
        first = _first_parameter(ctx.obs.module(ctx.block))
        if first not in (None, "hidden_states"):
            ctx.draft.fields["block"]["hidden_states_kwarg"] = first
    if not call_spec:
        ctx.draft.fields.pop("call")


def _first_parameter(module: Any) -> str | None:
    """The name of the first parameter of `module.forward` (after self), or None when it takes none by name."""
    import inspect

    from ...bridge.spec_walker import forward_parameters

    try:
        parameters = forward_parameters(module)
    except (TypeError, ValueError):
        return None
    named = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    return parameters[0].name if parameters and parameters[0].kind in named else None


def observe_scale(ctx: DraftContext) -> None:
    call = ctx.found["attn_call"]
    d = ctx.found["d_head"]
    scaling = call.kwargs.get("scaling")
    cfg = ctx.draft.fields.setdefault("config", {})
    if ctx.found.get("q_prescaled"):
        ctx.draft.fields["block"]["attn"]["q_prescaled"] = True
        ctx.draft.note("block.attn.q_prescaled: HF scaled the queries before attention (observed); hook_q is unscaled")
        return
    if scaling is None or abs(float(scaling) - d**-0.5) < 1e-9:
        return
    scaling = float(scaling)
    root = ctx.attr(scaling**-2, keyword=("scal", "query_pre_attn"))
    direct = ctx.attr(scaling, keyword=("mult", "scal"))
    if root:
        cfg["attn_scale"] = f"{root} ** 0.5"
    elif direct:
        cfg["attn_scale"] = f"1 / {direct}"
    elif abs(scaling - 1.0) < 1e-9:
        cfg["attn_scale"] = 1.0
        ctx.draft.note("config.attn_scale: HF passed scaling 1 (unscaled scores); check which flag controls it")
    else:
        ctx.draft.gap("attention scale", f"scaling {scaling:.4g} is not d_head**-0.5 nor any config field")


def observe_window(ctx: DraftContext) -> None:
    """Per-layer sliding windows passed to attention, written as an expression over `layer_types`."""
    obs = ctx.obs
    windows = []
    for i in range(len(obs.module(ctx.blocks))):
        calls = [c for c in obs.attention if under(obs.name(c.module), f"{ctx.blocks}.{i}")]
        windows.append(calls[0].kwargs.get("sliding_window") if calls else None)
    if all(w is None for w in windows):
        return
    value = next(w for w in windows if w is not None)
    cfg = ctx.draft.fields.setdefault("config", {})
    name = ctx.attr(value, ("sliding_window",), ("window",))
    if name is None:
        ctx.draft.gap("sliding window", f"window {value} is in no config field")
        return
    cfg["sliding_window"] = name
    call_spec = ctx.draft.fields.setdefault("call", {})
    types = plain_fields(ctx.config).get("layer_types")
    if all(w is not None for w in windows):
        call_spec["window"] = name
        ctx.draft.note("call.window: every layer of the tiny model is windowed; check layers of other configs")
    elif isinstance(types, list) and len(types) == len(windows):
        kinds = {types[i] for i, w in enumerate(windows) if w is not None}
        if len(kinds) == 1 and not any(types[i] in kinds for i, w in enumerate(windows) if w is None):
            call_spec["window"] = f"{name} if layer_types[layer] == '{kinds.pop()}' else None"
            return
        ctx.draft.gap("sliding window", "windowed layers do not follow layer_types")
    else:
        ctx.draft.gap("sliding window", f"windows {windows} follow no per-layer config list")
