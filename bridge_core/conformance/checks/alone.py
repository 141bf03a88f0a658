"""Components called alone and the two attention paths: each block and attention module called on its
own through `bridge.components` equals what HF computed inside a full padded forward of the untouched
copy, and a bridge forced onto the `reimplement` attention path agrees with the interface path."""

from __future__ import annotations

import copy

import torch

from ...bridge import Bridge, with_attention_implementation
from ..catalogue import Meter, Skip, check
from ..context import CheckContext


def _padded_reference(ctx: CheckContext):
    # Left padding: real queries come after padded keys, so a mask that is not passed cannot go unnoticed.
    mask = ctx.padding_mask("left")
    return mask, ctx.reference_run(attention_mask=mask, capture=False)


@check(
    "block_alone",
    statement="every block called alone with bridge.components.block(i, resid_pre, mask) on HF's block input "
    "equals HF's block output in a left-padded forward of the untouched copy (real positions)",
    family="components",
    tolerance=1e-5,
)
def block_alone(ctx: CheckContext, m: Meter) -> None:
    mask, recording = _padded_reference(ctx)
    encoder_states = _encoder_output(ctx, recording)
    for layer in ctx.layers:
        resid_pre = ctx.hf_in(layer.block.module, recording)
        encoder_stack = layer.stack == "encoder" or not ctx.is_encoder_decoder
        layer_mask = mask if encoder_stack else None  # the decoder's own tokens are not padded
        kwargs = {} if encoder_stack else {"encoder_states": encoder_states, "encoder_mask": mask}
        with torch.no_grad():
            out = ctx.bridge.components.block(layer.index, resid_pre, layer_mask, stack=layer.stack, **kwargs)
        real = mask.bool() if encoder_stack else torch.ones(out.shape[:2], dtype=torch.bool)
        m.compare(
            f"{layer.prefix} called alone vs HF's block output (real positions)",
            out[real],
            ctx.hf_out(layer.block.module, recording)[real],
            "call (mask_format / mask_kwarg / position_embeddings_kwarg / position_bias_kwarg / window) / "
            "block.output_index",
        )


def _encoder_output(ctx: CheckContext, recording) -> torch.Tensor | None:
    """HF's encoder output (the encoder's final norm output) on the padded reference forward."""
    if not ctx.is_encoder_decoder:
        return None
    return ctx.hf_at(ctx.bridge.bound.encoder.output(), recording)


@check(
    "attention_alone",
    statement="every attention module called alone with bridge.components.attention(i, normalized, mask) on HF's "
    "attention input equals HF's attention output in a left-padded forward of the untouched copy (real positions)",
    family="components",
    tolerance=1e-5,
)
def attention_alone(ctx: CheckContext, m: Meter) -> None:
    mask, recording = _padded_reference(ctx)
    for layer in ctx.layers:
        encoder_stack = layer.stack == "encoder" or not ctx.is_encoder_decoder
        layer_mask = mask if encoder_stack else None
        module = layer.block.attn.module
        with torch.no_grad():
            out = ctx.bridge.components.attention(
                layer.index, ctx.hf_in(module, recording), layer_mask, stack=layer.stack
            )
        real = mask.bool() if encoder_stack else torch.ones(out.shape[:2], dtype=torch.bool)
        attn = layer.block.attn
        # a module that adds the residual itself (BLOOM) is called alone with a zero residual: its
        # contribution is then what its output projection returned in HF's forward
        hf = ctx.hf_out(attn.o if attn.residual_kwarg else module, recording)
        m.compare(
            f"{layer.prefix}.attn called alone vs HF's attention output (real positions)",
            out[real],
            hf[real],
            "call (mask_format / attention_mask_kwarg / position_embeddings_kwarg / window) / block.attn.output_index",
        )


def _reimplemented(ctx: CheckContext) -> Bridge:
    spec = with_attention_implementation(ctx.spec, "reimplement")
    try:
        return Bridge(copy.deepcopy(ctx.copy), spec, registry=ctx.bridge.registry, spec_file=ctx.spec_file)
    except NotImplementedError as exc:
        raise Skip(f"the reimplement attention path does not support this model: {exc}") from None


@check(
    "attention_paths_agree",
    statement="a bridge on a deep copy forced onto the reimplement attention path gives the same cache (every hook) "
    "and logits as the interface path, and the same logits after zeroing head 0 of one layer's hook_pattern "
    "(no KV cache)",
    family="components",
    tolerance=1e-5,
)
def attention_paths_agree(ctx: CheckContext, m: Meter) -> None:
    other = _reimplemented(ctx)
    # KV-cache generation is its own capability: both paths run without one here (use_cache=False).
    with torch.no_grad():
        logits, cache = other.run_with_cache(ctx.tokens, use_cache=False, **ctx.inputs)
    missing = sorted(set(ctx.cache) - set(cache))
    m.require(not missing, f"the reimplement path lacks hook points: {missing[:3]}", "block.attn.implementation")
    for name in sorted(set(ctx.cache) & set(cache), key=list(ctx.cache).index):
        rotary = name.endswith(("hook_rot_q", "hook_rot_k"))
        field = (
            "config.rotary_dim / pos_embed.kind / rotary_output / block.attn.rotary / qk_norm_at"
            if rotary
            else "block.attn (reimplement path)"
        )
        paths = ("the reimplement path", "the interface path")
        m.compare(f"{name}: reimplement path vs interface path", cache[name], ctx.cache[name], field, sides=paths)
    m.compare("reimplement-path logits vs HF logits", logits, ctx.plain_logits, "block.attn (reimplement path)")
    layer = ctx.layers[-1].prefix

    def zero_head(tensor: torch.Tensor, hook) -> torch.Tensor:
        out = tensor.clone()
        out[:, 0] = 0
        return out

    hooks = [(f"{layer}.attn.hook_pattern", zero_head)]
    edited = ctx.bridge_hooked(hooks, use_cache=False)
    m.require(not torch.equal(edited, ctx.plain_logits), f"zeroing head 0 of {layer}.attn.hook_pattern changed nothing")
    m.compare(
        f"logits after zeroing head 0 of {layer}.attn.hook_pattern: reimplement vs interface path",
        ctx.bridge_hooked(hooks, bridge=other, use_cache=False),
        edited,
        "block.attn (reimplement)",
        sides=("the reimplement path", "the interface path"),
    )
