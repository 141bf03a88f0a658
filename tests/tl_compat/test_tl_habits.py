"""HookedTransformer habits on a bridge, each against HF, a deep copy or hand computation (the Main Demo
script test covers the same habits against HookedTransformer 3.9 itself)."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch

from bridge_core import Bridge
from bridge_core.bridge.processing import ProcessingSkipped, inexact_transforms
from bridge_core.errors import InputError
from bridge_core.registry import default_registry

from ._models import gpt2

FAMILIES = sorted(default_registry().names())


def test_hook_attributes_attach_only_entries_until_a_call():
    model = gpt2(97)
    bridge = Bridge.from_hf(model, "gpt2")
    bridge.blocks[0].attn.hook_z.add_hook(lambda z, hook: z * 0)
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())  # nothing on the model
    tokens = torch.randint(0, 97, (1, 6))
    reference = copy.deepcopy(model)
    reference.transformer.h[0].attn.c_proj.register_forward_pre_hook(lambda m, args: (args[0] * 0,))
    torch.testing.assert_close(bridge(tokens), reference(tokens).logits, atol=1e-5, rtol=0)
    bridge.blocks[0].attn.hook_z.remove_hooks()
    torch.testing.assert_close(bridge(tokens), model(tokens).logits, atol=0, rtol=0)


def test_permanent_hooks_survive_reset_and_run_with_hooks_until_including_permanent():
    bridge = Bridge.from_hf(gpt2(97), "gpt2")
    calls = []
    bridge.hook_dict["hook_embed"].add_hook(lambda x, hook: calls.append(1), is_permanent=True)
    bridge.hook_embed.add_hook(lambda x, hook: calls.append(2))
    tokens = torch.randint(0, 97, (1, 4))
    bridge.reset_hooks()
    bridge.run_with_hooks(tokens, fwd_hooks=[("hook_embed", lambda x, hook: calls.append(3))])
    bridge(tokens)
    assert calls == [1, 3, 1]
    bridge.hook_embed.remove_hooks()  # not the permanent one
    bridge(tokens)
    bridge.hook_embed.remove_hooks(including_permanent=True)
    bridge(tokens)
    assert calls == [1, 3, 1, 1]


def test_cache_shorthands_name_transformer_lens_hooks():
    bridge = Bridge.from_hf(gpt2(97), "gpt2")
    _, cache = bridge.run_with_cache(torch.randint(0, 97, (1, 5)))
    assert cache["embed"] is cache["hook_embed"] and cache["pos_embed"] is cache["hook_pos_embed"]
    assert cache["scale"] is cache["ln_final.hook_scale"]
    assert cache["resid_post", -1] is cache["blocks.1.hook_resid_post"]
    assert cache["scale", 0, "ln1"] is cache["blocks.0.ln1.hook_scale"]
    assert cache["pattern1"] is cache["blocks.1.attn.hook_pattern"]


def test_generate_maps_hooked_transformers_parameters():
    model = gpt2(97)
    reference = copy.deepcopy(model)
    bridge = Bridge.from_hf(model, "gpt2")
    tokens = torch.randint(3, 97, (1, 5))
    assert torch.equal(bridge.generate(tokens, max_new_tokens=0), tokens)  # HF would raise
    greedy = bridge.generate(tokens, max_new_tokens=5, stop_at_eos=False, use_past_kv_cache=False, verbose=False)
    expected = reference.generate(tokens, max_new_tokens=5, do_sample=False, eos_token_id=None, pad_token_id=0)
    assert torch.equal(greedy, expected)
    new = greedy[0, 5:].tolist()
    stop = new[1]  # generation ends at its first occurrence
    stopped = bridge.generate(tokens, max_new_tokens=5, eos_token_id=stop)
    assert stopped[0, 5:].tolist() == new[: new.index(stop) + 1]
    with pytest.raises(InputError, match="freq_penalty"):
        bridge.generate(tokens, freq_penalty=1.0)
    with pytest.raises(InputError, match="return_type"):
        bridge.generate(tokens, return_type="embeds")


@pytest.mark.parametrize("family", FAMILIES)
def test_processed_copy_with_its_defaults_works_on_every_family(family):
    bridge = Bridge.from_spec(family)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        processed = bridge.processed_copy()
    skipped = [str(w.message) for w in caught if issubclass(w.category, ProcessingSkipped)]
    inexact = set(inexact_transforms(bridge))
    assert len(skipped) == len(inexact)
    assert {k for k, v in processed.processing.items() if not v} == inexact
    if bridge.is_encoder_decoder:
        return
    tokens = torch.randint(0, bridge.cfg.d_vocab, (1, 6))
    torch.testing.assert_close(processed(tokens).log_softmax(-1), bridge(tokens).log_softmax(-1), atol=1e-4, rtol=0)
