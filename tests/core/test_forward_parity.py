"""Forward parity: the bridge's logits against the untouched HF model, with no hooks and identity hooks.

Parametrized over tiny GPT-2 shapes unlike the spec's test_config, sdpa and eager, and no / left /
right padding. Padded query positions are never compared where attention routing may differ (§3.3).
"""

from __future__ import annotations

import pytest
import torch
from torch.overrides import TorchFunctionMode

from ._helpers import (
    IMPLEMENTATIONS,
    PADDINGS,
    SHAPE_IDS,
    assert_close_at,
    bridge_and_reference,
    hf_logits,
    padding_mask,
    real_positions,
    tokens,
)

ATTENTION_INTERNAL_OR_RECOMPUTED = ("hook_attn_scores", "hook_pattern", "hook_scale", "hook_normalized", "hook_result")


def is_module_boundary(name: str) -> bool:
    return not name.endswith(ATTENTION_INTERNAL_OR_RECOMPUTED)


IDENTITY_HOOKS = {
    "returns_None": lambda tensor, hook: None,
    "returns_same_tensor": lambda tensor, hook: tensor,
    "returns_a_clone": lambda tensor, hook: tensor.clone(),
}


@pytest.fixture(params=SHAPE_IDS)
def shape(request) -> str:
    return request.param


@pytest.fixture(params=IMPLEMENTATIONS)
def implementation(request) -> str:
    return request.param


@pytest.fixture(params=PADDINGS)
def padding(request) -> str:
    return request.param


@torch.no_grad()
def test_no_hook_logits_are_bit_identical_to_the_untouched_model(shape, implementation, padding):
    bridge, reference = bridge_and_reference(shape, implementation)
    toks, mask = tokens(), padding_mask(padding)
    logits = bridge(toks, attention_mask=mask)
    assert torch.equal(logits, hf_logits(reference, toks, mask))


@torch.no_grad()
def test_no_hook_logits_are_bit_identical_for_a_single_unbatched_sequence(implementation):
    bridge, reference = bridge_and_reference("3L-h3-dh16-inner80", implementation)
    toks = tokens(1, 7)[0]
    assert torch.equal(bridge(toks), hf_logits(reference, toks[None], None))


@torch.no_grad()
def test_identity_hooks_on_every_point_keep_logits_within_1e5_at_real_positions(shape, implementation, padding):
    bridge, reference = bridge_and_reference(shape, implementation)
    toks, mask = tokens(), padding_mask(padding)
    logits = bridge.run_with_hooks(toks, fwd_hooks=[(lambda name: True, lambda t, h: None)], attention_mask=mask)
    assert_close_at(logits, hf_logits(reference, toks, mask), real_positions(mask), atol=1e-5)


@torch.no_grad()
def test_identity_hooks_at_module_boundary_points_keep_logits_bit_identical(shape, implementation, padding):
    """Hooks returning a clone: the bridge writes the (equal) replacement back, the strictest identity."""
    bridge, reference = bridge_and_reference(shape, implementation)
    toks, mask = tokens(), padding_mask(padding)
    boundary = [name for name in bridge.hook_names() if is_module_boundary(name)]
    assert any(".attn.hook_z" in name for name in boundary) and "hook_unembed" in boundary
    hooks = [(name, IDENTITY_HOOKS["returns_a_clone"]) for name in boundary]
    logits = bridge.run_with_hooks(toks, fwd_hooks=hooks, attention_mask=mask)
    assert torch.equal(logits, hf_logits(reference, toks, mask))


@pytest.mark.parametrize("identity", list(IDENTITY_HOOKS))
@torch.no_grad()
def test_each_kind_of_identity_hook_keeps_module_boundaries_bit_identical_and_all_points_within_1e5(padding, identity):
    bridge, reference = bridge_and_reference("2L-h8-dh8-inner_none", "sdpa")
    toks, mask = tokens(), padding_mask(padding)
    expected = hf_logits(reference, toks, mask)
    boundary = [name for name in bridge.hook_names() if is_module_boundary(name)]
    logits = bridge.run_with_hooks(
        toks, fwd_hooks=[(name, IDENTITY_HOOKS[identity]) for name in boundary], attention_mask=mask
    )
    assert torch.equal(logits, expected)
    logits = bridge.run_with_hooks(toks, fwd_hooks=[(lambda n: True, IDENTITY_HOOKS[identity])], attention_mask=mask)
    assert_close_at(logits, expected, real_positions(mask), atol=1e-5)


