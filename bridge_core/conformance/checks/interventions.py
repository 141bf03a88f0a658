"""Intervention checks: identity hooks, +δ once, single-head ablation and padding, each compared with
the untouched copy run by hand (plain torch hooks on the copy, never bridge hooks)."""

from __future__ import annotations

import torch

from ...bridge.places import ModuleInput, ModuleOutput
from ..catalogue import Meter, check
from ..context import CheckContext
from ..fields import on_encoder


def _clone(tensor: torch.Tensor, hook) -> torch.Tensor:
    return tensor.clone()


def _observe(tensor: torch.Tensor, hook) -> None:
    return None


def _ends(ctx: CheckContext) -> list:
    """The first and last layer of each stack."""
    out = []
    for stack in dict.fromkeys(layer.stack for layer in ctx.layers):
        layers = [layer for layer in ctx.layers if layer.stack == stack]
        out += [layers[0]] if len(layers) == 1 else [layers[0], layers[-1]]
    return out


@check(
    "identity_hooks",
    statement="identity hooks on every hook point (observing, and returning an equal new tensor, which routes "
    "attention to eager and recomputes norms and head results) keep logits within 1e-5 of HF's",
    family="interventions",
    tolerance=1e-5,
)
def identity_hooks(ctx: CheckContext, m: Meter) -> None:
    with torch.no_grad():
        for label, fn in (("observing", _observe), ("returning a clone", _clone)):
            logits = ctx.bridge_hooked([(lambda name: True, fn)])
            m.compare(f"logits with identity hooks ({label}) on every point vs HF", logits, ctx.plain_logits)


@check(
    "identity_module_hooks",
    statement="identity hooks returning a clone at module-boundary points leave logits bit-identical to HF's",
    family="interventions",
    tolerance=0.0,
)
def identity_module_hooks(ctx: CheckContext, m: Meter) -> None:
    points = ctx.bridge.hook_dict
    boundary = {n for n, p in points.items() if isinstance(p.place, (ModuleInput, ModuleOutput))}
    m.require(bool(boundary), "no hook point sits on a module boundary")
    logits = ctx.bridge_hooked([(lambda name: name in boundary, _clone)])
    m.compare(
        f"logits with clone-returning hooks on {len(boundary)} module-boundary points vs HF", logits, ctx.plain_logits
    )


@check(
    "delta_once",
    statement="+δ at hook_resid_mid and +δ at hook_attn_out both equal adding δ to the attention module's "
    "output in the untouched copy by hand, and move hook_resid_mid by exactly δ",
    family="interventions",
    tolerance=1e-5,
)
def delta_once(ctx: CheckContext, m: Meter) -> None:
    bridge = ctx.bridge
    generator = torch.Generator().manual_seed(ctx.seed + 1)
    delta = torch.randn(bridge.cfg.d_model, generator=generator) * 0.5
    seen: dict[str, torch.Tensor] = {}

    def keep(tensor: torch.Tensor, hook) -> None:
        seen[hook.name] = tensor.detach().clone()

    def add_delta(tensor: torch.Tensor, hook) -> torch.Tensor:
        return tensor + delta

    for layer in _ends(ctx):
        p = layer.prefix
        mid = f"{p}.hook_resid_mid"
        attn = ctx.name_of(layer.block.attn_out.module)
        # where HF multiplies the output before the add (residual multiplier), δ / multiplier joins as δ
        step = delta / (layer.block.attn_out.scale or 1.0)

        def add_to_output(module, args, output, step=step):
            if isinstance(output, (tuple, list)):  # a list stays a list (OpenAI GPT's attention)
                return type(output)([output[0] + step, *output[1:]])
            return output + step

        expected = ctx.reference_run(edits=[(attn, "post", add_to_output)], capture=False).logits
        seen.clear()
        for name in (mid, f"{p}.hook_attn_out"):
            if name not in bridge.hook_dict:
                continue
            hooks = [(name, add_delta)]
            if mid in ctx.cache and name != mid:
                hooks.append((mid, keep))
            logits = ctx.bridge_hooked(hooks)
            field = "block.ln2.path / block.kind" if name == mid else "block.attn.output_index"
            m.compare(f"logits after +δ at {name} vs +δ on HF's attention output", logits, expected, field)
        if mid in seen:
            moved = seen[mid] - ctx.cache[mid]
            m.compare(f"{mid} moved by +δ at hook_attn_out", moved, delta.expand_as(moved), "block.ln2.path")


