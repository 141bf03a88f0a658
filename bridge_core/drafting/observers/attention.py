"""Observers of self-attention, from the probe's calls: the module, q/k/v and output projections,
q/k norms and their layout, rotation (rotary_dim, pairing), pre-scaled queries, softcap, window, scale."""

from __future__ import annotations

import inspect
import sys

import torch

from ..draft import DraftContext
from ..probe import AttentionCall, same
from .latent import is_latent, observe_latent
from .modules import is_linear, is_norm, layout, norm_kind, under
from .reimplemented import LIMITS, separate_output_biases


def _call(ctx: DraftContext) -> AttentionCall:
    return next(c for c in ctx.obs.attention if under(ctx.obs.name(c.module), ctx.block))


def _pos0(tensor: torch.Tensor, heads: int, d: int) -> torch.Tensor | None:
    """Position 0 of a projection or norm output as [batch, heads, d] ([b,s,h*d], [b,s,h,d] or [b,h,s,d])."""
    if tensor.dim() == 3 and tensor.shape[-1] == heads * d:
        return tensor[:, 0].reshape(tensor.shape[0], heads, d)
    if tensor.dim() == 4 and tensor.shape[2] == heads and tensor.shape[-1] == d:
        return tensor[:, 0]
    if tensor.dim() == 4 and tensor.shape[1] == heads and tensor.shape[-1] == d:
        return tensor[:, :, 0]
    return None