@torch.no_grad()
def test_identity_hooks_at_attention_internals_keep_logits_within_1e5(implementation, padding):
    bridge, reference = bridge_and_reference("2L-h8-dh8-inner_none", implementation)
    toks, mask = tokens(), padding_mask(padding)
    internal = [name for name in bridge.hook_names() if not is_module_boundary(name)]
    hooks = [(name, IDENTITY_HOOKS["returns_a_clone"]) for name in internal]
    logits = bridge.run_with_hooks(toks, fwd_hooks=hooks, attention_mask=mask)
    assert_close_at(logits, hf_logits(reference, toks, mask), real_positions(mask), atol=1e-5)


@torch.no_grad()
def test_run_with_cache_logits_match_the_untouched_model_at_real_positions(implementation, padding):
    bridge, reference = bridge_and_reference("3L-h3-dh16-inner80", implementation)
    toks, mask = tokens(), padding_mask(padding)
    logits, cache = bridge.run_with_cache(toks, attention_mask=mask)
    assert set(cache) == set(bridge.hook_names())
    assert_close_at(logits, hf_logits(reference, toks, mask), real_positions(mask), atol=1e-5)


@torch.no_grad()
def test_caching_only_module_boundary_points_keeps_sdpa_logits_bit_identical(padding):
    bridge, reference = bridge_and_reference("2L-h2-dh16-inner48", "sdpa")
    toks, mask = tokens(), padding_mask(padding)
    logits, cache = bridge.run_with_cache(toks, names_filter=is_module_boundary, attention_mask=mask)
    assert "blocks.1.hook_resid_post" in cache and "blocks.0.attn.hook_pattern" not in cache
    assert torch.equal(logits, hf_logits(reference, toks, mask))


@torch.no_grad()
def test_longest_input_the_position_table_allows_matches_the_untouched_model():
    bridge, reference = bridge_and_reference("1L-h4-dh8-inner_none")
    toks = tokens(2, bridge.cfg.n_ctx)
    assert torch.equal(bridge(toks), hf_logits(reference, toks, None))
    logits, _ = bridge.run_with_cache(toks)
    torch.testing.assert_close(logits, hf_logits(reference, toks, None), rtol=0, atol=1e-5)


@pytest.mark.parametrize("use_cache", [True, False])
@torch.no_grad()
def test_model_keyword_arguments_pass_through_unchanged(implementation, use_cache):
    """`bridge(x, **kw)` is `model(x, **kw)`: HF's eager logits differ in the last bits with use_cache on and off."""
    bridge, reference = bridge_and_reference("2L-h2-dh16-inner48", implementation)
    toks = tokens()
    expected = reference(input_ids=toks, use_cache=use_cache).logits
    assert torch.equal(bridge(toks, use_cache=use_cache), expected)


@pytest.mark.parametrize("seq", [1, 2])
@torch.no_grad()
def test_very_short_sequences_match_the_untouched_model(implementation, seq):
    bridge, reference = bridge_and_reference("2L-h2-dh16-inner48", implementation)
    toks = tokens(2, seq)
    expected = hf_logits(reference, toks, None)
    logits, cache = bridge.run_with_cache(toks)
    torch.testing.assert_close(logits, expected, rtol=0, atol=1e-5)
    assert torch.equal(cache["blocks.0.attn.hook_pattern"][..., 0, 0], torch.ones(2, bridge.cfg.n_heads))


class CountSdpaCalls(TorchFunctionMode):
    def __init__(self):
        super().__init__()
        self.calls = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func is torch.nn.functional.scaled_dot_product_attention:
            self.calls += 1
        return func(*args, **(kwargs or {}))


@torch.no_grad()
def test_only_layers_with_attention_internal_hooks_leave_sdpa():
    bridge, reference = bridge_and_reference("3L-h3-dh16-inner80", "sdpa")
    toks = tokens()
    with CountSdpaCalls() as plain:
        bridge(toks)
    with CountSdpaCalls() as one_layer:
        logits = bridge.run_with_hooks(toks, fwd_hooks=[("blocks.1.attn.hook_pattern", lambda t, h: None)])
    with CountSdpaCalls() as boundary_only:
        bridge.run_with_cache(toks, names_filter=is_module_boundary)
    assert (plain.calls, one_layer.calls, boundary_only.calls) == (3, 2, 3)
    torch.testing.assert_close(logits, hf_logits(reference, toks, None), rtol=0, atol=1e-5)
