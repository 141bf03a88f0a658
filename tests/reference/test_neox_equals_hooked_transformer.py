"""GPT-NeoX hook values of the bridge (interleaved fused QKV, partial rotary, parallel or sequential
blocks) equal those of HookedTransformer (TransformerLens 3.9) built from the same weights."""

from __future__ import annotations

import copy

import pytest
import torch
from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

from bridge_core import Bridge

from . import hooked_transformer as ref
from .hooked_neox import neox_reference_cache

if not ref.available():
    pytest.skip(
        f"TransformerLens 3.9 reference unavailable ({ref.unavailable_reason()}); run scripts/install_reference.sh",
        allow_module_level=True,
    )


@pytest.mark.parametrize(
    ("heads", "fraction", "parallel"),
    [(4, 0.25, True), (2, 0.5, False), (4, 1.0, True)],
    ids=["h4-rot0.25-parallel", "h2-rot0.5-sequential", "h4-rot1.0-parallel"],
)
def test_every_shared_hook_equals_hooked_transformers(heads, fraction, parallel):
    torch.manual_seed(heads)
    config = GPTNeoXConfig(
        num_hidden_layers=2, hidden_size=64, num_attention_heads=heads, intermediate_size=96, vocab_size=97,
        max_position_embeddings=32, use_parallel_residual=parallel, tie_word_embeddings=False,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": fraction},
    )  # fmt: skip
    model = GPTNeoXForCausalLM(config).eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 1:
                p.add_(torch.randn_like(p) * 0.2)
    reference = copy.deepcopy(model)
    bridge = Bridge.from_hf(model, "gpt_neox")
    tokens = torch.randint(0, 97, (2, 9), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        logits, cache = bridge.run_with_cache(tokens)
    tl = neox_reference_cache(reference, tokens)
    compared = []
    causal = torch.ones(9, 9, dtype=torch.bool).tril()
    for name, theirs in tl.items():
        if name not in cache:
            continue
        ours = cache[name]
        if name.endswith(("hook_attn_scores", "hook_pattern")):
            ours, theirs = ours[..., causal], theirs[..., causal]  # masked keys: finfo.min vs -inf
        torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=0, msg=name)
        compared.append(name)
    missing = {n for n in tl if n not in cache} - {"unembed.hook_in", "unembed.hook_out"}
    assert not missing, f"TL hooks the bridge lacks: {sorted(missing)}"
    assert any("hook_rot_q" in n for n in compared) and (parallel or any("resid_mid" in n for n in compared))
    torch.testing.assert_close(logits, tl["unembed.hook_out"], atol=1e-4, rtol=0)