@check(
    "head_ablation",
    statement="zeroing one head in hook_z, or in hook_result, equals zeroing that head's slice of the output "
    "projection's input (for hook_z: of the o_norm's input, where the spec has one) in the untouched copy with a "
    "plain torch pre-hook",
    family="interventions",
    tolerance=1e-5,
)
def head_ablation(ctx: CheckContext, m: Meter) -> None:
    cfg = ctx.bridge.cfg
    head = cfg.n_heads - 1
    ends = {id(layer) for layer in _ends(ctx)}
    for attention in [a for a in ctx.attentions if id(a.layer) in ends]:
        o_proj = ctx.name_of(attention.bound.o)
        o_norm = attention.bound.o_norm  # BitNet: hook_z is this norm's input, hook_result reads o_proj's
        d = attention.bound.d_head_v or cfg.d_head  # the output projection reads value-width heads

        def zero_slice(module, args, kwargs, d=d):
            key = "input" if "input" in kwargs else "hidden_states"
            x = (args[0] if args else kwargs[key]).clone()
            x[..., head * d : (head + 1) * d] = 0  # HF's o-proj input is head-major: [b, s, h * d_head]
            return ((x, *args[1:]), kwargs) if args else (args, {**kwargs, key: x})

        expected = ctx.reference_run(edits=[(o_proj, "pre", zero_slice)], capture=False).logits
        at_z = expected
        if o_norm is not None:
            at_z = ctx.reference_run(edits=[(ctx.name_of(o_norm.module), "pre", zero_slice)], capture=False).logits

        def zero_head(tensor: torch.Tensor, hook) -> torch.Tensor:
            out = tensor.clone()
            out[:, :, head] = 0
            return out

        for point in ("hook_z", "hook_result"):
            name = f"{attention.prefix}.{point}"
            logits = ctx.bridge_hooked([(name, zero_head)])
            label = f"logits after zeroing head {head} at {name} vs by hand in HF"
            m.compare(label, logits, at_z if point == "hook_z" else expected, "block.attn.o / o_norm / config.n_heads")


MOE_TOKEN_POINTS = ("hook_router_logits", "hook_expert_weights", "hook_expert_indices", "hook_routing_weights")


def _real_positions(ctx: CheckContext, tensor: torch.Tensor, name: str, keep: torch.Tensor) -> torch.Tensor:
    """Entries of sequence 1 at its real positions (`keep`: bool [seq] over the padded tokens): queries
    and keys of patterns; for encoder-decoder models only encoder positions (and cross-attention keys)."""
    whole = None
    q_keep, k_keep = keep, keep
    if ctx.is_encoder_decoder and not on_encoder(name):
        q_keep, k_keep = whole, (keep if ".cross_attn." in name else whole)
    bias = name.endswith("hook_rel_pos_bias")
    one = tensor[0] if bias else tensor[1]
    if bias or name.endswith(("hook_pattern", "hook_attn_scores")):
        one = one if q_keep is None else one[:, q_keep]
        return one if k_keep is None else one[:, :, k_keep]
    positions = k_keep if name.endswith((".cross_attn.hook_k", ".cross_attn.hook_v")) else q_keep
    return one if positions is None else one[positions]


