"""Every hooked call works under `torch.inference_mode()` as under `no_grad`, with the same values.

Inference tensors have no version counter, so in-place edits are detected there by comparing with a
copy; the references are the untouched HF model (plain PyTorch hooks on a deep copy) and the same
call made under `no_grad`.
"""

from __future__ import annotations

import pytest
import torch

from ._helpers import bridge_and_reference, capture_outputs, hf_logits, tokens

SHAPE = "3L-h3-dh16-inner80"
MODULE_POINTS = ("hook_resid_pre", "hook_attn_out", "hook_resid_mid", "hook_mlp_out", "hook_resid_post")


@pytest.fixture(scope="module")
def pair():
    return bridge_and_reference(SHAPE)


@pytest.fixture(scope="module")
def toks():
    return tokens()


def identity(tensor, hook):
    return None


def module_point(name: str) -> bool:
    return name.endswith(MODULE_POINTS) or name in ("hook_embed", "hook_pos_embed") or ".mlp." in name


def test_run_with_cache_under_inference_mode_equals_the_untouched_model_and_no_grad(pair, toks):
    bridge, reference = pair
    with torch.inference_mode():
        logits, module_cache = bridge.run_with_cache(toks, names_filter=module_point)
        expected = reference(input_ids=toks).logits
        _, cache = bridge.run_with_cache(toks)
    assert logits.is_inference(), "the logits are HF's own, computed in inference mode"
    assert torch.equal(logits, expected)
    captured = capture_outputs(reference, toks, None, ["transformer.h.1.attn", "transformer.h.2.mlp"])
    assert torch.equal(module_cache["blocks.1.hook_attn_out"], captured["transformer.h.1.attn"])
    assert torch.equal(module_cache["blocks.2.hook_mlp_out"], captured["transformer.h.2.mlp"])
    with torch.no_grad():
        _, no_grad_cache = bridge.run_with_cache(toks)
    assert set(cache.keys()) == set(no_grad_cache.keys()) == set(bridge.hook_names())
    for name in bridge.hook_names():
        assert torch.equal(cache[name], no_grad_cache[name]), name


def test_identity_hooks_at_module_boundaries_keep_logits_bit_identical_under_inference_mode(pair, toks):
    bridge, reference = pair
    with torch.inference_mode():
        hooked = bridge.run_with_hooks(toks, fwd_hooks=[(module_point, identity)])
        expected = reference(input_ids=toks).logits
    assert torch.equal(hooked, expected)


def test_identity_hooks_on_every_point_give_the_same_logits_under_inference_mode_and_no_grad(pair, toks):
    bridge, _ = pair
    with torch.inference_mode():
        inference = bridge.run_with_hooks(toks, fwd_hooks=[(lambda name: True, identity)])
    with torch.no_grad():
        no_grad = bridge.run_with_hooks(toks, fwd_hooks=[(lambda name: True, identity)])
    assert torch.equal(inference, no_grad)


def _zero_head(index: tuple):
    def edit(tensor, hook):
        tensor[index] = 0.0  # in place, returning None

    return edit


# In-place edits at every kind of point. Recomputed values (norm scale, head results) and attention
# internals are lost unless the in-place edit itself is detected.
IN_PLACE_EDITS = {
    "module_input_z": ("blocks.1.attn.hook_z", _zero_head((slice(None), slice(None), 1))),
    "module_output_q": ("blocks.0.attn.hook_q", _zero_head((slice(None), slice(None), 2))),
    "in_place_resid_mid": ("blocks.1.hook_resid_mid", lambda t, h: t.mul_(0.5)),
    "norm_scale": ("ln_final.hook_scale", lambda t, h: t.mul_(2.0)),
    "norm_normalized": ("blocks.2.ln2.hook_normalized", lambda t, h: t.add_(0.25)),
    "head_result": ("blocks.1.attn.hook_result", _zero_head((slice(None), slice(None), 0))),
    "pattern": ("blocks.0.attn.hook_pattern", _zero_head((slice(None), 1))),
    "scores": ("blocks.2.attn.hook_attn_scores", lambda t, h: t.mul_(0.1)),
    "pos_embed_broadcast": ("hook_pos_embed", lambda t, h: t.add_(1.0)),
}


@pytest.mark.parametrize("edit", list(IN_PLACE_EDITS), ids=list(IN_PLACE_EDITS))
def test_an_in_place_edit_under_inference_mode_changes_logits_exactly_as_under_no_grad(pair, toks, edit):
    bridge, reference = pair
    hooks = [IN_PLACE_EDITS[edit]]
    with torch.no_grad():
        no_grad = bridge.run_with_hooks(toks, fwd_hooks=hooks)
    with torch.inference_mode():
        inference = bridge.run_with_hooks(toks, fwd_hooks=hooks)
        plain = reference(input_ids=toks).logits
    assert not torch.allclose(no_grad, plain), "the edit must change the logits for this test to mean anything"
    assert torch.equal(inference, no_grad)


def test_ablating_a_head_in_place_under_inference_mode_equals_the_ablation_by_hand(pair, toks):
    bridge, reference = pair
    head, d_head = 2, bridge.cfg.d_head

    def zero_columns(module, args):
        x = args[0].clone()
        x[..., head * d_head : (head + 1) * d_head] = 0.0
        return (x,)

    with torch.inference_mode():
        ablated = bridge.run_with_hooks(
            toks, fwd_hooks=[("blocks.2.attn.hook_z", _zero_head((..., head, slice(None))))]
        )
        handle = reference.transformer.h[2].attn.c_proj.register_forward_pre_hook(zero_columns)
        try:
            by_hand = reference(input_ids=toks).logits
        finally:
            handle.remove()
    assert torch.equal(ablated, by_hand)


def test_a_returned_tensor_under_inference_mode_replaces_the_point_as_under_no_grad(pair, toks):
    bridge, _ = pair
    hooks = [("blocks.1.hook_resid_mid", lambda t, h: t * 0.5), ("blocks.0.attn.hook_pattern", lambda t, h: t.flip(-1))]
    with torch.no_grad():
        no_grad = bridge.run_with_hooks(toks, fwd_hooks=hooks)
    with torch.inference_mode():
        inference = bridge.run_with_hooks(toks, fwd_hooks=hooks)
    assert torch.equal(inference, no_grad)


def test_hooks_context_add_hook_generate_and_layer_ranges_work_under_inference_mode(pair, toks):
    bridge, reference = pair
    edit = IN_PLACE_EDITS["head_result"]

    def run_all() -> dict[str, torch.Tensor]:
        out = {}
        with bridge.hooks(fwd_hooks=[edit]):
            out["hooks_context"] = bridge(toks)
        bridge.add_hook(*edit)
        try:
            out["add_hook"] = bridge(toks)
            out["generate"] = bridge.generate(toks[:1, :4], max_new_tokens=5)
            out["stop_at_layer"] = bridge(toks, stop_at_layer=2)
            out["start_at_layer"] = bridge(out["stop_at_layer"], start_at_layer=2)
        finally:
            bridge.reset_hooks()
        return out

    with torch.no_grad():
        expected = run_all()
    with torch.inference_mode():
        got = run_all()
    for name, value in expected.items():
        assert torch.equal(got[name], value), name
    assert not torch.equal(got["hooks_context"], hf_logits(reference, toks, None))
