"""Interventions: +δ reaches everything downstream exactly once, in-place edits equal returned edits,
head ablation equals the same ablation done by hand on the untouched model, bad returns raise."""

from __future__ import annotations

import pytest
import torch

from bridge_core import Bridge

from ._helpers import assert_as_found, bridge_and_reference, hf_logits, snapshot, tiny_gpt2, tokens

SHAPE = "3L-h3-dh16-inner80"


@pytest.fixture(scope="module")
def pair():
    return bridge_and_reference(SHAPE)


@pytest.fixture(scope="module")
def toks():
    return tokens()


def delta_like(d_model: int, seed: int = 7) -> torch.Tensor:
    return torch.randn(d_model, generator=torch.Generator().manual_seed(seed))


def add(delta):
    def hook(tensor, hook):
        return tensor + delta

    return hook


@torch.no_grad()
def test_delta_at_resid_mid_equals_delta_at_attn_out(pair, toks):
    bridge, _ = pair
    delta = delta_like(bridge.cfg.d_model)
    for layer in range(bridge.cfg.n_layers):
        at_mid = bridge.run_with_hooks(toks, fwd_hooks=[(f"blocks.{layer}.hook_resid_mid", add(delta))])
        at_attn = bridge.run_with_hooks(toks, fwd_hooks=[(f"blocks.{layer}.hook_attn_out", add(delta))])
        assert not torch.allclose(at_mid, bridge(toks)), "the edit had no effect"
        torch.testing.assert_close(at_mid, at_attn, rtol=0, atol=1e-6)


@torch.no_grad()
def test_delta_at_resid_pre_of_next_block_equals_delta_at_resid_post_of_this_block(pair, toks):
    bridge, _ = pair
    delta = delta_like(bridge.cfg.d_model)
    for layer in range(bridge.cfg.n_layers - 1):
        at_post = bridge.run_with_hooks(toks, fwd_hooks=[(f"blocks.{layer}.hook_resid_post", add(delta))])
        at_pre = bridge.run_with_hooks(toks, fwd_hooks=[(f"blocks.{layer + 1}.hook_resid_pre", add(delta))])
        torch.testing.assert_close(at_post, at_pre, rtol=0, atol=1e-6)


@torch.no_grad()
def test_delta_at_last_resid_post_equals_delta_at_ln_final_input(pair, toks):
    bridge, reference = pair
    delta = delta_like(bridge.cfg.d_model)
    last = bridge.cfg.n_layers - 1
    edited = bridge.run_with_hooks(toks, fwd_hooks=[(f"blocks.{last}.hook_resid_post", add(delta))])
    handle = reference.transformer.ln_f.register_forward_pre_hook(lambda module, args: (args[0] + delta,))
    try:
        by_hand = hf_logits(reference, toks, None)
    finally:
        handle.remove()
    torch.testing.assert_close(edited, by_hand, rtol=0, atol=1e-5)


# (point edited, the residual-stream quantity downstream of it that must move by exactly delta)
DOWNSTREAM = {
    "hook_embed": lambda c, i: c["blocks.0.hook_resid_pre"],
    "hook_pos_embed": lambda c, i: c["blocks.0.hook_resid_pre"],
    "blocks.{i}.hook_resid_pre": lambda c, i: c[f"blocks.{i}.hook_resid_mid"] - c[f"blocks.{i}.hook_attn_out"],
    "blocks.{i}.hook_attn_out": lambda c, i: c[f"blocks.{i}.hook_resid_mid"],
    "blocks.{i}.hook_resid_mid": lambda c, i: c[f"blocks.{i}.hook_resid_post"] - c[f"blocks.{i}.hook_mlp_out"],
    "blocks.{i}.hook_mlp_out": lambda c, i: c[f"blocks.{i}.hook_resid_post"],
}


@pytest.mark.parametrize("edited", list(DOWNSTREAM))
@torch.no_grad()
def test_delta_at_a_point_moves_the_downstream_residual_by_exactly_one_delta(pair, toks, edited):
    bridge, _ = pair
    delta = delta_like(bridge.cfg.d_model)
    downstream = DOWNSTREAM[edited]
    _, clean = bridge.run_with_cache(toks)
    layers = range(bridge.cfg.n_layers) if "{i}" in edited else [0]
    for layer in layers:
        with bridge.hooks(fwd_hooks=[(edited.format(i=layer), add(delta))]):
            _, cache = bridge.run_with_cache(toks)
        expected = downstream(clean, layer) + delta
        torch.testing.assert_close(downstream(cache, layer), expected, rtol=0, atol=1e-5)


