"""GPT-OSS's experts (block.mlp.moe fused_layout conv1d, gate_up_split interleaved, gate_up_bias / down_bias,
clamp_limit, up_offset; docs/decisions/0029): the expert hook points, weight views and routing hooks against HF's
own computation on a tiny model whose clamp limit the values pass, and an edit at an expert's hook_post against
HF's output with that expert's contribution removed by HF's own `_apply_gate`."""

from __future__ import annotations

import pytest
import torch
import transformers

from bridge_core import Bridge
from bridge_core.drafting import draft_model_type
from bridge_core.errors import BindError
from bridge_core.spec.schema import Spec

CONFIG = dict(vocab_size=101, hidden_size=64, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4)
CONFIG.update(num_key_value_heads=2, head_dim=16, num_local_experts=4, num_experts_per_tok=2)
CONFIG.update(max_position_embeddings=64)
CONFIG.update(sliding_window=3, layer_types=["sliding_attention", "full_attention"], swiglu_limit=0.2)


@pytest.fixture(scope="module")
def drafted() -> dict:
    return draft_model_type("gpt_oss").fields


@pytest.fixture(scope="module")
def gpt_oss(drafted):
    config = transformers.AutoConfig.for_model("gpt_oss", **CONFIG)
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(config).eval()
    with torch.no_grad():  # HF initializes the expert and router biases to zeros: random ones are visible
        for name, p in model.named_parameters():
            if name.endswith(("_bias", "router.bias")):
                p.normal_(0, 0.3)
    return model, Bridge.from_hf(model, spec=Spec.model_validate(drafted))


def test_the_draft_reads_gpt_oss_experts(drafted):
    moe = drafted["block"]["mlp"]["moe"]
    expected = dict(fused_layout="conv1d", gate_up_split="interleaved", gate_first=True, clamp_limit="swiglu_limit")
    expected.update(gate_up_bias="gate_up_proj_bias", down_bias="down_proj_bias", up_offset=1.0)
    assert {k: moe.get(k) for k in expected} == expected
    assert drafted["block"]["mlp"]["act_fn"] == "quick_gelu"  # x * sigmoid(1.702 x), GPT-OSS's swiglu_alpha


def _hf_experts_inputs(model, tokens):
    """(hidden, indices) HF's experts module of layer 1 was handed."""
    seen = {}
    handle = model.model.layers[1].mlp.experts.register_forward_hook(lambda m, args, out: seen.update(args=args))
    with torch.no_grad():
        model(tokens)
    handle.remove()
    return seen["args"][0], seen["args"][1]


def test_expert_hooks_equal_hfs_own_gate_and_up(gpt_oss):
    model, bridge = gpt_oss
    tokens = torch.randint(3, 101, (2, 9), generator=torch.Generator().manual_seed(1))
    hidden, indices = _hf_experts_inputs(model, tokens)
    with torch.no_grad():
        _, cache = bridge.run_with_cache(tokens)
    experts = model.model.layers[1].mlp.experts
    clamped = 0
    for e in range(4):
        token = torch.where(indices == e)[0]
        gate_up = hidden[token] @ experts.gate_up_proj[e] + experts.gate_up_proj_bias[e]  # HF's expert, by hand
        torch.testing.assert_close(cache[f"blocks.1.mlp.experts.{e}.hook_gate"], gate_up[..., ::2])
        torch.testing.assert_close(cache[f"blocks.1.mlp.experts.{e}.hook_pre"], gate_up[..., 1::2])
        torch.testing.assert_close(cache[f"blocks.1.mlp.experts.{e}.hook_post"], experts._apply_gate(gate_up))
        clamped += int((gate_up.abs() > experts.limit).sum())
    assert clamped > 0  # the clamp is exercised, so a spec without it would differ


def test_weight_views_are_hfs_interleaved_parameters(gpt_oss):
    model, bridge = gpt_oss
    experts, mlp = model.model.layers[0].mlp.experts, bridge.blocks[0].mlp
    expert = mlp.experts[3]
    assert torch.equal(expert.W_gate, experts.gate_up_proj[3][:, ::2])
    assert torch.equal(expert.W_in, experts.gate_up_proj[3][:, 1::2])
    assert torch.equal(expert.W_out, experts.down_proj[3])
    assert torch.equal(expert.b_gate, experts.gate_up_proj_bias[3, ::2])
    assert torch.equal(expert.b_in, experts.gate_up_proj_bias[3, 1::2])
    assert torch.equal(expert.b_out, experts.down_proj_bias[3])
    assert expert.W_gate.untyped_storage().data_ptr() == experts.gate_up_proj.untyped_storage().data_ptr()
    assert torch.equal(mlp.b_gate, model.model.layers[0].mlp.router.bias)


def test_routing_hooks_show_hfs_router(gpt_oss):
    model, bridge = gpt_oss
    seen = {}
    handle = model.model.layers[0].mlp.router.register_forward_hook(lambda m, a, out: seen.update(out=out))
    tokens = torch.randint(3, 101, (2, 9), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        _, cache = bridge.run_with_cache(tokens)
    handle.remove()
    logits, weights, indices = seen["out"]
    assert torch.equal(cache["blocks.0.mlp.hook_expert_indices"], indices)
    torch.testing.assert_close(cache["blocks.0.mlp.hook_routing_weights"], weights)
    torch.testing.assert_close(cache["blocks.0.mlp.hook_router_logits"], logits)
    torch.testing.assert_close(cache["blocks.0.mlp.hook_expert_weights"], torch.softmax(logits, dim=-1))


def test_zeroing_an_experts_hook_post_leaves_only_its_down_bias(gpt_oss):
    model, bridge = gpt_oss
    tokens = torch.randint(3, 101, (2, 9), generator=torch.Generator().manual_seed(3))
    experts, e = model.model.layers[1].mlp.experts, 2

    def without_expert(module, args, output):  # HF's output less expert e's gated product through down_proj
        hidden, indices, weights = args
        slot_token = torch.where(indices == e)
        token, slot = slot_token[0], slot_token[1]
        gate_up = hidden[token] @ module.gate_up_proj[e] + module.gate_up_proj_bias[e]
        removed = (module._apply_gate(gate_up) @ module.down_proj[e]) * weights[token, slot, None]
        return output.index_add(0, token, -removed)

    handle = experts.register_forward_hook(without_expert)
    with torch.no_grad():
        expected = model(tokens).logits
    handle.remove()
    hooks = [(f"blocks.1.mlp.experts.{e}.hook_post", lambda post, hook: torch.zeros_like(post))]
    with torch.no_grad():
        edited = bridge.run_with_hooks(tokens, fwd_hooks=hooks)
        plain = bridge(tokens)
    torch.testing.assert_close(edited, expected, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(edited, plain)


def test_a_bias_name_that_is_no_2d_parameter_is_refused_at_bind(drafted):
    fields = {**drafted, "block": {**drafted["block"]}}
    mlp = {**fields["block"]["mlp"], "moe": {**fields["block"]["mlp"]["moe"], "down_bias": "down_proj"}}
    fields["block"]["mlp"] = mlp
    config = transformers.AutoConfig.for_model("gpt_oss", **CONFIG)
    model = transformers.AutoModelForCausalLM.from_config(config).eval()
    with pytest.raises(BindError, match=r"no 2-D parameter 'down_proj'") as raised:
        Bridge.from_hf(model, spec=Spec.model_validate(fields))
    assert "block.mlp.moe.down_bias" in str(raised.value)