def observe_attention(ctx: DraftContext) -> None:
    obs = ctx.obs
    call = _call(ctx)
    path = obs.name(call.module)
    ctx.found["attn"] = path
    b, h, s, d = call.query.shape
    kv = call.key.shape[1]
    ctx.found.update(n_heads=h, n_kv_heads=kv, d_head=d, attn_call=call)
    linears = [(n, m) for n, m in call.module.named_modules() if is_linear(m)]
    outs = {n: obs.output(f"{path}.{n}") for n, _ in linears}
    spec: dict = {"path": ctx.relative(path, ctx.block)}
    dv = call.value.shape[-1]  # value heads may be narrower than query/key heads (MiMo-V2-Flash, MLA)
    v_flat = call.value.transpose(1, 2).reshape(b, -1, kv * dv)  # cross attention: keys' own length
    v = next((n for n, o in outs.items() if same(o, v_flat)), None) if dv == d else None
    latent = dv != d and is_latent(call) and observe_latent(ctx, path, spec)  # MLA: observers/latent.py
    if dv != d and not is_latent(call):  # separate or fused projections have one head width (cfg.d_head)
        ctx.draft.gap("value head width", f"values have {dv} dims per head, queries and keys {d}")
    if dv != d and not latent:
        spec["layout"], spec["qkv"] = "linear", {"kind": "separate", "q": "FILL_ME", "k": "FILL_ME", "v": "FILL_ME"}
    q0, k0 = call.query[:, :, 0], call.key[:, :, 0]
    if v is not None:
        q = _projection_for(ctx, path, outs, q0, h, d, "q", exclude=v)
        k = _projection_for(ctx, path, outs, k0, kv, d, "k", exclude=v, also=q)
        spec["layout"] = layout(call.module.get_submodule(v))
        if q is None or k is None:
            ctx.draft.gap("q/k projection", "no projection (or norm of one) reproduces the queries/keys at position 0")
            spec["qkv"] = {"kind": "separate", "q": q or "FILL_ME", "k": k or "FILL_ME", "v": v}
        else:
            spec["qkv"] = {"kind": "separate", "q": q, "k": k, "v": v}
    elif dv == d:
        fused = _fused(call, outs, h, kv, d) or _grouped(call, outs, h, kv, d)
        if fused is None:
            ctx.draft.gap("q/k/v projections", f"no projection in {path} yields the values HF attends over")
            spec["layout"], spec["qkv"] = "linear", {"kind": "separate", "q": "FILL_ME", "k": "FILL_ME", "v": "FILL_ME"}
        else:
            name, order, groups = fused
            spec["layout"] = layout(call.module.get_submodule(name))
            spec["qkv"] = {"kind": "fused", "path": name, "order": order}
            if groups is not None:
                spec["qkv"]["groups"] = groups
                ctx.draft.note(f"block.attn.qkv: {name} holds {groups} groups of [{' | '.join(order[8:])}]")
            ctx.found["fused_q0"] = _fused_q(outs[name], order, h, kv, d, groups)
            _fused_norms(ctx, path, call, ctx.found["fused_q0"], q0, k0)
    o_in = call.output.reshape(b, s, h * dv)
    o = next((n for n, _ in linears if same(obs.input(f"{path}.{n}"), o_in)), None)
    gated = None if o is not None else _out_gate(ctx, path, o_in, linears, outs, h)
    if gated is not None:  # AFMoE: o_proj reads the attention output times sigmoid(gate_proj(x))
        o, spec["out_gate"] = gated[0], {"path": gated[1], "act": gated[2]}
    named = any(g.item == "attention output gate" for g in ctx.draft.gaps)
    sub = None if o is not None or named else _sub_norm(ctx, path, o_in, [n for n, _ in linears])
    if sub is not None:  # BitNet: attn_sub_norm between the attention output and o_proj (block.attn.o_norm)
        o = sub[1]
        module = obs.module(f"{path}.{sub[0]}")
        kind = norm_kind(module, o_in, obs.output(f"{path}.{sub[0]}"))
        if kind is None:
            ctx.draft.gap("norm kind", f"{path}.{sub[0]} (before the output projection) is no registered kind")
        else:
            spec["o_norm"] = {"path": sub[0], "kind": kind}
    elif o is None and not named:
        ctx.draft.gap("output projection", f"no projection in {path} reads the attention output")
    spec["o"] = o or "FILL_ME"
    ctx.found["o"] = f"{path}.{o}" if o else None
    if ctx.found.get("reimplement"):
        spec["implementation"] = "reimplement"
        if _mask_seen(ctx, call) == "its own causal mask":
            spec["own_causal_mask"] = True
        ctx.draft.note(
            "block.attn.implementation: reimplement; q/k/v, scale and mask were found by recomputing the module's "
            f"own attention (scale {call.kwargs['scaling']:.4g}, {_mask_seen(ctx, call)}); {LIMITS}"
        )
        separate_output_biases(ctx, ctx.relative(path, ctx.block))
    spec["softmax_dtype"] = _softmax_dtype(call.module)
    ctx.draft.note(f"block.attn.softmax_dtype: '{spec['softmax_dtype']}' read from the eager attention's source")
    _norms(ctx, path, spec, h, kv, d)
    if not latent:  # latent attention's rope part was placed by observe_latent
        _rotation(ctx, path, spec, call)
    if call.kwargs.get("softcap") is not None:
        name = ctx.attr(call.kwargs["softcap"], keyword=("softcap",))
        spec["softcap"] = name or call.kwargs["softcap"]
        ctx.draft.fields.setdefault("config", {})["attn_softcap"] = spec["softcap"]
    _sinks(ctx, call, spec)
    _computed_mask(ctx, call)
    ctx.draft.fields.setdefault("block", {})["attn"] = spec


def _mask_seen(ctx: DraftContext, call: AttentionCall) -> str:
    handed = ctx.obs.first(ctx.obs.name(call.module)).kwargs.values()
    return "the mask it is handed" if any(m is call.mask for m in handed) else "its own causal mask"


def _computed_mask(ctx: DraftContext, call: AttentionCall) -> None:
    """An additive mask holding values besides 0 and the blocked value: a score bias the module computed into the
    mask (Doge's dynamic mask from the values), which no spec field describes."""
    mask = call.mask
    if mask is None or not mask.is_floating_point():
        return
    blocked = mask <= torch.finfo(mask.dtype).min / 2
    if bool((mask[~blocked] != 0).any()):
        ctx.draft.gap("score bias in the mask", f"{ctx.obs.name(call.module)} passes a mask with computed values")


