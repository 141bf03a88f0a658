"""Structural checks: the spec binds, every listed hook fires exactly once, shapes are
HookedTransformer's (derived from `cfg`), `run_with_cache` returns every hook point, q/k norms get the layout
the spec declares, and the position kind limits the input length exactly where HF's forward cannot go further."""

from __future__ import annotations

from collections import Counter

import torch

from ..catalogue import Meter, Skip, check
from ..context import CheckContext
from ..fields import expected_shape, field_for_hook, standard_names
from .latent import latent_weight_shapes


@check(
    "bind",
    statement="the spec loads and its module paths, layouts and sizes resolve on the real model",
    family="binding",
    figure="hook points",
    needs_bridge=False,
)
def bind(ctx: CheckContext, m: Meter) -> None:
    if ctx.bridge is None:
        error = ctx.error
        spec_field = getattr(error, "spec_path", None) or getattr(error, "field", None)
        m.fail(f"{type(error).__name__}: {error}", spec_field)
        return
    names = ctx.bridge.hook_names()
    m.measure(len(names))
    m.require(len(names) == len(set(names)), "hook_names() lists a name twice", None)


@check(
    "forward_parity",
    statement="with no hooks, the bridge's logits are bit-identical to the untouched copy's (padded batch too)",
    family="parity",
    tolerance=0.0,
)
def forward_parity(ctx: CheckContext, m: Meter) -> None:
    mask = ctx.padding_mask("right")
    with torch.no_grad():
        m.compare("bridge(tokens) vs model(tokens)", ctx.bridge(ctx.tokens, **ctx.inputs), ctx.plain_logits)
        expected = ctx.hf_logits(attention_mask=mask)
        padded = ctx.bridge(ctx.tokens, attention_mask=mask, **ctx.inputs)
        m.compare("bridge(tokens, attention_mask) vs model(...)", padded, expected)


@check(
    "hook_fire_counts",
    statement="every name in hook_names() fires exactly once on a plain forward, and the HookedTransformer "
    "(HookedEncoderDecoder) names of this block kind are all listed",
    family="hooks",
    figure="names not firing once",
)
def hook_fire_counts(ctx: CheckContext, m: Meter) -> None:
    bridge = ctx.bridge
    fired: Counter[str] = Counter()

    def count(tensor: torch.Tensor, hook) -> None:
        fired[hook.name] += 1

    ctx.bridge_hooked([(lambda name: True, count)])
    names = bridge.hook_names()
    wrong = [n for n in names if fired[n] != 1]
    for name in wrong:
        m.fail(f"'{name}' fired {fired[name]} times on one forward (expected exactly once)", field_for_hook(name))
    expected = standard_names(ctx)
    missing = [n for n in expected if n not in names]
    for name in missing[:3]:
        m.fail(
            f"'{name}' is a HookedTransformer hook point this model should have, but it is not listed",
            field_for_hook(name),
        )
    m.count(len(wrong) + len(missing), "hook points dead, firing more than once, or missing")


@check(
    "shapes",
    statement="every cached activation and weight view has HookedTransformer's shape derived from cfg "
    "(n_heads, d_head, d_mlp, d_vocab, n_ctx)",
    family="hooks",
    figure="shape mismatches",
)
def shapes(ctx: CheckContext, m: Meter) -> None:
    cfg = ctx.bridge.cfg
    batch, seq = ctx.tokens.shape
    encoder_seq = None
    if ctx.is_encoder_decoder:
        encoder_seq, seq = seq, ctx.decoder_seq
    bad = 0
    for name, tensor in ctx.cache.items():
        expected = expected_shape(name, cfg, batch, seq, encoder_seq)
        if expected is None:
            continue
        if name == "hook_embed" and ctx.bound.embed_project is not None:  # before project_in (OPT-350m)
            expected = (*expected[:-1], _width(ctx.bound.embed_project, "in"))
        got = tuple(tensor.shape)
        # hook_pos_embed may be batch-broadcast ([1, seq, d_model]): HF computes one row per position.
        broadcast = name.endswith("hook_pos_embed") and got == (1, *expected[1:])
        if got != expected and not broadcast:
            bad += 1
            m.fail(f"'{name}' has shape {got}, cfg implies {expected}", field_for_hook(name) or "config")
    bad += _weight_shapes(ctx, m)
    m.count(bad, "shape mismatches")