@torch.no_grad()
def test_delta_at_v_moves_z_by_exactly_delta_because_pattern_rows_sum_to_one(pair, toks):
    bridge, _ = pair
    cfg = bridge.cfg
    delta = torch.randn(cfg.n_heads, cfg.d_head, generator=torch.Generator().manual_seed(3))
    _, clean = bridge.run_with_cache(toks, names_filter=lambda n: n.endswith("hook_z"))
    with bridge.hooks(fwd_hooks=[("blocks.1.attn.hook_v", add(delta))]):
        _, cache = bridge.run_with_cache(toks, names_filter=lambda n: n.endswith("hook_z"))
    torch.testing.assert_close(cache["blocks.1.attn.hook_z"], clean["blocks.1.attn.hook_z"] + delta, rtol=0, atol=1e-5)
    assert torch.equal(cache["blocks.0.attn.hook_z"], clean["blocks.0.attn.hook_z"])


# --------------------------------------------------------------------------- in place vs returned
EDIT_POINTS = [
    "hook_embed",
    "hook_pos_embed",
    "blocks.1.hook_resid_pre",
    "blocks.1.ln1.hook_scale",
    "blocks.1.ln1.hook_normalized",
    "blocks.1.attn.hook_q",
    "blocks.1.attn.hook_k",
    "blocks.1.attn.hook_v",
    "blocks.1.attn.hook_attn_scores",
    "blocks.1.attn.hook_pattern",
    "blocks.1.attn.hook_z",
    "blocks.1.attn.hook_result",
    "blocks.1.hook_attn_out",
    "blocks.1.hook_resid_mid",
    "blocks.1.ln2.hook_normalized",
    "blocks.1.mlp.hook_pre",
    "blocks.1.mlp.hook_post",
    "blocks.1.hook_mlp_out",
    "blocks.1.hook_resid_post",
    "ln_final.hook_scale",
    "ln_final.hook_normalized",
    "hook_unembed",
]


@pytest.mark.parametrize("point", EDIT_POINTS)
@torch.no_grad()
def test_editing_in_place_and_returning_none_equals_returning_an_edited_tensor(pair, toks, point):
    bridge, _ = pair

    def in_place(tensor, hook):
        tensor.mul_(1.5).add_(0.25)

    def returned(tensor, hook):
        return tensor * 1.5 + 0.25

    clean = bridge(toks)
    by_return = bridge.run_with_hooks(toks, fwd_hooks=[(point, returned)])
    by_in_place = bridge.run_with_hooks(toks, fwd_hooks=[(point, in_place)])
    assert not torch.allclose(by_return, clean), "the edit had no effect"
    torch.testing.assert_close(by_in_place, by_return, rtol=0, atol=1e-6)


@torch.no_grad()
def test_a_later_hook_on_the_same_point_sees_the_earlier_hooks_edit(pair, toks):
    bridge, _ = pair
    seen = []
    bridge.run_with_hooks(
        toks,
        fwd_hooks=[
            ("blocks.0.attn.hook_q", lambda t, h: torch.zeros_like(t)),
            ("blocks.0.attn.hook_q", lambda t, h: seen.append(t.abs().max().item())),
        ],
    )
    assert seen == [0.0]


# --------------------------------------------------------------------------- ablation vs by hand
@pytest.mark.parametrize("layer,head", [(0, 0), (1, 2), (2, 1)])
@torch.no_grad()
def test_ablating_a_head_via_hook_z_equals_zeroing_its_o_projection_input_by_hand(pair, toks, layer, head):
    bridge, reference = pair
    d_head = bridge.cfg.d_head

    def ablate(z, hook):
        z[:, :, head, :] = 0.0

    ablated = bridge.run_with_hooks(toks, fwd_hooks=[(f"blocks.{layer}.attn.hook_z", ablate)])

    def zero_columns(module, args):
        x = args[0].clone()
        x[..., head * d_head : (head + 1) * d_head] = 0.0
        return (x,)

    handle = reference.transformer.h[layer].attn.c_proj.register_forward_pre_hook(zero_columns)
    try:
        by_hand = hf_logits(reference, toks, None)
    finally:
        handle.remove()
    assert not torch.allclose(by_hand, hf_logits(reference, toks, None))
    torch.testing.assert_close(ablated, by_hand, rtol=0, atol=1e-6)