def _sinks(ctx: DraftContext, call: AttentionCall, spec: dict) -> None:
    """Per-head sink logits HF passes its attention function (`s_aux`): the module's parameter holding them."""
    sinks = call.kwargs.get("s_aux")
    if not isinstance(sinks, torch.Tensor):
        return
    own = call.module.named_parameters(recurse=False)
    name = next((n for n, p in own if p.shape == sinks.shape and same(p.detach(), sinks.detach())), None)
    if name is None:
        ctx.draft.gap(
            "attention sinks", "HF passes sink logits (s_aux) that no parameter of the attention module holds"
        )
    else:
        spec["sinks"] = name


def _projection_for(ctx, path, outs, target, heads, d, what, exclude=None, also=None) -> str | None:
    """The projection whose output, or a norm of it, is `target` ([b, heads, d]) at position 0."""
    obs = ctx.obs
    for name, out in outs.items():
        if name in (exclude, also) or out is None:
            continue
        flat = _pos0(out, heads, d)
        if flat is None:
            continue
        if same(flat, target):
            return name
        ratio = float((flat * target).sum() / (flat * flat).sum()) if flat.abs().sum() else 0.0
        if what == "q" and abs(ratio - 1.0) > 1e-3 and same(flat * ratio, target):
            ctx.found["q_prescaled"] = True
            return name
        for norm_name, norm in obs.module(path).named_modules():
            full = f"{path}.{norm_name}"
            seen = obs.input(full)
            if is_norm(norm) and seen is not None and seen.numel() == out.numel() and same(_pos0(seen, heads, d), flat):
                normed = _pos0(obs.output(full), heads, d)
                if normed is not None and same(normed, target):
                    ctx.found[f"{what}_norm"] = (norm_name, full)
                    return name
    return None


def _fused_norms(ctx: DraftContext, path: str, call: AttentionCall, fused_q, q0, k0) -> None:
    """Norms on a fused projection's queries or keys: the norm whose output is them at position 0."""
    obs, h, kv = ctx.obs, call.query.shape[1], call.key.shape[1]
    d = call.query.shape[-1]
    for norm_name, norm in obs.module(path).named_modules():
        full = f"{path}.{norm_name}"
        out = obs.output(full) if is_norm(norm) else None
        if out is None:
            continue
        for what, heads, target in (("q", h, q0), ("k", kv, k0)):
            normed = _pos0(out, heads, d)
            if normed is not None and same(normed, target) and not same(_pos0(obs.input(full), heads, d), target):
                ctx.found.setdefault(f"{what}_norm", (norm_name, full))
    if ctx.found.get("q_norm"):
        ctx.found["fused_q0"] = obs.output(ctx.found["q_norm"][1])


def _fused(call: AttentionCall, outs, h, kv, d) -> tuple[str, str, None] | None:
    value = call.value.transpose(1, 2)  # [b, s, kv, d]
    b, s = value.shape[:2]
    for name, out in outs.items():
        if out is None or out.shape[-1] != (h + 2 * kv) * d:
            continue
        if same(out[..., (h + kv) * d :], value.reshape(b, s, kv * d)):
            return name, "qkv", None
        if h == kv and same(out.reshape(b, s, h, 3, d)[..., 2, :], value):
            return name, "per_head_interleaved", None
    return None


def _out_gate(ctx: DraftContext, path: str, o_in: torch.Tensor, linears, outs, heads: int):
    """(o, gate, activation): a projection `o` reading the attention output times act(gate's output), the gate as
    wide as the output (per element) or `heads` wide (per head); None if none does."""
    from ...registry import default_registry

    acts = dict(default_registry().plugins.kinds.activations)
    unregistered = {"softplus": torch.nn.functional.softplus}  # Laguna: tried only to name the gap
    acts.update({n: f for n, f in unregistered.items() if n not in acts})
    for o_name, _ in linears:
        seen = ctx.obs.input(f"{path}.{o_name}")
        if seen is None or seen.shape != o_in.shape:
            continue
        for gate, out in outs.items():
            if gate == o_name or out is None or out.shape[-1] not in (o_in.shape[-1], heads):
                continue
            for name in sorted(acts, key=lambda n: n != "sigmoid"):  # sigmoid first: the usual gate
                scale = acts[name](out.float()).to(o_in.dtype)
                if out.shape[-1] == o_in.shape[-1]:
                    gated = o_in * scale
                else:
                    gated = (o_in.unflatten(-1, (heads, -1)) * scale.unsqueeze(-1)).flatten(-2)
                if same(gated, seen) and name in unregistered:
                    per = "per head" if out.shape[-1] == heads else "per element"
                    ctx.draft.gap(
                        "attention output gate",
                        f"{o_name} reads the output times {name}({gate}) {per}; "
                        f"{name} is no registered activation kind",
                    )
                    return None
                if same(gated, seen):
                    return o_name, gate, name
    return None