def _weight_shapes(ctx: CheckContext, m: Meter) -> int:
    bridge, cfg = ctx.bridge, ctx.bridge.cfg
    h, d, dm, dmlp = cfg.n_heads, cfg.d_head, cfg.d_model, cfg.d_mlp
    bound = ctx.bound
    # with project_in / project_out the embedding and the unembedding are narrower than the residual (OPT-350m)
    d_embed = dm if bound.embed_project is None else _width(bound.embed_project, "in")
    d_unembed = dm if bound.unembed_project is None else _width(bound.unembed_project, "out")
    expected: dict[str, tuple[tuple[int, ...], str]] = {
        "W_E": ((cfg.d_vocab, d_embed), "config.d_vocab / embed.project"),
        "W_U": ((d_unembed, cfg.d_vocab), "unembed.path / unembed.project"),
        "b_U": ((cfg.d_vocab,), "unembed.path"),
    }
    if bridge.position_kind.has_table and cfg.n_ctx is not None:
        expected["W_pos"] = ((cfg.n_ctx, dm), "pos_embed.offset / config.n_ctx")
    for layer in ctx.layers:
        block, p = layer.weights, layer.prefix
        for attn in ("attn", "cross_attn") if block.cross_attn is not None else ("attn",):
            if getattr(block, attn).bound.latent is not None:
                expected.update(latent_weight_shapes(f"{p}.{attn}", getattr(block, attn).bound.latent, cfg))
                continue
            for n in ("W_Q", "W_K", "W_V"):
                expected[f"{p}.{attn}.{n}"] = ((h, dm, d), "config.n_heads / config.d_head")
            for n in ("b_Q", "b_K", "b_V"):
                expected[f"{p}.{attn}.{n}"] = ((h, d), "config.n_heads / config.d_head")
            expected[f"{p}.{attn}.W_O"] = ((h, d, dm), "config.n_heads / config.d_head")
            expected[f"{p}.{attn}.b_O"] = ((dm,), "block.attn.o")
        moe = layer.block.mlp.moe
        if moe is not None:  # the router; each expert's views are checked by moe_weights
            expected[f"{p}.mlp.W_gate"] = ((dm, moe.n_experts), "block.mlp.moe.n_experts")
        else:
            expected[f"{p}.mlp.W_in"] = ((dm, dmlp), "config.d_mlp")
            expected[f"{p}.mlp.W_out"] = ((dmlp, dm), "config.d_mlp")
            expected[f"{p}.mlp.b_in"] = ((dmlp,), "config.d_mlp")
            expected[f"{p}.mlp.b_out"] = ((dm,), "block.mlp.out")
        if moe is None and block.mlp.W_gate is not None:
            expected[f"{p}.mlp.W_gate"] = ((dm, dmlp), "config.d_mlp")
        for norm in ("ln1", "ln2", "ln3"):
            weights = getattr(block, norm, None)
            if weights is not None and weights.w is not None:
                expected[f"{p}.{norm}.w"] = ((dm,), f"block.{norm}")
    bad = 0
    for name, (shape, spec_field) in expected.items():
        try:
            got = tuple(_resolve(bridge, name).shape)
        except Exception as exc:
            got = f"an error ({type(exc).__name__}: {exc})"
        if got != shape:
            bad += 1
            m.fail(f"weight view {name} is {got}, HookedTransformer's shape is {shape}", spec_field)
    return bad


def _width(module, side: str) -> int:
    """A projection's input or output width, from HF's own attributes (Linear `in_features`/`out_features`)."""
    return int(getattr(module, f"{side}_features"))


def _resolve(bridge, dotted: str) -> torch.Tensor:
    if "." not in dotted:
        return getattr(bridge, dotted)
    stack, index, part, attr = dotted.split(".")
    blocks = bridge.encoder if stack == "encoder" else bridge.blocks
    return getattr(getattr(blocks[int(index)], part), attr)


@check(
    "cache_completeness",
    statement="run_with_cache with no filter returns every hook point, with the values a plain hook sees, "
    "and its logits are HF's",
    family="hooks",
    tolerance=1e-5,
)
def cache_completeness(ctx: CheckContext, m: Meter) -> None:
    bridge = ctx.bridge
    logits, cache = ctx.bridge_cache()
    names = bridge.hook_names()
    missing = [n for n in names if n not in cache]
    extra = [n for n in cache if n not in names]
    m.require(not missing, f"run_with_cache() lacks {len(missing)} hook point(s), e.g. {missing[:3]}")
    m.require(not extra, f"run_with_cache() holds names hook_names() does not list: {extra[:3]}")
    # hooks on every point route attention through the bridge: a wrong logit here with forward_parity intact
    # is the hooked attention path (its mask, scale, softcap), not the unembedding
    m.compare("run_with_cache logits vs HF logits", logits, ctx.plain_logits, "block.attn (hooked path: mask / scale)")
    seen: dict[str, torch.Tensor] = {}

    def keep(tensor: torch.Tensor, hook) -> None:
        seen[hook.name] = tensor.detach().clone()

    ctx.bridge_hooked([(lambda name: True, keep)])
    for name in names:
        if name in cache and name in seen:
            m.compare(f"cache['{name}'] vs the tensor a hook sees", cache[name], seen[name], field_for_hook(name), 0.0)


