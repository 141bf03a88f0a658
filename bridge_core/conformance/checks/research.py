"""The research API held to HF itself: greedy generation (with and without the KV cache, hooks firing
on every step), layer ranges (the residual `stop_at_layer` returns is HF's block input; resuming with
`start_at_layer` gives HF's logits), and backward hooks (gradients equal autograd's on the copy)."""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from transformers.utils import logging as hf_logging

from ..catalogue import Meter, Skip, check
from ..context import CheckContext

_STEPS = 4


def _greedy_by_hand(model: torch.nn.Module, prompt: torch.Tensor, ctx: CheckContext) -> torch.Tensor:
    """Greedy decoding by argmax on the copy's full forward each step (no cache, no `generate`)."""
    if not ctx.is_encoder_decoder:
        sequence = prompt
        for _ in range(_STEPS):
            logits = model(input_ids=sequence, use_cache=False).logits
            sequence = torch.cat([sequence, logits[:, -1].argmax(-1, keepdim=True)], dim=1)
        return sequence
    start = model.generation_config.decoder_start_token_id
    start = start if start is not None else model.config.decoder_start_token_id or 0
    decoded = torch.full((prompt.shape[0], 1), int(start), dtype=torch.long)
    for _ in range(_STEPS):
        logits = model(input_ids=prompt, decoder_input_ids=decoded, use_cache=False).logits
        decoded = torch.cat([decoded, logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    return decoded


@check(
    "generation",
    statement="bridge.generate greedy equals greedy decoding by hand on the untouched copy, token for token, with "
    "and without the KV cache, and a hook fires once per step",
    family="research",
)
def generation(ctx: CheckContext, m: Meter) -> None:
    prompt = ctx.tokens[:1]
    with torch.no_grad():
        expected = _greedy_by_hand(ctx.copy, prompt, ctx)
        steps: list[int] = []
        last = ctx.layers[-1]
        hooks = [(f"{last.prefix}.hook_resid_post", lambda t, hook: steps.append(t.shape[1]))]
        # eos -1: never stop early, as the hand loop does not (transformers warns about it: quieted here)
        verbosity = hf_logging.get_verbosity()
        hf_logging.set_verbosity_error()
        try:
            with ctx.bridge.hooks(fwd_hooks=hooks):
                cached = ctx.bridge.generate(prompt, max_new_tokens=_STEPS, eos_token_id=-1)
            uncached = ctx.bridge.generate(prompt, max_new_tokens=_STEPS, use_cache=False, eos_token_id=-1)
        finally:
            hf_logging.set_verbosity(verbosity)
    for what, tokens in (("with the KV cache", cached), ("without the KV cache", uncached)):
        same = tokens.shape == expected.shape and torch.equal(tokens, expected)
        m.require(same, f"generate {what} gave {tokens.tolist()}, greedy by hand {expected.tolist()}", "call")
    m.count(abs(len(steps) - _STEPS), f"the last block's hook fired {len(steps)} times in {_STEPS} steps", "call")


@check(
    "layer_ranges",
    statement="bridge(tokens, stop_at_layer=k) returns HF's input to block k and runs no later block; "
    "bridge(residual, start_at_layer=k) then equals HF's logits, for every k",
    family="research",
    tolerance=1e-5,
)
def layer_ranges(ctx: CheckContext, m: Meter) -> None:
    if ctx.is_encoder_decoder:
        raise Skip("layer ranges are defined for decoder-only models (encoder-decoder: a typed refusal)")
    bridge, layers = ctx.bridge, ctx.layers
    for layer in layers:
        ran: list[int] = []

        def probe(tensor: torch.Tensor, hook, ran: list[int] = ran) -> None:
            ran.append(hook.layer())

        probes = [(f"{other.prefix}.hook_resid_pre", probe) for other in layers]
        with torch.no_grad(), bridge.hooks(fwd_hooks=probes):
            residual = bridge(ctx.tokens, stop_at_layer=layer.index)
        m.count(sum(1 for i in ran if i >= layer.index), f"blocks at or after {layer.index} that ran", "blocks")
        m.compare(
            f"stop_at_layer={layer.index} vs HF's input to {layer.prefix}",
            residual,
            ctx.hf_in(layer.block.module),
            "blocks / block.hidden_states_kwarg",
        )
        with torch.no_grad():
            logits = bridge(residual, start_at_layer=layer.index)
        m.compare(
            f"start_at_layer={layer.index} vs HF's logits",
            logits,
            ctx.plain_logits,
            "call / ln_final / unembed (pre_scale, softcap)",
            tolerance=1e-4,
        )


@check(
    "backward_hooks",
    statement="a backward hook on every block's output point receives the gradient autograd gives for the "
    "same tensor of the untouched copy, and returning a tensor from it replaces the gradient",
    family="research",
    tolerance=1e-5,
)
def backward_hooks(ctx: CheckContext, m: Meter) -> None:
    if ctx.is_encoder_decoder:
        raise Skip("HF's loss with labels shifts them into the decoder inputs; not the same computation")
    bridge, layers = ctx.bridge, ctx.layers
    grads: dict[str, torch.Tensor] = {}

    def out_name(layer) -> str:  # the hook on the block's output (post-norm blocks: the normalized one)
        return f"{layer.prefix}.hook_{'normalized_' if layer.block.kind == 'post_norm' else ''}resid_post"

    hooks = [(out_name(layer), lambda g, hook: grads.__setitem__(hook.name, g.clone())) for layer in layers]
    with torch.enable_grad():
        loss = bridge.run_with_hooks(ctx.tokens, bwd_hooks=hooks, return_type="loss")
        loss.backward()
        reference = copy.deepcopy(ctx.copy)
        seen: dict[int, torch.Tensor] = {}
        handles = []
        for layer in layers:
            module = reference.get_submodule(ctx.name_of(layer.block.module))

            def keep(mod, args, output, index=layer.index):
                tensor = output[0] if isinstance(output, (tuple, list)) else output
                tensor.retain_grad()
                seen[index] = tensor

            handles.append(module.register_forward_hook(keep))
        # the next-token loss from the copy's logits, not HF's `labels=` loss: TrOCR's does not shift the labels
        logits = reference(input_ids=ctx.tokens, use_cache=False).logits[:, :-1]
        F.cross_entropy(logits.flatten(0, 1).float(), ctx.tokens[:, 1:].flatten()).backward()
        for handle in handles:
            handle.remove()
    bridge.model.zero_grad(set_to_none=True)
    for layer in layers:
        name = out_name(layer)
        if name not in grads:
            m.fail(f"the backward hook on {name} never ran", "block.output_index")
            continue
        m.compare(f"{name} gradient vs autograd on the copy", grads[name], seen[layer.index].grad, "block.output_index")
