"""The model is left as found on every built-in spec, after heavy use, and bridges do not interfere.

"As found" is the core tests' snapshot: parameters and buffers bitwise (and the same objects), the module
tree with each module's `training` flag, `requires_grad`, tensor hooks, every module's hook dictionaries,
global module hooks, `config.to_dict()` and every config object's attention implementation.
"""

from __future__ import annotations

import copy
import gc

import pytest
import torch

from bridge_core import Bridge

from ._models import BUILTIN_SPECS, assert_as_found, call_kwargs, hf_logits, model_for, snapshot, tokens_for


def use_heavily(bridge: Bridge) -> None:
    toks = tokens_for(bridge)
    kwargs = call_kwargs(bridge.model, toks)
    with torch.no_grad():
        bridge.run_with_cache(toks, **kwargs)
        bridge.run_with_hooks(toks, fwd_hooks=[(lambda n: True, lambda t, h: t.clone())], **kwargs)
        patterns = [n for n in bridge.hook_names() if n.endswith("hook_pattern")]
        assert patterns
        bridge.run_with_hooks(toks, fwd_hooks=[(n, lambda t, h: t * 1.0) for n in patterns], **kwargs)
        bridge.add_hook(lambda n: True, lambda t, h: None)
        # internal attention hooks on the reimplement path (GPT-Neo, MPT, Falcon) do not support a KV cache yet
        reimplemented = any(b.attn.implementation == "reimplement" for b in bridge.bound.all_blocks())
        cache = bridge.is_encoder_decoder or not reimplemented
        bridge.generate(toks[:1, :4], max_new_tokens=3, use_past_kv_cache=cache)
        bridge.reset_hooks()
    with torch.enable_grad():
        logits = bridge.run_with_hooks(toks, bwd_hooks=[(lambda n: True, lambda g, h: None)], **kwargs)
        logits.float().square().mean().backward()
    bridge.model.zero_grad(set_to_none=True)


@pytest.mark.parametrize("spec", BUILTIN_SPECS)
def test_heavy_use_then_drop_leaves_the_model_as_found_and_a_second_bridge_works(spec):
    model = model_for(spec)
    reference = copy.deepcopy(model)
    model.train()  # a flag the bridge must neither read as permission nor change
    model.eval()
    model.get_input_embeddings().weight.requires_grad_(False)  # a user's frozen embedding stays frozen
    before = snapshot(model)
    bridge = Bridge.from_hf(model, spec=spec)
    use_heavily(bridge)
    del bridge
    gc.collect()
    assert_as_found(model, before)
    assert all(p.grad is None for p in model.parameters())
    second = Bridge.from_hf(model, spec=spec)
    toks = tokens_for(model)
    with torch.no_grad():
        assert torch.equal(second(toks, **call_kwargs(model, toks)), hf_logits(reference, toks))
    assert_as_found(model, before)


@pytest.mark.parametrize("spec", BUILTIN_SPECS)
def test_two_bridges_on_two_models_and_two_on_one_model_do_not_interfere(spec):
    first, second = model_for(spec, seed=0), model_for(spec, seed=1)
    ref_first, ref_second = copy.deepcopy(first), copy.deepcopy(second)
    a, b = Bridge.from_hf(first, spec=spec), Bridge.from_hf(second, spec=spec)
    a2 = Bridge.from_hf(first, spec=spec)
    toks = tokens_for(first)
    kwargs = call_kwargs(first, toks)
    expected = {
        id(a): hf_logits(ref_first, toks),
        id(b): hf_logits(ref_second, toks),
        id(a2): hf_logits(ref_first, toks),
    }
    assert not torch.equal(expected[id(a)], expected[id(b)]), (
        "the two models must differ for this test to mean anything"
    )
    patterns = [n for n in a.hook_names() if n.endswith("hook_pattern")][:2]
    caches = {}
    with torch.no_grad():
        # interleave: each call made while another bridge holds hooks on its own model (and on the same model)
        with (
            a.hooks(fwd_hooks=[(lambda n: True, lambda t, h: None)]),
            b.hooks(fwd_hooks=[(patterns[0], lambda t, h: None)]),
        ):
            for bridge in (a, b, a2, b, a):
                logits, cache = bridge.run_with_cache(
                    toks, names_filter=lambda n: n in patterns or "resid" in n, **kwargs
                )
                torch.testing.assert_close(logits, expected[id(bridge)], rtol=0, atol=1e-5)
                previous = caches.setdefault(id(bridge.model), dict(cache.items()))
                for name, value in cache.items():  # other hook sets route other layers to eager: 1e-5
                    torch.testing.assert_close(value, previous[name], rtol=0, atol=1e-5, msg=name)
        for bridge in (a, b, a2):
            assert torch.equal(bridge(toks, **kwargs), expected[id(bridge)])
    assert not any(torch.equal(caches[id(first)][n], caches[id(second)][n]) for n in patterns)
