"""Fused experts stored [in, out] (Aria's `gate_up_proj [E, d, 2*d_mlp]`, `down_proj [E, d_mlp, d]`; HF's transposed
experts): `moe.fused_layout: conv1d` (decision 0026). The unedited aria_text draft writes it and passes its checks;
the expert weight views are the stored matrices transposed (sharing storage), and each expert's `hook_post` is the
SiLU-gated product computed by hand from HF's parameters on the tokens HF routed to it (its experts module's
inputs, captured with a plain torch hook on an untouched copy). A draft without the field fails `bind`
(tests/conformance/test_self_proof.py)."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from bridge_core import Bridge
from bridge_core.bridge import loading
from bridge_core.conformance.runner import run
from bridge_core.drafting import draft_model_type, to_spec
from bridge_core.drafting.reach import FAST_CHECKS


@pytest.fixture(scope="module")
def draft():
    return draft_model_type("aria_text")


@pytest.fixture(scope="module")
def spec(draft):
    return to_spec(draft)


@pytest.fixture(scope="module")
def pair(spec):
    model = loading.random_model(spec, tiny=True)
    return Bridge.from_hf(model, spec), copy.deepcopy(model).eval()


def test_the_unedited_draft_says_conv1d_experts_and_passes(draft, spec):
    assert not [g for g in draft.gaps if g.item == "MoE expert storage"], draft.gaps
    assert spec.block.mlp.moe.fused_layout == "conv1d"
    report = run(spec, checks=[*FAST_CHECKS, "moe_experts", "moe_routing", "moe_recompute_path", "shapes"])
    assert report.ok, [r.explain() for r in report.failed()]


def test_expert_weight_views_are_the_stored_matrices_transposed(pair):
    bridge, _ = pair
    experts = bridge.model.model.layers[0].mlp.experts
    m = experts.down_proj.shape[1]
    for e in range(experts.gate_up_proj.shape[0]):
        view = bridge.blocks[0].mlp.experts[e]
        assert torch.equal(view.W_gate, experts.gate_up_proj[e][:, :m])  # [d, d_mlp]: HF chunks gate first
        assert torch.equal(view.W_in, experts.gate_up_proj[e][:, m:])
        assert torch.equal(view.W_out, experts.down_proj[e])  # [d_mlp, d]
        assert view.W_out.data_ptr() == experts.down_proj[e].data_ptr()  # a view, not a copy


def test_each_experts_hook_post_is_hfs_gated_product_on_its_tokens(pair):
    bridge, hf = pair
    tokens = torch.randint(0, hf.config.vocab_size, (2, 5))
    seen = {}
    module = hf.model.layers[0].mlp.experts
    handle = module.register_forward_pre_hook(lambda mod, args: seen.update(x=args[0], idx=args[1]))
    try:
        with torch.no_grad():
            hf(tokens)
    finally:
        handle.remove()
    _, cache = bridge.run_with_cache(tokens, names_filter=lambda n: n.startswith("blocks.0.mlp.experts."))
    x, idx = seen["x"], seen["idx"]
    m = module.down_proj.shape[1]
    checked = 0
    for e in range(module.gate_up_proj.shape[0]):
        _, token = torch.where(idx.t() == e)  # HF's order: by top-k slot, then token
        gate_up = x[token] @ module.gate_up_proj[e]  # stored [d, 2m]: x @ W, no transpose
        by_hand = F.silu(gate_up[:, :m]) * gate_up[:, m:]
        got = cache[f"blocks.0.mlp.experts.{e}.hook_post"]
        assert got.shape == by_hand.shape
        torch.testing.assert_close(got, by_hand, atol=1e-5, rtol=1e-5)
        checked += len(token)
    assert checked == idx.numel()
