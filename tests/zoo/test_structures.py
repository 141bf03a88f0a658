"""Structural patterns of the transformer zoo (issue 16): a norm shared by a parallel block's attention and
MLP (GPT-J, Phi), norms only after the sublayers and q/k norms over the whole projection (OLMo 2), and
adjacent-pair rotary (GPT-J). Each zoo spec passes the whole conformance catalogue on every variant, and
its hook values equal HookedTransformer 3.9's on the same weights, with logits bit-identical to HF's."""

from __future__ import annotations

import copy
import re
from pathlib import Path

import pytest
import torch
from reference import hooked_transformer as ref
from transformers import AutoConfig, AutoModelForCausalLM

from bridge_core import Bridge
from bridge_core.conformance.runner import run_variants

BUILT_IN = Path(__file__).resolve().parents[2] / "adapter_specs"  # the zoo specs promoted after `conform --mutate`


def _spec(name: str) -> Path:
    return BUILT_IN / f"{name}.yaml"


@pytest.mark.parametrize("name", ["gptj", "phi", "olmo2", "cohere", "stablelm"])
def test_zoo_spec_passes_the_whole_catalogue_on_every_variant(name):
    reports = run_variants(_spec(name))
    assert len(reports) >= 3  # the spec's own test model, its variants and the eager run
    for report in reports:
        assert not report.failed(), str(report)


def _tiny(model_type: str, **overrides):
    torch.manual_seed(0)
    config = AutoConfig.for_model(model_type, **overrides)
    model = AutoModelForCausalLM.from_config(config).eval()
    with torch.no_grad():  # non-trivial norm weights and biases, so a tied or misplaced norm shows
        for p in model.parameters():
            if p.dim() == 1:
                p.add_(torch.randn_like(p) * 0.2)
    return model


_COMMON = {
    "num_hidden_layers": 2,
    "hidden_size": 64,
    "num_attention_heads": 4,
    "vocab_size": 101,
    "bos_token_id": 0,
    "eos_token_id": 0,
}
CASES = {
    # GPT-J: partial adjacent-pair rotary, one LayerNorm feeding both sublayers (TL's d_mlp is 4 * d_model)
    "gptj": ("gptj", {**_COMMON, "rotary_dim": 8, "n_inner": None, "n_positions": 64}),
    # Phi: partial rotate-half rotary, one LayerNorm feeding both sublayers (TL: no GQA, no q/k LayerNorms)
    "phi": (
        "phi",
        {
            **_COMMON,
            "intermediate_size": 96,
            "max_position_embeddings": 64,
            "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 0.5},
        },
    ),
    # OLMo 2: post-sublayer RMSNorms, whole-projection q/k RMSNorms (TL: no GQA)
    "olmo2": ("olmo2", {**_COMMON, "intermediate_size": 96, "max_position_embeddings": 64, "pad_token_id": 1}),
    # Phi-3: fused [gate | up] MLP projection (TL: W_gate / W_in split from it), fused qkv, GQA
    "phi3": (
        "phi3",
        {
            **_COMMON,
            "intermediate_size": 96,
            "max_position_embeddings": 64,
            "pad_token_id": 1,
            "num_key_value_heads": 2,
        },
    ),
}


def _builder(name: str):
    from . import hooked_zoo

    return {
        "gptj": hooked_zoo.hooked_gptj,
        "phi": hooked_zoo.hooked_phi,
        "olmo2": hooked_zoo.hooked_olmo2,
        "phi3": hooked_zoo.hooked_phi3,
    }[name]


@pytest.mark.skipif(not ref.available(), reason=f"TransformerLens 3.9 unavailable: {ref.unavailable_reason()}")
@pytest.mark.parametrize("name", sorted(CASES))
def test_every_hook_value_equals_hooked_transformers(name):
    model_type, overrides = CASES[name]
    model = _tiny(model_type, **overrides)
    reference = copy.deepcopy(model)
    tokens = torch.randint(0, 101, (2, 9), generator=torch.Generator().manual_seed(3))
    bridge = Bridge.from_hf(model, _spec(name))
    with torch.no_grad():
        plain = bridge(tokens)
        hf_logits = reference(tokens).logits
        logits, cache = bridge.run_with_cache(tokens)
    assert torch.equal(plain, hf_logits)  # no hooks: HF's own forward, bit for bit
    hooked = _builder(name)(reference)
    with torch.no_grad():
        tl = ref.run_reference(hooked, tokens)
    shared = {b.index for b in bridge.bound.blocks if b.ln1 is not None and b.ln1.feeds_into("mlp")}
    causal = torch.ones(9, 9, dtype=torch.bool).tril()
    compared, missing = [], []
    for their_name, theirs in tl.items():
        ours_name = their_name
        tied = re.fullmatch(r"blocks\.(\d+)\.ln2\.(hook_scale|hook_normalized)", their_name)
        if tied and int(tied.group(1)) in shared:  # TL computes the shared norm twice, as ln1 and a tied ln2
            ours_name = f"blocks.{tied.group(1)}.ln1.{tied.group(2)}"
        if ours_name not in cache:
            missing.append(their_name)
            continue
        ours = cache[ours_name]
        if their_name.endswith(("hook_attn_scores", "hook_pattern")):
            ours, theirs = ours[..., causal], theirs[..., causal]  # masked keys: finfo.min vs -inf
        torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=0, msg=their_name)
        compared.append(their_name)
    print(f"{name}: {len(compared)} HookedTransformer hook values equal the bridge's")
    assert set(missing) <= {"unembed.hook_in", "unembed.hook_out"}, f"TL hooks the bridge lacks: {missing}"
    assert any(n.endswith("hook_rot_q") for n in compared) and any(".ln1.hook_scale" in n for n in compared)
    torch.testing.assert_close(logits, tl["unembed.hook_out"], atol=1e-4, rtol=0)
