"""Mixture of experts (Mixtral built-in, Qwen2-MoE test spec): conformance on every variant, MoE hook values
against HookedTransformer 3.9 built from the same HF weights, logits untouched without hooks, expert weight
views sharing storage, and expert ablation / router steering against hand computation on HF's own model."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
import yaml
from transformers import AutoConfig, MixtralForCausalLM, OlmoeForCausalLM

from bridge_core import Bridge
from bridge_core.conformance.runner import run_variants
from bridge_core.registry import default_registry
from tests.reference import hooked_transformer as reference

SPECS = Path(__file__).resolve().parents[2] / "adapter_specs"


def _mixtral(seed: int = 0) -> MixtralForCausalLM:
    spec = default_registry().get("mixtral")
    torch.manual_seed(seed)
    config = AutoConfig.for_model("mixtral", **spec.test_config)
    return MixtralForCausalLM(config).eval()


def _tokens(batch: int = 2, seq: int = 7, seed: int = 1) -> torch.Tensor:
    return torch.randint(3, 101, (batch, seq), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("spec", ["mixtral", str(SPECS / "qwen2_moe.yaml"), str(SPECS / "olmoe.yaml")])
def test_every_variant_conforms(spec):
    reports = run_variants(spec)
    failed = [f"{r.architecture}: {x.name}" for r in reports for x in r.failed()]
    assert not failed, "\n".join(str(r) for r in reports)
    names = {x.name for r in reports for x in r.results if x.status == "pass"}
    assert {"moe_routing", "moe_experts", "moe_recompute_path"} <= names


def _hooked_mixtral(model: MixtralForCausalLM):
    from transformer_lens.pretrained.weight_conversions.mixtral import convert_mixtral_weights

    c = model.config
    cfg = {
        "d_model": c.hidden_size,
        "d_head": c.hidden_size // c.num_attention_heads,
        "n_heads": c.num_attention_heads,
        "d_mlp": c.intermediate_size,
        "n_layers": c.num_hidden_layers,
        "n_ctx": c.max_position_embeddings,
        "d_vocab": c.vocab_size,
        "act_fn": c.hidden_act,
        "normalization_type": "RMS",
        "rotary_base": c.rope_parameters["rope_theta"],
        "eps": c.rms_norm_eps,
        "n_key_value_heads": c.num_key_value_heads,
        "gated_mlp": True,
        "rotary_dim": c.hidden_size // c.num_attention_heads,
        "num_experts": c.num_local_experts,
        "experts_per_token": c.num_experts_per_tok,
        "norm_topk_prob": True,
    }
    return reference.build_loaded(cfg, lambda tl_cfg: convert_mixtral_weights(model, tl_cfg))


def _olmoe(seed: int = 0) -> OlmoeForCausalLM:
    test_config = yaml.safe_load((SPECS / "olmoe.yaml").read_text())["test_config"]
    torch.manual_seed(seed)
    return OlmoeForCausalLM(AutoConfig.for_model("olmoe", **test_config)).eval()


def _hooked_olmoe(model: OlmoeForCausalLM):
    from transformer_lens.pretrained.weight_conversions.olmoe import convert_olmoe_weights

    c = model.config
    cfg = {
        "d_model": c.hidden_size,
        "d_head": c.hidden_size // c.num_attention_heads,
        "n_heads": c.num_attention_heads,
        "d_mlp": c.intermediate_size,
        "n_layers": c.num_hidden_layers,
        "n_ctx": c.max_position_embeddings,
        "eps": c.rms_norm_eps,
        "d_vocab": c.vocab_size,
        "act_fn": c.hidden_act,
        "num_experts": c.num_experts,
        "experts_per_token": c.num_experts_per_tok,
        "norm_topk_prob": c.norm_topk_prob,
        "n_key_value_heads": c.num_key_value_heads,
        "rotary_base": c.rope_parameters["rope_theta"],
        "rotary_dim": c.hidden_size // c.num_attention_heads,
        "gated_mlp": True,
        "normalization_type": "RMS",
        "original_architecture": "OlmoeForCausalLM",
    }
    return reference.build_loaded(cfg, lambda tl_cfg: convert_olmoe_weights(model, tl_cfg))


@pytest.mark.skipif(not reference.available(), reason=reference.unavailable_reason())
@pytest.mark.parametrize("family", ["mixtral", "olmoe"])
def test_moe_hooks_equal_hooked_transformer(family):
    model = _mixtral() if family == "mixtral" else _olmoe()
    tokens = _tokens()
    hooked = _hooked_mixtral(model) if family == "mixtral" else _hooked_olmoe(model)
    expected = reference.run_reference(hooked, tokens)
    bridge = Bridge.from_hf(model, spec=None if family == "mixtral" else str(SPECS / "olmoe.yaml"))
    _, cache = bridge.run_with_cache(tokens)
    moe_names = [n for n in expected if ".mlp." in n or n.endswith("hook_mlp_out")]
    assert any(".experts.3.hook_post" in n for n in moe_names) and "blocks.1.mlp.hook_expert_indices" in moe_names
    for name in moe_names:
        got = cache[name]
        assert got.shape == expected[name].shape, name
        if name.endswith("hook_expert_indices"):
            assert torch.equal(got, expected[name].to(got.dtype)), name
        else:
            torch.testing.assert_close(got.float(), expected[name], atol=1e-5, rtol=1e-5, msg=name)


def test_no_hooks_keeps_hf_logits_bit_identical_and_identity_expert_hooks_too():
    model = _mixtral()
    tokens = _tokens()
    with torch.no_grad():
        hf = model(tokens).logits
    bridge = Bridge.from_hf(model)
    with torch.no_grad():
        assert torch.equal(bridge(tokens), hf)
        observed = bridge.run_with_hooks(tokens, fwd_hooks=[("blocks.0.mlp.experts.1.hook_pre", lambda t, hook: None)])
    assert torch.equal(observed, hf)  # read-only expert hooks: HF's experts output stands


def test_expert_weight_views_share_storage_and_carry_gradients():
    model = _mixtral()
    bridge = Bridge.from_hf(model)
    experts = model.model.layers[1].mlp.experts
    d_mlp = model.config.intermediate_size
    view = bridge.blocks[1].mlp.experts[2]
    assert view.W_gate.shape == (64, d_mlp) and view.W_in.shape == (64, d_mlp) and view.W_out.shape == (d_mlp, 64)
    assert torch.equal(view.W_gate, experts.gate_up_proj[2, :d_mlp].t())
    assert torch.equal(view.W_in, experts.gate_up_proj[2, d_mlp:].t())
    assert torch.equal(view.W_out, experts.down_proj[2].t())
    assert view.W_in.untyped_storage().data_ptr() == experts.gate_up_proj.untyped_storage().data_ptr()
    assert torch.equal(bridge.blocks[1].mlp.W_gate, model.model.layers[1].mlp.gate.weight.t())
    view.W_out.sum().backward()
    grad = experts.down_proj.grad
    assert torch.equal(grad[2], torch.ones_like(grad[2])) and not grad[[0, 1, 3]].any()


def test_zeroing_one_experts_hook_post_equals_hf_with_its_down_proj_zeroed():
    model = _mixtral()
    tokens = _tokens()
    ablated = copy.deepcopy(model)
    with torch.no_grad():
        ablated.model.layers[1].mlp.experts.down_proj[2].zero_()
        expected = ablated(tokens).logits
        plain = model(tokens).logits
    bridge = Bridge.from_hf(model)

    def zero(post, hook):
        post.zero_()

    with torch.no_grad():
        logits = bridge.run_with_hooks(tokens, fwd_hooks=[("blocks.1.mlp.experts.2.hook_post", zero)])
    assert (logits - plain).abs().max() > 1e-4  # expert 2 mattered
    torch.testing.assert_close(logits, expected, atol=1e-5, rtol=1e-5)


def test_steering_router_weights_scales_the_moe_output_as_hand_computed():
    model = _mixtral()
    tokens = _tokens()
    bridge = Bridge.from_hf(model)
    with torch.no_grad():
        _, cache = bridge.run_with_cache(tokens, names_filter=lambda n: n == "blocks.0.hook_mlp_out")
        seen = {}

        def keep(t, hook):
            seen["out"] = t.clone()

        def double(w, hook):
            return 2 * w

        bridge.run_with_hooks(
            tokens, fwd_hooks=[("blocks.0.mlp.hook_routing_weights", double), ("blocks.0.hook_mlp_out", keep)]
        )
    # Mixtral's MoE output is sum_k w_k * expert_k(x): doubling every routing weight doubles it
    torch.testing.assert_close(seen["out"], 2 * cache["blocks.0.hook_mlp_out"], atol=1e-6, rtol=1e-6)


def test_editing_expert_weights_reroutes_by_the_spec():
    model = _mixtral()
    tokens = _tokens()
    bridge = Bridge.from_hf(model)
    seen = {}

    def favour_3(probs, hook):
        probs[:, 3] += 10.0

    def keep(t, hook):
        seen[hook.name] = t.clone()

    with torch.no_grad():
        bridge.run_with_hooks(
            tokens,
            fwd_hooks=[
                ("blocks.0.mlp.hook_expert_weights", favour_3),
                ("blocks.0.mlp.hook_expert_indices", keep),
                ("blocks.0.mlp.hook_routing_weights", keep),
            ],
        )
    indices, weights = seen["blocks.0.mlp.hook_expert_indices"], seen["blocks.0.mlp.hook_routing_weights"]
    assert (indices[:, 0] == 3).all()  # every token's first choice is now expert 3
    torch.testing.assert_close(weights.sum(-1), torch.ones(weights.shape[0]))  # Mixtral renormalizes
