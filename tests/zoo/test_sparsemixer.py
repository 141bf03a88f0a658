"""PhiMoE's sparsemixer routing (scoring `sparsemixer`, `jitter_eps`; docs/decisions/0025): the bridge's routing
against HF's own `sparsemixer` function and the routing HF's router hands its experts; an edit of
hook_expert_weights re-routes as HF's router would on the logits the edited scores stand for."""

from __future__ import annotations

import pytest
import torch
import transformers
from transformers.models.phimoe import modeling_phimoe

from bridge_core import Bridge
from bridge_core.bridge.moe import sparsemixer
from bridge_core.drafting import draft_model_type
from bridge_core.drafting.onboarding import DraftedSpecWarning

CONFIG = dict(vocab_size=101, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4)
CONFIG.update(num_key_value_heads=2, num_local_experts=6, num_experts_per_tok=2, max_position_embeddings=64)


@pytest.mark.parametrize("eps", [0.0, 0.01, 0.1, 0.5])
@pytest.mark.parametrize("scale", [0.1, 1.0, 5.0])
def test_sparsemixer_equals_hfs_in_eval_mode(eps, scale):
    logits = torch.randn(200, 6, generator=torch.Generator().manual_seed(3)) * scale
    hf_weights, hf_indices = modeling_phimoe.sparsemixer(logits, jitter_eps=eps, training=False, top_k=2)
    weights, indices = sparsemixer(logits, eps)
    assert torch.equal(indices, hf_indices)
    torch.testing.assert_close(weights, hf_weights, rtol=0, atol=1e-7)


def test_the_draft_says_sparsemixer_with_the_configs_jitter():
    moe = draft_model_type("phimoe").fields["block"]["mlp"]["moe"]
    assert (moe["scoring"], moe["jitter_eps"], moe["norm_topk_prob"]) == ("sparsemixer", "router_jitter_noise", False)


@pytest.fixture(scope="module")
def phimoe():
    config = transformers.AutoConfig.for_model("phimoe", **CONFIG, router_jitter_noise=0.1)
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(config).eval()
    with pytest.warns(DraftedSpecWarning):
        bridge = Bridge.from_hf(model)
    return model, bridge


def test_routing_hooks_show_hfs_routing(phimoe):
    model, bridge = phimoe
    seen = {}
    router = model.model.layers[1].mlp.router
    handle = router.register_forward_hook(lambda m, a, out: seen.update(out=out))
    tokens = torch.randint(3, 101, (2, 9), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        _, cache = bridge.run_with_cache(tokens)
    handle.remove()
    logits, weights, indices = seen["out"]
    assert torch.equal(cache["blocks.1.mlp.hook_expert_indices"], indices)
    torch.testing.assert_close(cache["blocks.1.mlp.hook_routing_weights"], weights)
    torch.testing.assert_close(cache["blocks.1.mlp.hook_expert_weights"], torch.softmax(logits, dim=-1))


def test_removing_an_expert_in_hook_expert_weights_reroutes_as_hfs_router(phimoe):
    model, bridge = phimoe
    tokens = torch.randint(3, 101, (2, 9), generator=torch.Generator().manual_seed(2))
    expert = 2

    def hf_without_expert(module, args, out):  # HF's own sparsemixer, on the logits without the expert
        logits = out[0].clone()
        logits[:, expert] = float("-inf")
        weights, indices = modeling_phimoe.sparsemixer(logits, jitter_eps=module.router_jitter_noise, training=False)
        return out[0], weights, indices

    handle = model.model.layers[0].mlp.router.register_forward_hook(hf_without_expert)
    with torch.no_grad():
        expected = model(tokens).logits
    handle.remove()

    def drop(probs, hook):
        probs = probs.clone()
        probs[:, expert] = 0
        return probs

    with torch.no_grad():
        edited = bridge.run_with_hooks(tokens, fwd_hooks=[("blocks.0.mlp.hook_expert_weights", drop)])
        plain = bridge(tokens)
    torch.testing.assert_close(edited, expected)
    assert not torch.allclose(edited, plain)
