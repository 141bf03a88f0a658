"""An attention output gated before the output projection (AFMoE: `o_proj(attn * sigmoid(gate_proj(x)))`;
decision 0026): the unedited afmoe draft names `block.attn.out_gate` and passes its checks. `hook_z` is what
o_proj reads in the untouched HF model (a plain torch hook) and equals the attention output times the gate computed
by hand from `gate_proj`'s weight; the reimplement path (a pattern hook) gates too. Drafts without the gate, or
with softmax scoring for AFMoE's sigmoid router, fail (tests/conformance/test_self_proof.py)."""

from __future__ import annotations

import copy

import pytest
import torch

from bridge_core import Bridge
from bridge_core.bridge import loading
from bridge_core.conformance.runner import perturb, run
from bridge_core.drafting import draft_model_type, to_spec
from bridge_core.drafting.reach import FAST_CHECKS
from tests._hf_edits import logits_with_input_slice_zeroed


@pytest.fixture(scope="module")
def spec():
    draft = draft_model_type("afmoe")
    assert not draft.gaps, draft.gaps
    return to_spec(draft)


@pytest.fixture(scope="module")
def pair(spec):
    model = loading.random_model(spec, tiny=True)
    perturb(model, 0)  # norm weights and the zero-initialized router made distinct
    return Bridge.from_hf(model, spec), copy.deepcopy(model).eval()


def _o_proj_inputs(hf, tokens):
    seen, handles = {}, []
    for i, layer in enumerate(hf.model.layers):
        attn = layer.self_attn
        handles.append(attn.o_proj.register_forward_pre_hook(lambda m, a, i=i: seen.__setitem__(("o", i), a[0])))
        handles.append(
            attn.register_forward_pre_hook(
                lambda m, a, k, i=i: seen.__setitem__(("x", i), k["hidden_states"]), with_kwargs=True
            )
        )
    try:
        with torch.no_grad():
            logits = hf(tokens).logits
    finally:
        for h in handles:
            h.remove()
    return seen, logits


def test_the_unedited_draft_gates_the_attention_output_and_scores_by_sigmoid(spec):
    gate = spec.block.attn.out_gate
    assert (gate.path, gate.act) == ("gate_proj", "sigmoid")
    assert spec.block.mlp.moe.scoring == "sigmoid"
    checks = [*FAST_CHECKS, "attn_output", "head_ablation", "attention_paths_agree", "moe_routing"]
    report = run(spec, checks=checks)
    assert report.ok, [r.explain() for r in report.failed()]


def test_hook_z_is_the_gated_output_o_proj_reads(pair):
    bridge, hf = pair
    tokens = torch.randint(0, hf.config.vocab_size, (2, 6))
    seen, _ = _o_proj_inputs(hf, tokens)
    _, cache = bridge.run_with_cache(tokens)
    h, kv = bridge.cfg.n_heads, bridge.cfg.n_kv_heads
    for i, layer in enumerate(hf.model.layers):
        z = cache[f"blocks.{i}.attn.hook_z"]
        torch.testing.assert_close(z.flatten(-2), seen[("o", i)])
        # by hand: pattern-weighted values, times sigmoid of gate_proj's weight applied to the attention input
        v = cache[f"blocks.{i}.attn.hook_v"].repeat_interleave(h // kv, dim=2)  # [b, s, h, d]
        attended = torch.einsum("bhqk,bkhd->bqhd", cache[f"blocks.{i}.attn.hook_pattern"], v)
        gate = torch.sigmoid(seen[("x", i)] @ layer.self_attn.gate_proj.weight.T)
        by_hand = attended.flatten(-2) * gate
        torch.testing.assert_close(seen[("o", i)], by_hand, atol=1e-5, rtol=1e-5)
        assert not torch.allclose(attended.flatten(-2), by_hand, atol=1e-3)  # the gate matters here


def test_reimplement_path_gates_too(pair):
    bridge, hf = pair
    tokens = torch.randint(0, hf.config.vocab_size, (1, 7))
    _, expected = _o_proj_inputs(hf, tokens)
    got = bridge.run_with_hooks(tokens, fwd_hooks=[("blocks.0.attn.hook_pattern", lambda p, hook: None)])
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_zeroing_a_head_at_hook_z_zeroes_its_gated_slice(pair):
    bridge, hf = pair
    tokens = torch.randint(0, hf.config.vocab_size, (1, 6))
    d, head = bridge.cfg.d_head, 2

    o_proj = hf.model.layers[1].self_attn.o_proj
    expected = logits_with_input_slice_zeroed(hf, o_proj, tokens, head * d, (head + 1) * d)

    def zero_head(z, hook):
        z[:, :, head] = 0

    got = bridge.run_with_hooks(tokens, fwd_hooks=[("blocks.1.attn.hook_z", zero_head)])
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
