"""The everyday TransformerLens workflows, on every built-in decoder-only architecture, each checked
against the same computation done by hand on the untouched HF model (plain torch hooks, no bridge):
greedy generation (with and without the KV cache), steering during generation, layer ranges,
activation patching, head ablation, losses."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from bridge_core import InputError

from .conftest import tiny, tokens

ARCHITECTURES = ["gpt2", "gpt_neox", "opt", "gemma", "gemma2", "gemma3", "llama", "qwen2"]


def blocks_of(bridge, reference: nn.Module) -> list[nn.Module]:
    """The reference copy's blocks, found by the bridge's own module paths."""
    names = {id(m): n for n, m in bridge.model.named_modules()}
    paths = [names[id(b.module)] for b in bridge._bound.blocks]
    return [reference.get_submodule(p) for p in paths]


def o_proj_of(bridge, reference: nn.Module, layer: int) -> nn.Module:
    names = {id(m): n for n, m in bridge.model.named_modules()}
    return reference.get_submodule(names[id(bridge._bound.blocks[layer].attn.o)])


def greedy_by_hand(model: nn.Module, prompt: torch.Tensor, steps: int) -> torch.Tensor:
    sequence = prompt
    for _ in range(steps):
        logits = model(sequence, use_cache=False).logits
        sequence = torch.cat([sequence, logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    return sequence


def first_output(output):
    return output[0] if isinstance(output, tuple) else output


@pytest.mark.parametrize("name", ARCHITECTURES)
def test_greedy_generation_equals_hf_greedy_with_and_without_the_cache(name):
    bridge, reference = tiny(name)
    prompt = tokens(1, 5, seed=2)
    with torch.no_grad():
        expected = greedy_by_hand(reference, prompt, 6)
        assert torch.equal(bridge.generate(prompt, max_new_tokens=6), expected)
        assert torch.equal(bridge.generate(prompt, max_new_tokens=6, use_cache=False), expected)


@pytest.mark.parametrize("name", ARCHITECTURES)
def test_steering_during_generation_equals_the_steered_model_by_hand(name):
    bridge, reference = tiny(name)
    prompt = tokens(1, 5, seed=3)
    vector = torch.randn(bridge.cfg.d_model, generator=torch.Generator().manual_seed(4)) * 3.0
    calls: list[int] = []

    def steer(resid, hook):
        calls.append(resid.shape[1])
        return resid + vector

    def steer_by_hand(module, args, output):
        if isinstance(output, tuple):
            return (output[0] + vector, *output[1:])
        return output + vector

    with torch.no_grad():
        bridge.add_hook("blocks.0.hook_resid_post", steer)
        try:
            steered = bridge.generate(prompt, max_new_tokens=4)
        finally:
            bridge.reset_hooks()
        handle = blocks_of(bridge, reference)[0].register_forward_hook(steer_by_hand)
        expected = greedy_by_hand(reference, prompt, 4)
        handle.remove()
    assert calls == [5, 1, 1, 1], "the hook fires once per step, on that step's positions (KV cache)"
    assert torch.equal(steered, expected)


@pytest.mark.parametrize("name", ARCHITECTURES)
def test_layer_ranges_compose_to_the_full_forward_and_stop_where_asked(name):
    bridge, reference = tiny(name)
    x = tokens(2, 7, seed=5)
    mask = torch.ones_like(x)
    mask[0, :2] = 0
    entering: dict[int, torch.Tensor] = {}

    def record(layer):
        def pre(module, args, kwargs):
            entering[layer] = (args[0] if args else kwargs["hidden_states"]).clone()

        return pre

    blocks = blocks_of(bridge, reference)
    handles = [b.register_forward_pre_hook(record(i), with_kwargs=True) for i, b in enumerate(blocks)]
    with torch.no_grad():
        full = reference(x, attention_mask=mask).logits
    for h in handles:
        h.remove()
    real = mask.bool()
    ran: list[int] = []
    probes = [(f"blocks.{i}.hook_resid_pre", lambda t, hook: ran.append(hook.layer())) for i in range(len(blocks))]
    with torch.no_grad():
        for k in range(bridge.cfg.n_layers):
            with bridge.hooks(fwd_hooks=probes):
                ran.clear()
                residual = bridge(x, attention_mask=mask, stop_at_layer=k)
            assert ran == list(range(k)), "no block at or after stop_at_layer runs"
            torch.testing.assert_close(residual, entering[k], atol=0, rtol=0)
            logits = bridge(residual, attention_mask=mask, start_at_layer=k)
            torch.testing.assert_close(logits[real], full[real], atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", ARCHITECTURES)
def test_activation_patching_equals_patching_by_hand(name):
    bridge, reference = tiny(name)
    clean, corrupt = tokens(1, 6, seed=6), tokens(1, 6, seed=7)
    layer, position = bridge.cfg.n_layers - 1, 3
    with torch.no_grad():
        _, cache = bridge.run_with_cache(clean, names_filter=f"blocks.{layer}.hook_resid_pre")
        clean_resid = cache[f"blocks.{layer}.hook_resid_pre"]

        def patch(resid, hook):
            resid[:, position] = clean_resid[:, position]

        patched = bridge.run_with_hooks(corrupt, fwd_hooks=[(f"blocks.{layer}.hook_resid_pre", patch)])
        saved: dict[str, torch.Tensor] = {}
        block = blocks_of(bridge, reference)[layer]

        def save(module, args, kwargs):
            saved["x"] = (args[0] if args else kwargs["hidden_states"]).clone()

        h = block.register_forward_pre_hook(save, with_kwargs=True)
        reference(clean)
        h.remove()

        def patch_by_hand(module, args, kwargs):
            hidden = (args[0] if args else kwargs["hidden_states"]).clone()
            hidden[:, position] = saved["x"][:, position]
            if args:
                return (hidden, *args[1:]), kwargs
            return args, {**kwargs, "hidden_states": hidden}

        h = block.register_forward_pre_hook(patch_by_hand, with_kwargs=True)
        expected = reference(corrupt).logits
        h.remove()
    torch.testing.assert_close(patched, expected, atol=1e-5, rtol=0)
    assert (patched - bridge(corrupt)).abs().max() > 1e-4, "the patch changed nothing"


@pytest.mark.parametrize("name", ARCHITECTURES)
def test_head_ablation_equals_zeroing_the_heads_slice_by_hand(name):
    bridge, reference = tiny(name)
    x = tokens(2, 6, seed=8)
    layer, head, d_head = 0, 1, bridge.cfg.d_head

    def ablate(z, hook):
        z[:, :, head] = 0

    def ablate_by_hand(module, args):
        z = args[0].clone()
        z[..., head * d_head : (head + 1) * d_head] = 0
        return (z, *args[1:])

    with torch.no_grad():
        ablated = bridge.run_with_hooks(x, fwd_hooks=[(f"blocks.{layer}.attn.hook_z", ablate)])
        h = o_proj_of(bridge, reference, layer).register_forward_pre_hook(ablate_by_hand)
        expected = reference(x).logits
        h.remove()
    torch.testing.assert_close(ablated, expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", ["gpt2", "gemma2", "llama"])
def test_loss_and_per_token_loss_equal_hf_cross_entropy(name):
    bridge, reference = tiny(name)
    x = tokens(2, 8, seed=9)
    with torch.no_grad():
        assert torch.allclose(bridge(x, return_type="loss"), reference(x, labels=x).loss, atol=1e-6)
        logits, per_token = bridge(x, return_type="both", loss_per_token=True)
        expected = torch.nn.functional.cross_entropy(
            reference(x).logits[:, :-1].flatten(0, 1), x[:, 1:].flatten(), reduction="none"
        ).view(2, 7)
    torch.testing.assert_close(per_token, expected, atol=1e-5, rtol=0)
    assert logits.shape == (2, 8, bridge.cfg.d_vocab)
    with pytest.raises(InputError):
        bridge(x, return_type="probabilities")


def test_run_with_cache_incl_bwd_caches_the_gradients_autograd_gives_by_hand():
    bridge, reference = tiny("gpt2")
    x = tokens(2, 6, seed=10)
    _, cache = bridge.run_with_cache(x, names_filter="blocks.1.hook_resid_pre", return_type="loss", incl_bwd=True)
    block = blocks_of(bridge, reference)[1]
    seen: dict[str, torch.Tensor] = {}

    def keep(module, args):
        args[0].retain_grad()
        seen["x"] = args[0]

    h = block.register_forward_pre_hook(keep)
    reference(x, labels=x).loss.backward()
    h.remove()
    torch.testing.assert_close(cache["blocks.1.hook_resid_pre_grad"], seen["x"].grad, atol=1e-7, rtol=0)
    with pytest.raises(InputError):
        bridge.run_with_cache(x, incl_bwd=True)  # logits are not a scalar