def _sub_norm(ctx: DraftContext, path: str, x: torch.Tensor, linears: list[str]) -> tuple[str, str] | None:
    """A norm under `path` reading `x` whose output a projection reads: (norm, projection), relative to `path`."""
    obs = ctx.obs
    for name, module in obs.module(path).named_modules():
        if name and is_norm(module) and same(obs.input(f"{path}.{name}"), x):
            out = obs.output(f"{path}.{name}")
            reader = next((n for n in linears if same(obs.input(f"{path}.{n}"), out)), None)
            if reader is not None:
                return name, reader
    return None


def _grouped(call: AttentionCall, outs, h, kv, d) -> tuple[str, str, int] | None:
    """A fused projection holding q, k and v in G groups of three slices in some order (CodeGen: 4 groups of
    [q | v | k]): (path, order `grouped_<parts>`, G), the fewest groups whose q and v slices are HF's."""
    value = call.value.transpose(1, 2)  # [b, s, kv, d]
    b, s = value.shape[:2]
    q0 = call.query[:, :, 0].reshape(b, h * d)  # position 0: rotary is the identity there
    for name, out in outs.items():
        if out is None or h != kv or out.shape[-1] != 3 * h * d:
            continue
        for groups in (g for g in range(2, h * d + 1) if (h * d) % g == 0):  # 1 group is order `qkv`
            parts = out.reshape(b, s, groups, 3, h * d // groups)
            slots = [parts[..., i, :].reshape(b, s, h * d) for i in range(3)]
            v = next((i for i in range(3) if same(slots[i], value.reshape(b, s, h * d))), None)
            q = next((i for i in range(3) if i != v and same(slots[i][:, 0], q0)), None)
            if v is not None and q is not None:
                order = ["k"] * 3
                order[v], order[q] = "v", "q"
                return name, "grouped_" + "".join(order), groups
    return None


def _fused_q(out: torch.Tensor, order: str, h: int, kv: int, d: int, groups: int | None = None) -> torch.Tensor:
    b, s = out.shape[:2]
    if order == "qkv":
        return out[..., : h * d].reshape(b, s, h, d)
    if groups is not None:  # grouped_<parts>: the q slice of every group
        q = order.index("q") - len("grouped_")
        return out.reshape(b, s, groups, 3, -1)[..., q, :].reshape(b, s, h, d)
    return out.reshape(b, s, h, 3, d)[..., 0, :]


def _norms(ctx: DraftContext, path: str, spec: dict, h: int, kv: int, d: int) -> None:
    obs = ctx.obs
    for what, heads in (("q", h), ("k", kv)):
        found = ctx.found.get(f"{what}_norm")
        if not found:
            continue
        name, full = found
        x, y = obs.input(full), obs.output(full)
        kind = norm_kind(obs.module(full), x, y)
        spec[f"{what}_norm"] = {"path": name, "kind": kind or "rmsnorm"}
        if x.dim() == 3:  # over the whole projection, before the head split (OLMo 2)
            spec["qk_norm_layout"] = "flat"
        else:
            spec["qk_norm_layout"] = "bshd" if x.shape[2] == heads and x.shape[1] != heads else "bhsd"


def _heads(ctx: DraftContext, raw: torch.Tensor) -> torch.Tensor:
    """A query projection or q-norm tensor ([b, s, h*d], [b, s, h, d] or [b, h, s, d]) as [b, h, s, d]."""
    h, d = ctx.found["n_heads"], ctx.found["d_head"]
    if raw.dim() == 3:
        raw = raw.reshape(raw.shape[0], raw.shape[1], h, d)
    if raw.shape[1] == h and raw.shape[2] != h:
        raw = raw.transpose(1, 2)
    return raw.transpose(1, 2)  # [b, h, s, d]


def _unrotated(
    ctx: DraftContext, path: str, spec: dict, call: AttentionCall, through_norm: bool = True
) -> torch.Tensor | None:
    """The queries before rotation ([b, h, s, d]): the q norm's (unless `through_norm` is False) or q
    projection's output (scaled back when HF pre-scales them), from the attention module at `path`."""
    q = spec["qkv"].get("q")
    norm = ctx.found.get("q_norm") if through_norm else None
    if norm:
        raw = ctx.obs.output(f"{path}.{norm[0]}")
    elif q and q != "FILL_ME":
        raw = ctx.obs.output(f"{path}.{q}")
    elif path == ctx.found["attn"]:
        raw = ctx.found.get("fused_q0")
    else:
        return None
    if raw is None:
        return None
    raw = _heads(ctx, raw)
    if ctx.found.get("q_prescaled"):
        query = call.query
        raw = raw * float((raw[:, :, 0] * query[:, :, 0]).sum() / (raw[:, :, 0] ** 2).sum())
    return raw


def _before_after(ctx: DraftContext, path: str, spec: dict, call: AttentionCall):
    """The queries before and after rotation ([b, h, s, d]) in the attention module at `path`: the unrotated
    queries and the attended ones, or, where the q norm comes after rotary (HunYuan), the projection's
    output and the q norm's input."""
    if spec.get("qk_norm_at") == "after_rotary":
        norm = ctx.obs.input(f"{path}.{ctx.found['q_norm'][0]}")
        raw = _unrotated(ctx, path, spec, call, through_norm=False)
        return (raw, _heads(ctx, norm)) if raw is not None and norm is not None else (None, None)
    return _unrotated(ctx, path, spec, call), call.query


def _moved(raw: torch.Tensor, query: torch.Tensor) -> torch.Tensor:
    """Which head dims differ between the unrotated and the attended queries at the last position."""
    return ~torch.isclose(raw[:, :, -1].float(), query[:, :, -1].float(), atol=1e-5).all(dim=(0, 1))


def _layer_calls(ctx: DraftContext, spec: dict) -> list[tuple[str, AttentionCall | None]]:
    """Each block's attention module path and its first attention call."""
    rel, out = spec["path"], []
    for i in range(len(ctx.obs.module(ctx.blocks))):
        path = f"{ctx.blocks}.{i}.{rel}" if rel not in ("", ".") else f"{ctx.blocks}.{i}"
        calls = [c for c in ctx.obs.attention if ctx.obs.name(c.module) == path]
        out.append((path, calls[0] if calls else None))
    return out


def _norm_after_rotary(ctx: DraftContext, path: str, spec: dict, call: AttentionCall) -> bool:
    """The q norm's output is the attended query at every position while its input differs from the
    projection's output past position 0: HF normalizes after rotary (HunYuan)."""
    norm = ctx.found.get("q_norm")
    if not norm:
        return False
    out, seen = ctx.obs.output(f"{path}.{norm[0]}"), ctx.obs.input(f"{path}.{norm[0]}")
    raw = _unrotated(ctx, path, spec, call, through_norm=False)
    if out is None or seen is None or raw is None or not same(_heads(ctx, out), call.query):
        return False
    return bool(_moved(raw, _heads(ctx, seen)).any())


def _rotation(ctx: DraftContext, path: str, spec: dict, call: AttentionCall) -> None:
    """Compare the queries before and after rotation at the last position, in the first layer that rotates
    (block 0 may be a NoPE layer): which dims turned (rotary_dim) and which pairs kept their norm
    (rotate-half or interleaved pairing). Also where the q/k norms sit (qk_norm_at)."""
    if _norm_after_rotary(ctx, path, spec, call):
        spec["qk_norm_at"] = "after_rotary"
        ctx.draft.note("block.attn.qk_norm_at: the q norm takes the rotated queries (rotary, then the q/k norms)")
    for layer_path, layer_call in [(path, call), *_layer_calls(ctx, spec)]:
        if layer_call is None:
            continue
        raw, query = _before_after(ctx, layer_path, spec, layer_call)
        if raw is None:
            return
        moved = _moved(raw, query)
        if bool(moved.any()):
            break
    else:
        return
    ctx.found["rotates"] = True
    ctx.found["rotated_queries"] = (layer_path, raw, query)  # the positions observer reads the turn's direction
    last_raw, last = raw[:, :, -1].float(), query[:, :, -1].float()
    rotary_dim = int(moved.nonzero().max()) + 1
    rotary_dim += rotary_dim % 2
    ctx.found["rotary_dim"] = rotary_dim
    r = rotary_dim
    half = _pair_norms(last_raw[..., :r], r, interleaved=False), _pair_norms(last[..., :r], r, interleaved=False)
    inter = _pair_norms(last_raw[..., :r], r, interleaved=True), _pair_norms(last[..., :r], r, interleaved=True)
    if not same(*half, atol=1e-4) and same(*inter, atol=1e-4):
        ctx.found["rotary_interleaved"] = True  # adjacent dims (2i, 2i+1) pair: the positions observer names the kind


def observe_rotation_per_layer(ctx: DraftContext) -> None:
    """Rotary positions turn the queries of every layer, or of the layers a per-layer config list picks
    (NoPE layers: `block.attn.rotary`); a pattern no config list gives, or a rotary module whose effect
    nothing shows, is a gap."""
    if not str(ctx.draft.fields.get("pos_embed", {}).get("kind", "")).startswith("rotary"):
        return
    spec = ctx.draft.fields["block"]["attn"]
    turned = []
    for path, call in _layer_calls(ctx, spec):
        raw, query = _before_after(ctx, path, spec, call) if call is not None else (None, None)
        if raw is not None:
            turned.append(bool(_moved(raw, query).any()))
    if turned and not any(turned):
        ctx.draft.gap("rotary unseen", "the rotary module feeds the blocks but no layer's queries are rotated")
    elif turned and not all(turned):
        expression = _per_layer_flag(ctx, turned)
        if expression is None:
            unrotated = [i for i, t in enumerate(turned) if not t]
            ctx.draft.gap("per-layer rotary", f"layers {unrotated} attend with unrotated queries and no config list "
                          "picks them")  # fmt: skip
            return
        spec["rotary"] = expression
        ctx.draft.note(f"block.attn.rotary: layers {turned} rotate q/k; `{expression}` picks them")


def _per_layer_flag(ctx: DraftContext, wanted: list[bool]) -> str | None:
    """An expression `name[layer] == value` over a per-layer config list giving `wanted` on every layer:
    lists named after rope first (SmolLM3's no_rope_layers beside its layer_types), then `layer_types`
    (Cohere 2, EXAONE 4, Flint rotate only their sliding layers), then any other (which a tiny config may
    match by chance: noted for review)."""
    from ..shrink import plain_fields

    lists = [(n, v) for n, v in plain_fields(ctx.config).items() if isinstance(v, list) and len(v) == len(wanted)]
    lists.sort(key=lambda item: ("rope" not in item[0], item[0] != "layer_types"))
    for name, values in lists:
        for value in dict.fromkeys(v for v in values if isinstance(v, (str, int)) and not isinstance(v, bool)):
            if [v == value for v in values] == wanted:
                return f"{name}[layer] == {value!r}"
    return None


def _pair_norms(x: torch.Tensor, r: int, interleaved: bool) -> torch.Tensor:
    if interleaved:
        return (x[..., 0::2] ** 2 + x[..., 1::2] ** 2).sqrt()
    return (x[..., : r // 2] ** 2 + x[..., r // 2 :] ** 2).sqrt()


def _softmax_dtype(module: torch.nn.Module) -> str:
    try:
        source = inspect.getsource(sys.modules[type(module).__module__])
    except (OSError, TypeError, KeyError):
        return "float32"
    return "float32" if "softmax(attn_weights, dim=-1, dtype=torch.float32)" in source else "input"