@torch.no_grad()
def test_ablating_a_head_via_hook_result_equals_the_same_ablation_by_hand(pair, toks):
    bridge, reference = pair
    layer, head, d_head = 1, 1, bridge.cfg.d_head

    def ablate(result, hook):
        result[:, :, head, :] = 0.0

    ablated = bridge.run_with_hooks(toks, fwd_hooks=[(f"blocks.{layer}.attn.hook_result", ablate)])

    def zero_columns(module, args):
        x = args[0].clone()
        x[..., head * d_head : (head + 1) * d_head] = 0.0
        return (x,)

    handle = reference.transformer.h[layer].attn.c_proj.register_forward_pre_hook(zero_columns)
    try:
        by_hand = hf_logits(reference, toks, None)
    finally:
        handle.remove()
    torch.testing.assert_close(ablated, by_hand, rtol=0, atol=1e-5)


@torch.no_grad()
def test_zeroing_the_pattern_of_a_head_zeroes_its_z(pair, toks):
    bridge, _ = pair

    def zero_head(pattern, hook):
        pattern[:, 1] = 0.0

    with bridge.hooks(fwd_hooks=[("blocks.0.attn.hook_pattern", zero_head)]):
        _, cache = bridge.run_with_cache(toks, names_filter=["blocks.0.attn.hook_z", "blocks.0.attn.hook_pattern"])
    assert bool((cache["blocks.0.attn.hook_pattern"][:, 1] == 0).all())
    assert bool((cache["blocks.0.attn.hook_z"][:, :, 1] == 0).all())
    assert bool((cache["blocks.0.attn.hook_z"][:, :, 0] != 0).any())


# --------------------------------------------------------------------------- bad return values
WRONG_SHAPE_POINTS = [
    "blocks.0.hook_resid_pre",
    "blocks.0.ln1.hook_normalized",
    "blocks.0.attn.hook_q",
    "blocks.0.attn.hook_attn_scores",
    "blocks.0.attn.hook_pattern",
    "blocks.0.attn.hook_z",
    "blocks.0.attn.hook_result",
    "blocks.0.hook_resid_mid",
    "blocks.0.hook_mlp_out",
    "hook_unembed",
]


@pytest.mark.parametrize("point", WRONG_SHAPE_POINTS)
@torch.no_grad()
def test_returning_a_tensor_of_the_wrong_shape_raises_and_leaves_nothing_attached(point):
    model = tiny_gpt2(SHAPE)
    before = snapshot(model)
    bridge = Bridge.from_hf(model, spec="gpt2")
    with pytest.raises(ValueError, match="shape"):
        bridge.run_with_hooks(tokens(), fwd_hooks=[(point, lambda t, h: t[..., :-1])])
    assert_as_found(model, before)
    assert torch.equal(bridge(tokens()), hf_logits(model, tokens(), None))


@torch.no_grad()
def test_returning_something_other_than_a_tensor_raises(pair, toks):
    bridge, _ = pair
    with pytest.raises((TypeError, ValueError)):
        bridge.run_with_hooks(toks, fwd_hooks=[("blocks.0.hook_resid_post", lambda t, h: t.tolist())])


# --------------------------------------------------------------------------- edits of recomputed and internal values
@torch.no_grad()
def test_halving_ln_final_scale_is_recomputed_into_the_norm_output(pair, toks):
    bridge, reference = pair
    _, clean = bridge.run_with_cache(toks)
    edited = bridge.run_with_hooks(toks, fwd_hooks=[("ln_final.hook_scale", lambda t, h: t * 2.0)])
    ln_f = reference.transformer.ln_f
    by_hand = (clean["ln_final.hook_normalized"] / 2.0 * ln_f.weight + ln_f.bias) @ reference.lm_head.weight.T
    torch.testing.assert_close(edited, by_hand, rtol=0, atol=1e-5)


