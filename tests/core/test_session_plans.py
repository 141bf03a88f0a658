"""Hook layouts are kept between calls (dispatch._Plan) without leaking functions or state: repeated
and interleaved calls give the values of fresh bridges, and a bridge called from inside its own hook
gets a layout of its own."""

from __future__ import annotations

import copy

import torch

from bridge_core import Bridge


def test_repeated_and_interleaved_calls_give_the_values_a_fresh_bridge_gives():
    bridge = Bridge.from_spec("gpt2")
    tokens = torch.randint(0, bridge.cfg.d_vocab, (2, 6), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        first = bridge.run_with_cache(tokens)[1]
        resid = bridge.run_with_cache(tokens, names_filter=lambda n: "resid" in n)[1]
        again = bridge.run_with_cache(tokens)[1]
        fresh = Bridge.from_hf(copy.deepcopy(bridge.model), "gpt2").run_with_cache(tokens)[1]
    assert set(first) == set(again) == set(fresh) and set(resid) == {n for n in fresh if "resid" in n}
    for name in fresh:
        assert torch.equal(again[name], fresh[name]) and torch.equal(first[name], fresh[name]), name


def test_a_kept_layout_holds_no_user_function_after_the_call():
    bridge = Bridge.from_spec("gpt2")
    tokens = torch.randint(0, bridge.cfg.d_vocab, (1, 5))
    with torch.no_grad():
        bridge.run_with_hooks(tokens, fwd_hooks=[("blocks.0.attn.hook_pattern", lambda t, hook: t)])
    assert bridge._plans, "the layout is kept"
    for plan in bridge._plans.values():
        assert not plan.in_use
        assert all(not run.fwd and not run.bwd for run in plan.runs.values())


def test_a_bridge_called_from_inside_its_own_hook_runs_with_a_layout_of_its_own():
    bridge = Bridge.from_spec("gpt2")
    reference = copy.deepcopy(bridge.model)
    tokens = torch.randint(0, bridge.cfg.d_vocab, (1, 5))
    inner: list[torch.Tensor] = []
    depth = [0]

    def call_again(resid, hook):
        if depth[0] == 0:  # once: the inner call runs the same hooks, which must not recurse again
            depth[0] += 1
            inner.append(bridge(tokens))

    with torch.no_grad():
        outer = bridge.run_with_hooks(tokens, fwd_hooks=[("blocks.0.hook_resid_post", call_again)])
        expected = reference(tokens).logits
    assert torch.equal(outer, expected) and torch.equal(inner[0], expected)
