"""Sigmoid-scored mixture of experts (decision 0022): the built-in deepseek_v3 (layer 0 dense, layers 1-2 MoE:
8 experts in 4 groups of 2, 2 groups kept by the sum of their two best corrected scores, top-3, renormalized,
times 2.5) against HF's own router recorded on an untouched copy and against a hand computation of noaux_tc;
re-routing after an edit; the drafter's observation of sigmoid routing, the correction bias and a dense/MoE
layer mix (glm4_moe); the MLA shrink; Granite's residual multiplier in moe_recompute_path."""

from __future__ import annotations

import copy

import pytest
import torch

from bridge_core import Bridge
from bridge_core.conformance import run
from bridge_core.drafting import build, draft_model_type, to_spec
from bridge_core.drafting.shrink import shrink

LAYER = 1  # the first MoE layer (first_k_dense_replace = 1)


@pytest.fixture(scope="module")
def pair():
    """The tiny DeepSeek-V3 bridge with random (non-zero) correction biases, and an untouched deep copy."""
    bridge = Bridge.from_spec("deepseek_v3")
    generator = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for layer in bridge.model.model.layers[1:]:
            bias = layer.mlp.gate.e_score_correction_bias
            bias.copy_(torch.randn(bias.shape, generator=generator) * 0.3)
    return bridge, copy.deepcopy(bridge.model)


def _tokens() -> torch.Tensor:
    return torch.randint(3, 100, (2, 9), generator=torch.Generator().manual_seed(1))


def _hand_noaux_tc(scores: torch.Tensor, bias: torch.Tensor, k: int = 3, groups: int = 4, kept: int = 2):
    """DeepSeek-V3's selection written out per token: rank groups by their two best corrected scores, keep
    the best `kept`, take the top-k corrected scores inside them; the weights are the plain scores."""
    chosen = []
    for row in (scores + bias).tolist():
        size = len(row) // groups
        rank = [sum(sorted(row[g * size : (g + 1) * size], reverse=True)[:2]) for g in range(groups)]
        best = sorted(range(groups), key=lambda g: -rank[g])[:kept]
        allowed = [e for g in best for e in range(g * size, (g + 1) * size)]
        chosen.append(sorted(sorted(allowed, key=lambda e: -row[e])[:k]))
    return torch.tensor(chosen)


def test_routing_hooks_equal_hfs_router_and_a_hand_computation(pair):
    bridge, twin = pair
    tokens = _tokens()
    router = twin.model.layers[LAYER].mlp.gate
    seen = {}
    handle = router.register_forward_hook(lambda m, a, out: seen.__setitem__("out", out))
    try:
        with torch.no_grad():
            hf_logits = twin(tokens).logits
    finally:
        handle.remove()
    with torch.no_grad():
        logits, cache = bridge.run_with_cache(tokens)
    torch.testing.assert_close(logits, hf_logits, atol=1e-5, rtol=1e-5)
    router_logits, weights, indices = seen["out"]
    p = f"blocks.{LAYER}.mlp"
    scores = router_logits.sigmoid()
    torch.testing.assert_close(cache[f"{p}.hook_expert_weights"], scores)  # the sigmoid scores, not a softmax
    assert torch.equal(cache[f"{p}.hook_expert_indices"], indices)
    hand = _hand_noaux_tc(scores, router.e_score_correction_bias)
    assert torch.equal(indices.sort(-1).values, hand)
    # the bias mattered: plain top-3 of the scores picks other experts for some token
    assert not torch.equal(scores.topk(3).indices.sort(-1).values, hand)
    chosen = scores.gather(-1, indices)
    torch.testing.assert_close(weights, 2.5 * chosen / chosen.sum(-1, keepdim=True))


