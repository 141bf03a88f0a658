"""Attention sinks (issue 17): a per-head logit in every softmax row that attends to nothing (Granite SWA's
`sinks`, passed to the attention function as `s_aux`). hook_pattern is the probabilities of the real keys, so
HF's own attention output (the output projection's input) is hook_pattern · hook_v, and an edit of the pattern
acts on the output as the same edit of HF's attention output does."""

from __future__ import annotations

import pytest
import torch
import transformers

from bridge_core import Bridge
from bridge_core.drafting.drafter import draft_model_type
from bridge_core.drafting.onboarding import DraftedSpecWarning
from bridge_core.errors import BindError

TINY = {"num_hidden_layers": 2, "hidden_size": 64, "num_attention_heads": 4, "num_key_value_heads": 2,
        "intermediate_size": 96, "vocab_size": 101, "sliding_window": 3,
        "layer_types": ["full_attention", "sliding_attention"], "layer_rope_theta": [10000.0, 10000.0]}  # fmt: skip


def _granite_swa() -> torch.nn.Module:
    config = transformers.AutoConfig.for_model("granite_swa", **TINY)
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(config).eval()
    with torch.no_grad():
        for layer in model.model.layers:  # zero sinks by default: make them matter, unequal per head
            layer.self_attn.sinks.copy_(torch.tensor([2.0, -1.0, 0.5, 3.0]))
    return model


def test_draft_names_the_sink_parameter():
    assert draft_model_type("granite_swa").fields["block"]["attn"]["sinks"] == "sinks"


@pytest.fixture(scope="module")
def granite_swa():
    model = _granite_swa()
    with pytest.warns(DraftedSpecWarning):
        bridge = Bridge.from_hf(model)
    return model, bridge


def test_pattern_times_values_is_hfs_attention_output(granite_swa):
    model, bridge = granite_swa
    tokens = torch.randint(3, 101, (2, 7))
    z = {}
    handles = [
        layer.self_attn.o_proj.register_forward_pre_hook(lambda m, args, i=i: z.update({i: args[0]}))
        for i, layer in enumerate(model.model.layers)
    ]
    with torch.no_grad():
        hf_logits = model(tokens).logits
    for handle in handles:
        handle.remove()
    with torch.no_grad():
        logits, cache = bridge.run_with_cache(tokens)
    torch.testing.assert_close(logits, hf_logits)
    for i in range(2):
        pattern, v = cache[f"blocks.{i}.attn.hook_pattern"], cache[f"blocks.{i}.attn.hook_v"]
        v = v.repeat_interleave(2, dim=2)  # 2 query heads per kv head
        by_hand = torch.einsum("bhqk,bkhd->bqhd", pattern, v).flatten(-2)
        torch.testing.assert_close(by_hand, z[i])
        assert (pattern.sum(-1) < 1 - 1e-3).all()  # the sink takes a share of every row
        # the pattern by hand: exp(score) over the real keys' exp plus exp(sink)
        scores = cache[f"blocks.{i}.attn.hook_attn_scores"]
        sink = model.model.layers[i].self_attn.sinks[None, :, None, None]
        denominator = scores.exp().sum(-1, keepdim=True) + sink.exp()
        torch.testing.assert_close(pattern, scores.exp() / denominator)


def test_halving_one_heads_pattern_halves_that_heads_output(granite_swa):
    model, bridge = granite_swa
    tokens = torch.randint(3, 101, (1, 6))

    def halve_head_1(pattern, hook):
        pattern[:, 1] *= 0.5

    def halve_head_1_output(m, args):
        z = args[0].unflatten(-1, (4, 16)).clone()
        z[:, :, 1] *= 0.5
        return (z.flatten(-2),)

    with torch.no_grad():
        edited = bridge.run_with_hooks(tokens, fwd_hooks=[("blocks.1.attn.hook_pattern", halve_head_1)])
        handle = model.model.layers[1].self_attn.o_proj.register_forward_pre_hook(halve_head_1_output)
        expected = model(tokens).logits
        handle.remove()
    torch.testing.assert_close(edited, expected)


def test_a_sink_parameter_the_module_lacks_is_a_bind_error(tmp_path):
    spec = draft_model_type("granite_swa")
    from bridge_core.drafting.emit import to_spec

    spec.fields["block"]["attn"]["sinks"] = "sink_logits"
    with pytest.raises(BindError, match="no 1-D parameter 'sink_logits'") as err:
        Bridge.from_hf(_granite_swa(), to_spec(spec))
    assert err.value.spec_path == "block.attn.sinks" and "sinks" in err.value.suggestions