_QK_NORM_INPUT = {
    "bhsd": ("[batch, heads, pos, d_head]", lambda heads: heads.transpose(1, 2)),
    "bshd": ("[batch, pos, heads, d_head]", lambda heads: heads),
    "flat": ("[batch, pos, heads * d_head] (the whole projection)", lambda heads: heads.flatten(-2)),
}


@check(
    "qk_norm_layout",
    statement="each q/k norm receives HF's q/k projection output in the layout the spec declares (qk_norm_layout: "
    "bhsd after the head transpose, bshd per head, flat over the whole projection before the head split); with "
    "qk_norm_at: after_rotary it receives it rotated (compared at position 0, where rotary is the identity) and "
    "its output is the q/k HF passes its attention interface",
    family="attention",
    tolerance=0.0,
)
def qk_norm_layout(ctx: CheckContext, m: Meter) -> None:
    seen = 0
    for attention in ctx.attentions:
        bound = attention.bound
        layout, (shown, arrange) = bound.qk_norm_layout, _QK_NORM_INPUT[bound.qk_norm_layout]
        after = bound.qk_norm_after_rotary
        for n, norm in (("q", bound.q_norm), ("k", bound.k_norm)):
            if norm is None:
                continue
            seen += 1
            heads = bound.views[n](ctx.hf_out(bound.projection(n)))  # [b, s, h, d], from HF's projection output
            expected, got = arrange(heads), ctx.hf_in(norm.module)
            field = f"{bound.field}.qk_norm_layout / qk_norm_at"
            what = f"{attention.prefix}.{norm.name} input vs HF's {n} projection as {shown} ({layout})"
            if tuple(got.shape) != tuple(expected.shape):
                m.fail(f"{what}: HF hands the norm {tuple(got.shape)}, the layout gives {tuple(expected.shape)}", field)
                continue
            if not after:
                m.compare(what, got, expected, field)
                continue
            first = _first_position(layout)
            m.compare(f"{what}, at position 0 (after_rotary)", got[first], expected[first], field)
            call = ctx.attention_call(attention)
            if call is None:
                continue
            interface = arrange({"q": call.query, "k": call.key}[n].transpose(1, 2))  # [b, s, h, d] arranged
            m.compare(
                f"{attention.prefix}.{norm.name} output vs the {n} HF passed its attention interface (after_rotary)",
                ctx.hf_out(norm.module),
                interface,
                f"{bound.field}.qk_norm_at",
            )
    if not seen:
        raise Skip("this spec declares no q/k norms")


def _first_position(layout: str) -> tuple:
    """The index of position 0 in a q/k norm's input of `layout` (bhsd: dim 2, otherwise dim 1)."""
    return (slice(None), slice(None), slice(0, 1)) if layout == "bhsd" else (slice(None), slice(0, 1))


@check(
    "length_limit",
    statement="the position kind refuses inputs longer than cfg.n_ctx exactly where HF's own forward cannot run "
    "them (a learned table, GPT-J's sinusoid table), and accepts them where it can (rotary computed per call)",
    family="config",
    figure="mismatches",
    encoder_decoder=False,
)
def length_limit(ctx: CheckContext, m: Meter) -> None:
    n_ctx = ctx.bridge.cfg.n_ctx
    if n_ctx is None:
        raise Skip("cfg.n_ctx is not given: no length to hold the position kind to")
    tokens = (torch.arange(n_ctx + 1) % ctx.vocab)[None]
    try:
        ctx.hf_logits(tokens)
        hf_runs = True
    except (IndexError, RuntimeError):  # an index past a table, or a size mismatch against one
        hf_runs = False
    kind = ctx.bound.position_kind
    wrong = kind.limits_length == hf_runs
    if wrong:
        m.fail(
            f"position kind '{kind.name}' {'refuses' if kind.limits_length else 'accepts'} {n_ctx + 1} tokens, but "
            f"HF's forward {'runs' if hf_runs else 'cannot run'} them",
            "pos_embed.kind / config.n_ctx",
        )
    m.count(int(wrong), "position kinds that disagree with HF on the length limit")
