"""Norm values only the cache reads are computed after the forward, every norm of one shape at once
(`bridge/norm_values.py`, decision 0028). Checked as behaviour: the values are HookedTransformer's
LayerNorm formula applied to what each norm module received, bit for bit, in the order the points
fired; the stacked computation runs once; an in-place change of a norm's input after the norm ran
is still seen (the value is what the norm saw); an early stop keeps the norms that ran; an edit
hook at a norm point still sees and makes its edit."""

from __future__ import annotations

import pytest
import torch
from torch.profiler import ProfilerActivity, profile
from transformers import GPT2Config, GPT2LMHeadModel

from bridge_core import Bridge

NORMS = [f"transformer.h.{i}.ln_{j}" for i in (0, 1) for j in (1, 2)] + ["transformer.ln_f"]
NAMES = ["blocks.0.ln1", "blocks.0.ln2", "blocks.1.ln1", "blocks.1.ln2", "ln_final"]


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    config = GPT2Config(n_layer=2, n_embd=64, n_head=4, vocab_size=100, bos_token_id=0, eos_token_id=0)
    model = GPT2LMHeadModel(config).eval()
    return model, Bridge.from_hf(model), torch.randint(0, 100, (2, 7))


def _norm_inputs(model, run):
    """What each LayerNorm module received (copied at its call), while `run()` runs."""
    seen: dict[str, torch.Tensor] = {}
    modules = dict(model.named_modules())
    handles = [
        modules[path].register_forward_pre_hook(lambda m, a, path=path: seen.__setitem__(path, a[0].clone()))
        for path in NORMS
    ]
    try:
        result = run()
    finally:
        for handle in handles:
            handle.remove()
    return seen, result


def _hooked_transformer_ln(x: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    centred = x - x.mean(-1, keepdim=True)
    scale = (centred.pow(2).mean(-1, keepdim=True) + eps).sqrt()
    return scale, centred / scale


def test_deferred_values_are_the_formula_on_each_norm_s_input_in_firing_order(tiny):
    model, bridge, tokens = tiny
    with torch.no_grad():
        seen, (_, cache) = _norm_inputs(model, lambda: bridge.run_with_cache(tokens))
    for path, name in zip(NORMS, NAMES, strict=True):
        scale, normalized = _hooked_transformer_ln(seen[path], model.config.layer_norm_epsilon)
        assert torch.equal(cache[f"{name}.hook_scale"], scale), name
        assert torch.equal(cache[f"{name}.hook_normalized"], normalized), name
    assert list(cache.keys()) == bridge.hook_names()  # the order the points fired in, norms included


def test_the_norms_are_computed_together_once(tiny):
    _, bridge, tokens = tiny
    names = [f"{n}.hook_{w}" for n in NAMES for w in ("scale", "normalized")]
    with torch.no_grad():
        bridge.run_with_cache(tokens, names_filter=names)
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            bridge.run_with_cache(tokens, names_filter=names)
    counts = {e.key: e.count for e in prof.key_averages()}
    # one stacked computation: two means (centre, mean of squares), one sqrt, one division
    assert counts.get("aten::stack") == 1 and counts.get("aten::mean") == 2 and counts.get("aten::sqrt") == 1


def test_an_in_place_change_after_the_norm_ran_does_not_reach_its_values(tiny):
    model, _, tokens = tiny
    ln_2 = model.transformer.h[0].ln_2
    kept: dict[str, torch.Tensor] = {}

    def at_ln_2(module, args):
        kept["x"], kept["before"] = args[0], args[0].clone()

    def after_mlp(module, args, output):  # as a family that adds into its residual in place would
        kept["x"].add_(1.0)

    fresh = Bridge.from_hf(model)  # a bridge that has learned nothing yet
    handles = [ln_2.register_forward_pre_hook(at_ln_2), model.transformer.h[0].mlp.register_forward_hook(after_mlp)]
    try:
        with torch.no_grad():
            _, cache = fresh.run_with_cache(tokens, names_filter=lambda n: n.startswith("blocks.0.ln2"))
    finally:
        for handle in handles:
            handle.remove()
    scale, normalized = _hooked_transformer_ln(kept["before"], model.config.layer_norm_epsilon)
    assert torch.equal(cache["blocks.0.ln2.hook_scale"], scale)
    assert torch.equal(cache["blocks.0.ln2.hook_normalized"], normalized)


def test_an_early_stop_keeps_the_norms_that_ran(tiny):
    model, bridge, tokens = tiny
    with torch.no_grad():
        seen, (_, cache) = _norm_inputs(model, lambda: bridge.run_with_cache(tokens, stop_at_layer=1))
    assert not any(name.startswith(("blocks.1", "ln_final")) for name in cache)
    for path, name in zip(NORMS[:2], NAMES[:2], strict=True):
        scale, normalized = _hooked_transformer_ln(seen[path], model.config.layer_norm_epsilon)
        assert torch.equal(cache[f"{name}.hook_scale"], scale)
        assert torch.equal(cache[f"{name}.hook_normalized"], normalized)


def test_an_edited_norm_point_that_is_also_cached_shows_the_edit(tiny):
    _, bridge, tokens = tiny
    with torch.no_grad():
        clean = bridge.run_with_cache(tokens)[1]
        with bridge.hooks(fwd_hooks=[("blocks.0.ln2.hook_normalized", lambda t, hook: t * 0.5)]):
            _, cache = bridge.run_with_cache(tokens)
    assert torch.equal(cache["blocks.0.ln2.hook_normalized"], clean["blocks.0.ln2.hook_normalized"] * 0.5)
    assert torch.equal(cache["blocks.0.ln2.hook_scale"], clean["blocks.0.ln2.hook_scale"])
    assert not torch.equal(cache["blocks.0.hook_mlp_out"], clean["blocks.0.hook_mlp_out"])
    assert torch.equal(cache["blocks.0.ln1.hook_normalized"], clean["blocks.0.ln1.hook_normalized"])