def test_editing_the_scores_reroutes_by_bias_groups_and_renormalization(pair):
    bridge, twin = pair
    bias = twin.model.layers[LAYER].mlp.gate.e_score_correction_bias
    seen: dict[str, torch.Tensor] = {}

    def lift_expert_7(scores, hook):
        scores[:, 7] += 2.0  # its group (6, 7) ranks first and expert 7 is always chosen
        seen["scores"] = scores.clone()

    def keep(t, hook):
        seen[hook.name] = t.clone()

    p = f"blocks.{LAYER}.mlp"
    with torch.no_grad():
        bridge.run_with_hooks(
            _tokens(),
            fwd_hooks=[
                (f"{p}.hook_expert_weights", lift_expert_7),
                (f"{p}.hook_expert_indices", keep),
                (f"{p}.hook_routing_weights", keep),
            ],
        )
    scores, indices, weights = seen["scores"], seen[f"{p}.hook_expert_indices"], seen[f"{p}.hook_routing_weights"]
    assert torch.equal(indices.sort(-1).values, _hand_noaux_tc(scores, bias))
    assert (indices == 7).any(-1).all()
    chosen = scores.gather(-1, indices)
    torch.testing.assert_close(weights, 2.5 * chosen / chosen.sum(-1, keepdim=True))


def test_drafter_observes_sigmoid_routing_bias_and_the_dense_moe_layer_mix():
    draft = draft_model_type("glm4_moe")
    assert not draft.gaps, draft.gaps
    mlp = draft.fields["block"]["mlp"]
    assert mlp["kind"] == "'gated' if layer < first_k_dense_replace else 'moe'"
    moe = mlp["moe"]
    assert moe["scoring"] == "sigmoid" and moe["correction_bias"] == "gate.e_score_correction_bias"
    assert moe["d_mlp"] == "moe_intermediate_size" and moe["shared_expert"] == "shared_experts"
    report = run(to_spec(draft), checks=["bind", "forward_parity", "moe_routing", "moe_experts", "moe_recompute_path"])
    assert not report.failed(), [r.explain() for r in report.failed()]


def test_drafter_tells_a_bias_on_logits_from_one_on_scores():
    moe = draft_model_type("kolibri1").fields["block"]["mlp"]["moe"]
    assert moe["scoring"] == "sigmoid" and moe["correction_bias_on"] == "logits"


@pytest.mark.parametrize("model_type", ["deepseek_v3", "longcat_flash", "dots1"])
def test_tiny_latent_and_moe_configs_forward(model_type):
    cls = build.model_class_for(model_type)
    overrides, _ = shrink(build.default_config(cls, model_type))
    config = cls.config_class(**overrides)
    if hasattr(config, "qk_rope_head_dim"):
        assert config.qk_nope_head_dim + config.qk_rope_head_dim == getattr(config, "qk_head_dim", 16) == 16
        assert config.head_dim == config.qk_rope_head_dim  # both families point head_dim at the rope width
    model = build.build(cls, config)
    with torch.no_grad():
        logits = model(torch.randint(0, config.vocab_size, (2, 7))).logits
    assert torch.isfinite(logits).all()


def test_moe_recompute_path_reads_hook_mlp_out_at_granites_residual_multiplier():
    draft = draft_model_type("granitemoe")
    assert draft.fields["config"].get("residual_multiplier") == "residual_multiplier"
    report = run(to_spec(draft), checks=["moe_recompute_path"])
    assert [r.status for r in report.results] == ["pass"], [r.explain() for r in report.results]


def test_a_correction_bias_that_is_no_buffer_of_n_experts_is_a_bind_error(tmp_path):
    from bridge_core.errors import BindError

    path = tmp_path / "bad.yaml"
    path.write_text(
        "extends: deepseek_v3\nname: bad_bias\nmatch: {architectures: [], model_type: [bad_bias]}\n"
        "block: {mlp: {moe: {correction_bias: gate.weight}}}\n"  # the router's [8, 64] weight, not [8]
    )
    with pytest.raises(BindError, match=r"n_experts=8") as raised:
        Bridge.from_spec(path)
    assert "block.mlp.moe.correction_bias" in str(raised.value)
