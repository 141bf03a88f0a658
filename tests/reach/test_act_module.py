"""`block.mlp.act_module`: an MLP's own activation module with learned parameters (Apertus's xIELU) is drafted
unedited and bound as that module, so hook_post is exactly HF's act_fn applied to hook_pre in every layer."""

from __future__ import annotations

import pytest
import torch
import transformers

from bridge_core import Bridge
from bridge_core.drafting.onboarding import DraftedSpecWarning
from bridge_core.spec.schema import MLPSpec

APERTUS = {"num_hidden_layers": 2, "hidden_size": 64, "num_attention_heads": 4, "num_key_value_heads": 2,
           "head_dim": 16, "intermediate_size": 96, "vocab_size": 50, "pad_token_id": 0, "eos_token_id": 0}  # fmt: skip


def tiny_apertus() -> torch.nn.Module:
    config = transformers.AutoConfig.for_model("apertus", **APERTUS)
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(config).eval()
    with torch.no_grad():  # learned, and different in every layer: one shared xIELU would not do
        for i, layer in enumerate(model.model.layers):
            layer.mlp.act_fn.alpha_p.fill_(0.3 + 0.4 * i)
            layer.mlp.act_fn.alpha_n.fill_(-0.5 - 0.6 * i)
    return model


def test_hook_post_is_hfs_own_act_fn_of_hook_pre():
    model = tiny_apertus()
    with pytest.warns(DraftedSpecWarning):
        bridge = Bridge.from_hf(model)
    seen: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
    handles = [
        layer.mlp.act_fn.register_forward_hook(lambda _m, args, out, i=i: seen.__setitem__(i, (args[0], out)))
        for i, layer in enumerate(model.model.layers)
    ]
    tokens = torch.randint(0, 50, (2, 7))
    try:
        with torch.no_grad():
            logits, cache = bridge.run_with_cache(tokens)
    finally:
        for handle in handles:
            handle.remove()
    with torch.no_grad():
        hf_logits = model(tokens).logits
    assert torch.equal(bridge(tokens), hf_logits)  # no hook attached: HF's own forward
    torch.testing.assert_close(logits, hf_logits)
    for i, layer in enumerate(model.model.layers):
        pre, post = cache[f"blocks.{i}.mlp.hook_pre"], cache[f"blocks.{i}.mlp.hook_post"]
        act_in, act_out = seen[i]
        assert torch.equal(pre, act_in) and torch.equal(post, act_out)  # what HF's xIELU read and returned
        with torch.no_grad():
            torch.testing.assert_close(layer.mlp.act_fn(pre), post, rtol=0, atol=0)
    for i, block in enumerate(bridge.bound.blocks):  # what the reimplement path and the mlp check apply
        assert block.mlp.act is model.model.layers[i].mlp.act_fn and block.mlp.act_field == "block.mlp.act_module"
    with torch.no_grad():  # the layers' activations differ, so the bound one must be each layer's own
        grid = torch.linspace(-3, 3, 61)
        assert not torch.allclose(model.model.layers[0].mlp.act_fn(grid), model.model.layers[1].mlp.act_fn(grid))


def test_act_module_and_act_fn_exclude_each_other():
    with pytest.raises(ValueError, match="exclude each other"):
        fields = {"path": "mlp", "layout": "linear", "in": "up_proj", "out": "down_proj"}
        MLPSpec.model_validate({**fields, "act_fn": "silu", "act_module": "act_fn"})
