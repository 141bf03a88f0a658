"""Norm kinds of drafted families (issue 17): Nemotron's LayerNorm1P scales by (1 + w) (`layernorm_offset`);
OLMo's LayerNorm has no parameters and keeps no eps (its forward passes 1e-5: `layernorm_fixed_eps`).

Each is checked against HF's own computation: the norm module's output on its input, and an ablation made
through the bridge against the same ablation made with a plain torch hook on the untouched model."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import transformers

from bridge_core import Bridge
from bridge_core.drafting.drafter import draft_model_type
from bridge_core.drafting.onboarding import DraftedSpecWarning
from bridge_core.errors import BindError

TINY = {"num_hidden_layers": 2, "hidden_size": 64, "num_attention_heads": 4, "num_key_value_heads": 2,
        "intermediate_size": 96, "vocab_size": 101}  # fmt: skip


def _tiny(model_type: str, **extra) -> torch.nn.Module:
    config = transformers.AutoConfig.for_model(model_type, **TINY, **extra)
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(config).eval()
    with torch.no_grad():  # random norm weights, so (1 + w) and w give different outputs
        for name, p in model.named_parameters():
            if "norm" in name:
                p.normal_(0.0, 0.5)
    return model


def _inputs_and_outputs(model, module, tokens):
    seen = {}
    handle = module.register_forward_hook(lambda m, args, out: seen.update(x=args[0], y=out))
    with torch.no_grad():
        logits = model(tokens).logits
    handle.remove()
    return seen["x"], seen["y"], logits


@pytest.mark.parametrize(("model_type", "kind"), [("nemotron", "layernorm_offset"), ("olmo", "layernorm_fixed_eps")])
def test_drafted_norm_kind_is_the_one_that_reproduces_hf(model_type, kind):
    draft = draft_model_type(model_type)
    block = draft.fields["block"]
    assert block["ln1"]["kind"] == block["ln2"]["kind"] == draft.fields["ln_final"]["kind"] == kind
    assert not [g for g in draft.gaps if "norm" in g.item], draft.gaps


def test_nemotron_hook_normalized_and_scale_rebuild_hfs_layernorm1p():
    model = _tiny("nemotron", head_dim=16)
    with pytest.warns(DraftedSpecWarning):
        bridge = Bridge.from_hf(model)
    tokens = torch.randint(3, 101, (2, 7))
    ln = model.model.layers[1].input_layernorm
    x, y, hf_logits = _inputs_and_outputs(model, ln, tokens)
    with torch.no_grad():
        logits, cache = bridge.run_with_cache(tokens)
    torch.testing.assert_close(logits, hf_logits)
    # by hand: a LayerNorm whose weight is (1 + w)
    centered = x - x.mean(-1, keepdim=True)
    scale = (centered.pow(2).mean(-1, keepdim=True) + ln.eps).sqrt()
    torch.testing.assert_close(cache["blocks.1.ln1.hook_scale"], scale)
    torch.testing.assert_close(cache["blocks.1.ln1.hook_normalized"], centered / scale)
    torch.testing.assert_close(cache["blocks.1.ln1.hook_normalized"] * (1 + ln.weight) + ln.bias, y)
    assert not torch.allclose(cache["blocks.1.ln1.hook_normalized"] * ln.weight + ln.bias, y, atol=1e-3)

    # doubling hook_scale halves the normalized values before (1 + w) and b: by hand, in a torch hook
    def halved(m, args, out):
        c = args[0] - args[0].mean(-1, keepdim=True)
        return c / (2 * (c.pow(2).mean(-1, keepdim=True) + m.eps).sqrt()) * (1 + m.weight) + m.bias

    with torch.no_grad():
        edited = bridge.run_with_hooks(tokens, fwd_hooks=[("blocks.1.ln1.hook_scale", lambda t, hook: t * 2)])
        handle = ln.register_forward_hook(halved)
        expected = model(tokens).logits
        handle.remove()
    torch.testing.assert_close(edited, expected, atol=1e-5, rtol=1e-4)


def test_olmo_norm_without_parameters_or_eps_matches_hf_and_ablates_like_a_torch_hook():
    model = _tiny("olmo")
    with pytest.warns(DraftedSpecWarning):
        bridge = Bridge.from_hf(model)
    assert bridge.cfg.eps == 1e-5
    tokens = torch.randint(3, 101, (2, 7))
    ln = model.model.layers[0].post_attention_layernorm
    x, y, hf_logits = _inputs_and_outputs(model, ln, tokens)
    with torch.no_grad():
        _, cache = bridge.run_with_cache(tokens)
    expected = torch.nn.functional.layer_norm(x, (64,), eps=1e-5)  # OLMo's forward: no weight, no bias, 1e-5
    torch.testing.assert_close(y, expected)
    torch.testing.assert_close(cache["blocks.0.ln2.hook_normalized"], expected)
    scale = (x.var(-1, unbiased=False, keepdim=True) + 1e-5).sqrt()
    torch.testing.assert_close(cache["blocks.0.ln2.hook_scale"], scale)

    # zeroing position 3's normalized values = HF's norm output zeroed there by a plain torch hook
    def zero_at_3(t, hook):
        t[:, 3] = 0

    def torch_zero_at_3(m, args, out):
        out = out.clone()
        out[:, 3] = 0
        return out

    with torch.no_grad():
        edited = bridge.run_with_hooks(tokens, fwd_hooks=[("blocks.0.ln2.hook_normalized", zero_at_3)])
        handle = ln.register_forward_hook(torch_zero_at_3)
        expected_logits = model(tokens).logits
        handle.remove()
    assert not torch.allclose(expected_logits, hf_logits)
    torch.testing.assert_close(edited, expected_logits)


def test_plain_layernorm_on_olmo_is_refused_at_binding_naming_the_field():
    spec = Path(__file__).parents[1] / "conformance/broken_specs/olmo_layernorm_without_eps.yaml"
    with pytest.raises(BindError, match=r"no epsilon on OlmoLayerNorm.*layernorm_fixed_eps") as err:
        Bridge.from_hf(_tiny("olmo"), spec)
    assert err.value.spec_path.endswith(".kind")
