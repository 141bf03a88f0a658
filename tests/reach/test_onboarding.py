"""Automatic onboarding: a model no registered spec matches is wrapped with a drafted spec verified on a
tiny twin of its config (with a warning saying how to save it), refused with a typed error naming what
failed, or (draft=False) refused as before."""

from __future__ import annotations

import pytest
import torch
import transformers

from bridge_core import Bridge
from bridge_core.drafting import DraftRefusedError
from bridge_core.drafting.onboarding import DraftedSpecWarning
from bridge_core.errors import SpecNotFoundError


def tiny(model_type: str, **overrides):
    config = transformers.AutoConfig.for_model(model_type, **overrides)
    torch.manual_seed(0)
    return transformers.AutoModelForCausalLM.from_config(config).eval()


MISTRAL = {"num_hidden_layers": 2, "hidden_size": 64, "num_attention_heads": 4, "num_key_value_heads": 2,
           "head_dim": 16, "intermediate_size": 80, "vocab_size": 97, "sliding_window": 4}  # fmt: skip


def test_model_without_spec_is_drafted_verified_and_matches_hf():
    model = tiny("mistral", **MISTRAL)
    with pytest.warns(DraftedSpecWarning, match=r"bridge-core scaffold --model PATH > spec.yaml"):
        bridge = Bridge.from_hf(model)
    tokens = torch.randint(0, 97, (2, 9))
    with torch.no_grad():
        hf = model(tokens, output_hidden_states=True)
        logits, cache = bridge.run_with_cache(tokens)
    assert torch.equal(bridge(tokens), hf.logits)  # no hook attached: HF's own forward
    torch.testing.assert_close(logits, hf.logits)
    for layer in range(2):  # the residual stream HF reports, at the hook points the draft placed
        torch.testing.assert_close(cache[f"blocks.{layer}.hook_resid_pre"], hf.hidden_states[layer])
    assert bridge.cfg.n_kv_heads == 2 and bridge.cfg.d_mlp == 80 and bridge.cfg.sliding_window == 4


def test_from_pretrained_drafts_for_a_saved_checkpoint(tmp_path):
    model = tiny("qwen3", **{**MISTRAL, "sliding_window": None})
    model.save_pretrained(tmp_path)
    with pytest.warns(DraftedSpecWarning):
        bridge = Bridge.from_pretrained(str(tmp_path), tokenizer=None)
    tokens = torch.randint(0, 97, (1, 5))
    with torch.no_grad():
        assert torch.equal(bridge(tokens), model(tokens).logits)


def test_draft_false_keeps_the_no_spec_error():
    with pytest.raises(SpecNotFoundError, match="No registered spec matches") as info:
        Bridge.from_hf(tiny("mistral", **MISTRAL), draft=False)
    assert not isinstance(info.value, DraftRefusedError)


def test_unsupported_model_is_refused_with_the_reason():
    mamba = tiny("mamba", num_hidden_layers=2, hidden_size=32, vocab_size=50, state_size=4)
    with pytest.raises(DraftRefusedError, match="no attention") as info:
        Bridge.from_hf(mamba)
    assert info.value.failing == ["drafting step 'scope'"] and "draft=False" in str(info.value)


def test_draft_failing_its_checks_is_refused_naming_them():
    diffllama = tiny("diffllama", num_hidden_layers=2, hidden_size=64, intermediate_size=96, num_attention_heads=4,
                     num_key_value_heads=2, vocab_size=50)  # fmt: skip
    with pytest.raises(DraftRefusedError) as info:  # DiffLlama's differential attention: no vocabulary for it
        Bridge.from_hf(diffllama)
    assert "bind" in info.value.failing and "output projection" in str(info.value)