def _left_pad_invariant(ctx: CheckContext, mask: torch.Tensor, kwargs: dict, hf_single: torch.Tensor) -> bool:
    """Whether HF's own left-padded logits at real positions (position_ids counting real tokens) are its
    unpadded ones, up to the difference of a kernel (not of a position: those are O(1) on these models)."""
    with torch.no_grad():
        padded = ctx.copy(input_ids=ctx.tokens, attention_mask=mask, use_cache=False, **kwargs).logits
    return bool(torch.allclose(padded[1][mask[1].bool()].float(), hf_single[0].float(), atol=1e-3, rtol=1e-3))


@check(
    "padding",
    statement="with left and right padding, logits and every cached activation at real positions equal the "
    "unpadded single-sequence run, and logits equal HF's unpadded logits (HF's left-padded ones where HF numbers "
    "positions from the first padded slot; encoder padding for encoder-decoders)",
    family="interventions",
    tolerance=1e-5,
)
def padding(ctx: CheckContext, m: Meter) -> None:
    bridge = ctx.bridge
    for side in ("right", "left"):
        mask = ctx.padding_mask(side)
        keep = mask[1].bool()
        single = ctx.tokens[1:2, keep]
        kwargs, single_kwargs = dict(ctx.inputs), {}
        if ctx.is_encoder_decoder:
            single_kwargs["decoder_input_ids"] = ctx.decoder_tokens[1:2]
        elif side == "left":  # positions count real tokens only, as generate() passes them
            kwargs["position_ids"] = (mask.cumsum(-1) - 1).clamp(min=0)
        with torch.no_grad():
            logits, cache = bridge.run_with_cache(ctx.tokens, attention_mask=mask, **kwargs)
            _, single_cache = bridge.run_with_cache(single, **single_kwargs)
            hf_single = ctx.copy(input_ids=single, use_cache=False, **single_kwargs).logits
        encoder = ctx.bound.encoder
        if side == "left" and encoder is not None and encoder.pos_embed is not None:
            # an encoder with absolute positions (BART) numbers them from the first padded slot: HF's own
            # model is not invariant to left padding, so the bridge is held to HF's left-padded forward
            with torch.no_grad():
                hf_padded = ctx.copy(input_ids=ctx.tokens, attention_mask=mask, use_cache=False, **ctx.inputs).logits
            m.compare("left-padded logits vs HF left-padded (absolute encoder positions)", logits, hf_padded, "call")
            continue
        if side == "left" and not ctx.is_encoder_decoder and not _left_pad_invariant(ctx, mask, kwargs, hf_single):
            # HF numbers its positions from the first padded slot whatever position_ids say (TrOCR's learned
            # table): HF's own model is not invariant to left padding, so the bridge is held to HF's padded run
            with torch.no_grad():
                hf_padded = ctx.copy(input_ids=ctx.tokens, attention_mask=mask, use_cache=False, **kwargs).logits
            m.compare("left-padded logits vs HF left-padded (HF ignores position_ids)", logits, hf_padded, "call")
            continue
        row = logits[1] if ctx.is_encoder_decoder else logits[1][keep]
        m.compare(f"{side}-padded logits at real positions vs HF unpadded", row, hf_single[0], "block.attn (mask)")
        m.compare(
            f"{side}-padded logits of the full row vs HF unpadded",
            logits[0],
            ctx.plain_logits[0],
            "block.attn.implementation (mask)",
        )
        for name, value in cache.items():
            if name.endswith("hook_pos_embed") and value.shape[0] == 1:
                continue  # broadcast over the batch: no per-sequence row to compare
            if ".mlp.experts." in name:
                continue  # the tokens each expert sees depend on the whole batch
            single_value = single_cache[name]
            if name.endswith(MOE_TOKEN_POINTS):  # MoE routing points are [batch * pos, ...], as in HookedTransformer
                value, single_value = value.unflatten(0, tuple(mask.shape)), single_value.unflatten(0, (1, -1))
            m.compare(
                f"{side}-padded {name} at real positions vs unpadded run",
                _real_positions(ctx, value, name, keep),
                single_value[0],
                "block.attn.implementation (mask)",
            )