@torch.no_grad()
def test_zeroing_ln1_normalized_leaves_only_the_norm_bias_in_q(pair, toks):
    bridge, reference = pair
    with bridge.hooks(fwd_hooks=[("blocks.1.ln1.hook_normalized", lambda t, h: torch.zeros_like(t))]):
        _, cache = bridge.run_with_cache(toks, names_filter="blocks.1.attn.hook_q")
    cfg, hf = bridge.cfg, reference.transformer.h[1]
    q_by_hand = (hf.ln_1.bias @ hf.attn.c_attn.weight + hf.attn.c_attn.bias)[: cfg.d_model]
    expected = q_by_hand.reshape(cfg.n_heads, cfg.d_head).expand_as(cache["blocks.1.attn.hook_q"])
    torch.testing.assert_close(cache["blocks.1.attn.hook_q"], expected, rtol=0, atol=1e-6)


@torch.no_grad()
def test_a_uniform_pattern_over_allowed_keys_makes_z_the_running_mean_of_v(pair, toks):
    bridge, _ = pair
    seq = toks.shape[1]
    uniform = torch.ones(seq, seq).tril()
    uniform = uniform / uniform.sum(-1, keepdim=True)
    with bridge.hooks(fwd_hooks=[("blocks.2.attn.hook_pattern", lambda t, h: uniform.expand_as(t).clone())]):
        _, cache = bridge.run_with_cache(toks, names_filter=["blocks.2.attn.hook_v", "blocks.2.attn.hook_z"])
    v = cache["blocks.2.attn.hook_v"]
    running_mean = v.cumsum(1) / torch.arange(1, seq + 1)[None, :, None, None]
    torch.testing.assert_close(cache["blocks.2.attn.hook_z"], running_mean, rtol=0, atol=1e-6)


@torch.no_grad()
def test_adding_a_constant_to_attn_scores_leaves_the_pattern_and_logits_unchanged(pair, toks):
    bridge, reference = pair
    shifted = bridge.run_with_hooks(toks, fwd_hooks=[(lambda n: n.endswith("hook_attn_scores"), lambda t, h: t + 3.0)])
    torch.testing.assert_close(shifted, hf_logits(reference, toks, None), rtol=0, atol=1e-5)


# --------------------------------------------------------------------------- edits carry gradients
@pytest.mark.parametrize(
    "point,equivalent",
    [("blocks.1.hook_resid_mid", "blocks.1.hook_attn_out"), ("blocks.0.hook_resid_pre", "hook_embed")],
)
def test_a_steering_vector_gets_the_same_gradient_at_equivalent_points(pair, toks, point, equivalent):
    bridge, _ = pair
    weights = torch.randn(*toks.shape, bridge.cfg.d_vocab, generator=torch.Generator().manual_seed(2))
    grads = []
    for name in (point, equivalent):
        steer = torch.zeros(bridge.cfg.d_model, requires_grad=True)
        logits = bridge.run_with_hooks(toks, fwd_hooks=[(name, lambda t, h, s=steer: t + s)])
        (logits * weights).sum().backward()
        grads.append(steer.grad)
    bridge.model.zero_grad(set_to_none=True)
    assert grads[0].abs().sum() > 0
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-5, atol=1e-6)


def test_a_steering_vector_on_a_head_view_gets_the_gradient_of_that_slice(pair, toks):
    """+s on hook_v head h: d(loss)/ds is the sum over positions of the gradient of that head's v."""
    bridge, reference = pair
    cfg = bridge.cfg
    weights = torch.randn(*toks.shape, cfg.d_vocab, generator=torch.Generator().manual_seed(2))
    steer = torch.zeros(cfg.n_heads, cfg.d_head, requires_grad=True)
    logits = bridge.run_with_hooks(toks, fwd_hooks=[("blocks.1.attn.hook_v", lambda t, h: t + steer)])
    (logits * weights).sum().backward()
    bridge.model.zero_grad(set_to_none=True)
    kept = {}

    def keep(module, args, output):
        output.retain_grad()
        kept["c_attn"] = output

    handle = reference.transformer.h[1].attn.c_attn.register_forward_hook(keep)
    try:
        (reference(toks).logits * weights).sum().backward()
    finally:
        handle.remove()
    reference.zero_grad(set_to_none=True)
    v_grad = kept["c_attn"].grad[..., 2 * cfg.d_model :].unflatten(-1, (cfg.n_heads, cfg.d_head))
    torch.testing.assert_close(steer.grad, v_grad.sum((0, 1)), rtol=1e-5, atol=1e-6)
