"""Blocks called on their own, and the two attention paths (interface and reimplement) agreeing.

Block outputs are captured with plain forward hooks on the untouched copy; the reimplement bridge
wraps a second deep copy of the same model, built before either bridge exists.
"""

from __future__ import annotations

import copy
import functools

import torch

from bridge_core import Bridge

from ._models import VARIANTS, assert_close_at, block_path, build_run, spec, tiny_model


def test_each_block_called_alone_on_resid_pre_equals_the_hf_block_output(run):
    paths = [block_path(run.family, i) for i in range(run.n_layers)]
    hf = run.hf_outputs(paths)
    caller = run.bridge.components
    for i in range(run.n_layers):
        with torch.no_grad():
            out = caller.block(i, run.cache[f"blocks.{i}.hook_resid_pre"], run.mask)
        assert_close_at(out, hf[paths[i]], run.real)
        # a post-norm block's output is its normalized residual
        last = (
            "hook_normalized_resid_post" if f"blocks.{i}.hook_normalized_resid_post" in run.cache else "hook_resid_post"
        )
        assert_close_at(out, run.cache[f"blocks.{i}.{last}"], run.real)


@functools.cache
def reimplemented(name: str, padding: str):
    """A bridge on the reimplement path over an untouched copy of the run's model, and its cached forward."""
    base = build_run(name, padding)
    bridge = Bridge.from_hf(copy.deepcopy(base.reference), spec=spec(name, "reimplement"))
    with torch.no_grad():
        logits, cache = bridge.run_with_cache(base.toks, attention_mask=base.mask)
    return bridge, logits, cache


def test_reimplement_path_gives_the_same_cache_and_logits_as_the_interface_path(run):
    bridge, logits, cache = reimplemented(run.name, run.padding)
    assert bridge.hook_names() == run.bridge.hook_names()
    assert_close_at(logits, run.logits, run.real)
    for name in run.bridge.hook_names():
        ours, theirs = cache[name], run.cache[name]
        assert ours.shape == theirs.shape, name
        if name.endswith(("hook_attn_scores", "hook_pattern")):
            layer = int(name.split(".")[1])
            where = run.real_rows(ours) & run.allowed(layer).expand_as(ours)
            torch.testing.assert_close(ours[where], theirs[where], rtol=0, atol=1e-5, msg=name)
        elif ours.dim() >= 2 and ours.shape[:2] == run.toks.shape:
            assert_close_at(ours, theirs, run.real)
        else:  # [1, s, d] position table rows
            torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-5, msg=name)


def zero_head_0(pattern: torch.Tensor, hook) -> torch.Tensor:
    pattern = pattern.clone()
    pattern[:, 0] = 0
    return pattern


def test_zeroing_head_0_of_a_pattern_has_the_same_effect_on_both_attention_paths(run):
    bridge, _, _ = reimplemented(run.name, run.padding)
    layer = run.n_layers - 1
    hooks = [(f"blocks.{layer}.attn.hook_pattern", zero_head_0)]
    with torch.no_grad():
        interface = run.bridge.run_with_hooks(run.toks, fwd_hooks=hooks, attention_mask=run.mask)
        reimplement = bridge.run_with_hooks(run.toks, fwd_hooks=hooks, attention_mask=run.mask)
    assert_close_at(reimplement, interface, run.real)
    change = (interface - run.logits)[run.real].abs().max()
    assert change > 1e-3, "zeroing a head did not change the logits"


def test_sdpa_models_keep_sdpa_with_only_a_residual_hook_and_go_eager_for_internal_hooks():
    for name, variant in VARIANTS.items():
        if variant.attn_implementation != "sdpa":
            continue
        model = tiny_model(name)
        for implementation in ("interface", "reimplement"):
            bridge = Bridge.from_hf(model, spec=spec(name, implementation))
            seen: dict[str, str] = {}

            def read(tensor, hook, seen=seen, bridge=bridge):
                seen[hook.name] = bridge.model.config._attn_implementation

            toks = torch.randint(3, 50, (2, 6))
            with torch.no_grad():
                bridge.run_with_hooks(toks, fwd_hooks=[("blocks.1.hook_resid_pre", read)])
                bridge.run_with_hooks(
                    toks,
                    fwd_hooks=[("blocks.0.attn.hook_pattern", lambda t, h: None), ("blocks.1.hook_resid_pre", read)],
                )
            assert seen["blocks.1.hook_resid_pre"] == ("sdpa" if implementation == "reimplement" else "bridge_core"), (
                name
            )
            with torch.no_grad():
                bridge.run_with_hooks(toks, fwd_hooks=[("blocks.1.hook_resid_pre", read)])
            assert seen["blocks.1.hook_resid_pre"] == "sdpa", f"{name} ({implementation}) left sdpa with a resid hook"
            assert model.config._attn_implementation == "sdpa"
