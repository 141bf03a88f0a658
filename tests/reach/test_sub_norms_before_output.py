"""Norms before the output projections (BitNet's `attn_sub_norm` and `ffn_sub_norm`; decision 0026): the unedited
draft names them `block.attn.o_norm` / `block.mlp.out_norm` and passes its checks. `hook_z` and `mlp.hook_post`
are the norms' inputs (what attention and the activation computed), taken from the untouched HF model with plain
torch hooks; `hook_result` is the output projection of the normalized heads, computed by hand from the weights.
Drafts without either norm fail `attn_output` / `mlp` (tests/conformance/test_self_proof.py)."""

from __future__ import annotations

import copy

import pytest
import torch
from transformers.activations import ACT2FN

from bridge_core import Bridge
from bridge_core.bridge import loading
from bridge_core.conformance.runner import run
from bridge_core.drafting import draft_model_type, to_spec
from bridge_core.drafting.reach import FAST_CHECKS
from bridge_core.errors import ProcessingError
from tests._hf_edits import logits_with_input_slice_zeroed


@pytest.fixture(scope="module")
def draft():
    return draft_model_type("bitnet")


@pytest.fixture(scope="module")
def spec(draft):
    return to_spec(draft)


@pytest.fixture(scope="module")
def pair(spec):
    torch.manual_seed(0)
    model = loading.random_model(spec, tiny=True)
    with torch.no_grad():  # fresh RMSNorm weights are ones: make the sub-norms' weights matter
        for layer in model.model.layers:
            layer.self_attn.attn_sub_norm.weight.uniform_(0.5, 1.5)
            layer.mlp.ffn_sub_norm.weight.uniform_(0.5, 1.5)
    untouched = copy.deepcopy(model).eval()
    return Bridge.from_hf(model, spec), untouched


def _inputs_of(model, paths: list[str], tokens: torch.Tensor) -> dict[str, torch.Tensor]:
    seen: dict[str, torch.Tensor] = {}
    handles = [
        model.get_submodule(p).register_forward_pre_hook(lambda m, a, p=p: seen.__setitem__(p, a[0].detach()))
        for p in paths
    ]
    try:
        with torch.no_grad():
            model(tokens)
    finally:
        for h in handles:
            h.remove()
    return seen


def _rms(x: torch.Tensor, w: torch.Tensor, eps: float) -> torch.Tensor:
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w


def test_the_unedited_draft_names_both_sub_norms_and_passes(draft, spec):
    assert not draft.gaps, draft.gaps
    assert (spec.block.attn.o_norm.path, spec.block.attn.o_norm.kind) == ("attn_sub_norm", "rmsnorm")
    assert (spec.block.mlp.out_norm.path, spec.block.mlp.out_norm.kind) == ("ffn_sub_norm", "rmsnorm")
    checks = [*FAST_CHECKS, "attn_output", "mlp", "head_ablation", "attention_paths_agree"]
    report = run(spec, checks=checks)
    assert report.ok, [r.explain() for r in report.failed()]


def test_hook_z_and_hook_post_are_the_sub_norms_inputs_in_hf(pair):
    bridge, hf = pair
    tokens = torch.randint(0, hf.config.vocab_size, (2, 7))
    paths = [f"model.layers.{i}.{s}" for i in range(2) for s in ("self_attn.attn_sub_norm", "mlp.ffn_sub_norm")]
    seen = _inputs_of(hf, paths, tokens)
    _, cache = bridge.run_with_cache(tokens)
    for i in range(2):
        z = cache[f"blocks.{i}.attn.hook_z"]
        assert z.shape == (2, 7, bridge.cfg.n_heads, bridge.cfg.d_head)
        torch.testing.assert_close(z.flatten(-2), seen[f"model.layers.{i}.self_attn.attn_sub_norm"])
        torch.testing.assert_close(cache[f"blocks.{i}.mlp.hook_post"], seen[f"model.layers.{i}.mlp.ffn_sub_norm"])
        mlp = hf.model.layers[i].mlp  # the activation by hand: act(gate) * up, before the sub-norm
        pre, up = cache[f"blocks.{i}.mlp.hook_pre"], cache[f"blocks.{i}.mlp.hook_pre_linear"]
        torch.testing.assert_close(ACT2FN[hf.config.hidden_act](pre) * up, seen[f"model.layers.{i}.mlp.ffn_sub_norm"])
        assert mlp.ffn_sub_norm.weight.shape == (hf.config.intermediate_size,)


def test_hook_result_is_the_output_projection_of_the_normalized_heads(pair):
    bridge, hf = pair
    tokens = torch.randint(0, hf.config.vocab_size, (1, 6))
    _, cache = bridge.run_with_cache(tokens)
    h, d, eps = bridge.cfg.n_heads, bridge.cfg.d_head, hf.config.rms_norm_eps
    for i in range(2):
        attn = hf.model.layers[i].self_attn
        z = cache[f"blocks.{i}.attn.hook_z"]
        normed = _rms(z.flatten(-2), attn.attn_sub_norm.weight, eps).unflatten(-1, (h, d))
        w_o = attn.o_proj.weight.T.reshape(h, d, -1)  # by hand from the raw [d_model, h * d] weight
        by_hand = torch.einsum("bshd,hdm->bshm", normed, w_o)
        torch.testing.assert_close(cache[f"blocks.{i}.attn.hook_result"], by_hand, atol=1e-5, rtol=1e-5)


def test_zeroing_a_head_at_hook_z_is_zeroing_it_before_the_sub_norm(pair):
    bridge, hf = pair
    tokens = torch.randint(0, hf.config.vocab_size, (1, 6))
    d, head = bridge.cfg.d_head, 1

    sub_norm = hf.model.layers[0].self_attn.attn_sub_norm
    expected = logits_with_input_slice_zeroed(hf, sub_norm, tokens, head * d, (head + 1) * d)

    def zero_head(z, hook):
        z[:, :, head] = 0

    got = bridge.run_with_hooks(tokens, fwd_hooks=[("blocks.0.attn.hook_z", zero_head)])
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    # the reimplement path (a pattern hook) applies the sub-norm too: same logits as HF
    plain = bridge.run_with_hooks(tokens, fwd_hooks=[("blocks.0.attn.hook_pattern", lambda p, hook: None)])
    with torch.no_grad():
        torch.testing.assert_close(plain, hf(tokens).logits, atol=1e-5, rtol=1e-5)


def test_value_biases_do_not_fold_through_a_sub_norm(spec):
    model = loading.random_model(spec, tiny=True, attention_bias=True)
    bridge = Bridge.from_hf(model, spec)
    with pytest.raises(ProcessingError, match="attn_sub_norm"):
        bridge.processed_copy(fold_ln=False, center_writing_weights=False, fold_value_biases=True)
