"""HyperCLOVA X (issue 17): norms on both sublayer outputs, each output scaled by residual_multiplier before the
residual add. The drafted spec's hook points hold HF's own tensors: hook_attn_out is post_norm1's output times the
multiplier, hook_resid_mid the residual HF's MLP norm reads, and resid_pre + hook_attn_out equals it."""

from __future__ import annotations

import pytest
import torch
import transformers

from bridge_core import Bridge
from bridge_core.drafting.drafter import draft_model_type
from bridge_core.drafting.onboarding import DraftedSpecWarning


def test_post_norm_outputs_scaled_into_the_residual_match_hf():
    draft = draft_model_type("hyperclovax")
    config = transformers.AutoConfig.for_model("hyperclovax", **draft.fields["test_config"])
    assert config.use_post_norm and config.residual_multiplier != 1.0
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(config).eval()
    with pytest.warns(DraftedSpecWarning):
        bridge = Bridge.from_hf(model)
    layer = model.model.layers[1]
    seen = {}
    handles = [
        layer.post_norm1.register_forward_hook(lambda m, a, out: seen.update(post1=out)),
        layer.post_norm2.register_forward_hook(lambda m, a, out: seen.update(post2=out)),
        layer.post_attention_layernorm.register_forward_hook(lambda m, a, out: seen.update(mid=a[0])),
    ]
    tokens = torch.randint(3, config.vocab_size, (2, 6))
    with torch.no_grad():
        hf = model(tokens, output_hidden_states=True)
    for handle in handles:
        handle.remove()
    with torch.no_grad():
        _, cache = bridge.run_with_cache(tokens)
    r = config.residual_multiplier
    # hook_attn_out / hook_mlp_out are the contributions: the post norms' outputs × the multiplier (decision 0013)
    torch.testing.assert_close(cache["blocks.1.hook_attn_out"], r * seen["post1"])
    torch.testing.assert_close(cache["blocks.1.hook_mlp_out"], r * seen["post2"])
    torch.testing.assert_close(cache["blocks.1.hook_resid_mid"], seen["mid"])
    torch.testing.assert_close(cache["blocks.1.hook_resid_pre"] + r * seen["post1"], seen["mid"])
    torch.testing.assert_close(cache["blocks.1.hook_resid_post"], seen["mid"] + r * seen["post2"])
    torch.testing.assert_close(cache["blocks.1.hook_resid_pre"], hf.hidden_states[1])
