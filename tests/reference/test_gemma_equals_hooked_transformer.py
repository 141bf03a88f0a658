"""Gemma hook values of the bridge (multi-query and grouped-query heads, `(1 + w)` RMSNorm, embedding
scale, gated MLP, rotary) equal those of HookedTransformer (TransformerLens 3.9) from the same weights."""

from __future__ import annotations

import copy

import pytest
import torch
from transformers import GemmaConfig, GemmaForCausalLM

from bridge_core import Bridge

from . import hooked_transformer as ref
from .hooked_gemma import gemma_reference_cache

if not ref.available():
    pytest.skip(
        f"TransformerLens 3.9 reference unavailable ({ref.unavailable_reason()}); run scripts/install_reference.sh",
        allow_module_level=True,
    )


@pytest.mark.parametrize(("heads", "kv_heads"), [(4, 2), (4, 1), (8, 2)], ids=["gqa-4-2", "mqa-4-1", "gqa-8-2"])
def test_every_shared_hook_equals_hooked_transformers(heads, kv_heads):
    torch.manual_seed(heads + kv_heads)
    config = GemmaConfig(
        num_hidden_layers=2, hidden_size=64, num_attention_heads=heads, num_key_value_heads=kv_heads, head_dim=16,
        intermediate_size=96, vocab_size=97, max_position_embeddings=32,
    )  # fmt: skip
    model = GemmaForCausalLM(config).eval()
    with torch.no_grad():  # (1 + w) norms away from 1, non-zero biases where there are any
        for p in model.parameters():
            if p.dim() == 1:
                p.add_(torch.randn_like(p) * 0.2)
    reference = copy.deepcopy(model)
    bridge = Bridge.from_hf(model, "gemma")
    tokens = torch.randint(0, 97, (2, 9), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        logits, cache = bridge.run_with_cache(tokens)
    tl = gemma_reference_cache(reference, tokens)
    causal = torch.ones(9, 9, dtype=torch.bool).tril()
    for name, theirs in tl.items():
        if name in ("unembed.hook_in", "unembed.hook_out"):
            continue
        assert name in cache, f"TransformerLens has {name}, the bridge does not"
        ours = cache[name]
        if name.endswith(("hook_attn_scores", "hook_pattern")):
            ours, theirs = ours[..., causal], theirs[..., causal]  # masked keys: finfo.min vs -inf
        torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=0, msg=name)
    assert cache["blocks.0.attn.hook_k"].shape[2] == kv_heads
    torch.testing.assert_close(logits, tl["unembed.hook_out"], atol=1e-4, rtol=0)
