"""Hook values of the bridge equal those of HookedTransformer (TransformerLens 3.9), the semantic
reference for hook names and values, built from the same GPT-2 weights (unprocessed).

Skipped unless `scripts/install_reference.sh` has installed the reference into `.reference/tl39`.
"""

from __future__ import annotations

import copy

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from bridge_core import Bridge

from . import hooked_transformer as ref

if not ref.available():
    pytest.skip(
        f"TransformerLens 3.9 reference unavailable ({ref.unavailable_reason()}); run scripts/install_reference.sh",
        allow_module_level=True,
    )

ATOL = 1e-5


def gpt2(n_layer: int, n_head: int, d_model: int, n_inner: int | None, attn: str, seed: int) -> GPT2LMHeadModel:
    torch.manual_seed(seed)
    config = GPT2Config(n_layer=n_layer, n_embd=d_model, n_head=n_head, n_inner=n_inner, vocab_size=97,
                        n_positions=32, attn_implementation=attn)  # fmt: skip
    model = GPT2LMHeadModel(config).eval()
    with torch.no_grad():  # norms and biases away from 1 and 0, so a wrong one shows
        for p in model.parameters():
            if p.dim() == 1:
                p.add_(torch.randn_like(p) * 0.2)
    return model


CONFIGS = [
    pytest.param(2, 4, 64, None, "eager", id="2L-h4-d64-eager"),
    pytest.param(3, 2, 32, 48, "sdpa", id="3L-h2-d32-inner48-sdpa"),
    pytest.param(1, 8, 64, None, "sdpa", id="1L-h8-d64-sdpa"),
]


def compare(bridge_cache, tl_cache, real: torch.Tensor) -> list[str]:
    """Every hook name both have, compared at real positions; returns the names compared."""
    compared = []
    for name, theirs in tl_cache.items():
        if name not in bridge_cache:
            continue
        ours = bridge_cache[name]
        if name.endswith(("hook_attn_scores", "hook_pattern")):
            keep = real[:, None, :, None] & real[:, None, None, :]  # [b, 1, q, k], real rows and keys
            causal = torch.ones(ours.shape[-2:], dtype=torch.bool).tril()
            keep = (keep & causal).expand_as(ours)
            ours, theirs = ours[keep], theirs[keep]  # masked keys: HF's finfo.min, TL's -inf
        else:
            ours = ours.expand_as(theirs)  # hook_pos_embed: HF's [1, pos, d] broadcasts to TL's [b, pos, d]
            ours, theirs = ours[real], theirs[real]
        torch.testing.assert_close(ours, theirs, atol=ATOL, rtol=0, msg=name)
        compared.append(name)
    return compared


@pytest.mark.parametrize(("n_layer", "n_head", "d_model", "n_inner", "attn"), CONFIGS)
@pytest.mark.parametrize("padding", ["none", "right"])
def test_every_hook_value_equals_hooked_transformers(n_layer, n_head, d_model, n_inner, attn, padding):
    model = gpt2(n_layer, n_head, d_model, n_inner, attn, seed=n_layer * 10 + n_head)
    reference = copy.deepcopy(model)
    bridge = Bridge.from_hf(model, "gpt2")
    tokens = torch.randint(0, 97, (3, 9), generator=torch.Generator().manual_seed(5))
    mask = torch.ones_like(tokens)
    if padding == "right":  # real tokens start at position 0 in every row, so HF and TL agree on positions
        mask[1, -3:] = 0
        mask[2, -1:] = 0
    with torch.no_grad():
        logits, cache = bridge.run_with_cache(tokens, attention_mask=mask)
    tl = ref.reference_cache(reference, tokens, attention_mask=None if padding == "none" else mask)
    compared = compare(cache, tl, mask.bool())
    expected = {n for n in tl if n not in ("unembed.hook_in", "unembed.hook_out")}
    assert expected <= set(compared), f"TL hooks the bridge lacks: {sorted(expected - set(compared))}"
    torch.testing.assert_close(logits[mask.bool()], tl["unembed.hook_out"][mask.bool()], atol=1e-4, rtol=0)


def test_hook_result_equals_hooked_transformers_per_head_result():
    model = gpt2(2, 4, 64, None, "eager", seed=7)
    reference = copy.deepcopy(model)
    bridge = Bridge.from_hf(model, "gpt2")
    tokens = torch.randint(0, 97, (2, 6), generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        _, cache = bridge.run_with_cache(tokens, names_filter=lambda n: n.endswith("hook_result"))
    tl = ref.reference_cache(reference, tokens, extra_hooks=True)
    for i in range(2):
        torch.testing.assert_close(
            cache[f"blocks.{i}.attn.hook_result"], tl[f"blocks.{i}.attn.hook_result"], atol=ATOL, rtol=0
        )
