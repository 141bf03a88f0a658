"""Norm hook points in fp32, bf16 and fp16 for every built-in spec, against the untouched HF model.

Norm weights are randomized far from 1 (and from Gemma's 0) before the bridge exists, so a kind that
multiplies by the weight on the wrong side of a cast shows. Identity hooks on `hook_scale` /
`hook_normalized` force the output to be rebuilt; the logits must stay bit-identical to HF's.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from bridge_core import Bridge
from bridge_core.kinds import Norm, NormKind

from ._models import BUILTIN_SPECS, call_kwargs, hf_logits, model_for, tokens_for

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
HALF = ["bf16", "fp16"]
IDENTITY_EDITS = {
    "returns_a_clone": lambda tensor, hook: tensor.clone(),
    "multiplies_by_one_in_place": lambda tensor, hook: tensor.mul_(1.0),
}
# The kinds as they were before issue 15: layernorm computed in the model's dtype, rmsnorm multiplied
# by the weight in float32 before casting (LlamaRMSNorm casts first).
BROKEN_KINDS = {
    "layernorm": NormKind("layernorm", centered=True),
    "rmsnorm": NormKind("rmsnorm", centered=False, upcast=True),
}


def model_with_random_norms(spec: str, dtype: torch.dtype, seed: int = 0) -> nn.Module:
    """A tiny model whose norm weights (and biases) are spread over [-1.5, 1.5]: nowhere near an identity."""
    model = model_for(spec, seed=seed)
    generator = torch.Generator().manual_seed(seed + 7)
    with torch.no_grad():
        for module in model.modules():
            if "Norm" in type(module).__name__:
                for param in module.parameters(recurse=False):
                    param.copy_(torch.rand(param.shape, generator=generator) * 3 - 1.5)
    return model.to(dtype)


def norm_points(bridge: Bridge, suffix: str) -> list[str]:
    return [name for name in bridge.hook_names() if name.endswith(suffix)]


@pytest.mark.parametrize("edit", list(IDENTITY_EDITS))
@pytest.mark.parametrize("suffix", ["hook_normalized", "hook_scale"])
@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize("spec", BUILTIN_SPECS)
@torch.no_grad()
def test_identity_edits_of_every_norm_point_keep_logits_bit_identical_to_hf(spec, dtype, suffix, edit):
    model = model_with_random_norms(spec, DTYPES[dtype])
    reference = copy.deepcopy(model)
    bridge = Bridge.from_hf(model, spec=spec)
    toks = tokens_for(model)
    expected = hf_logits(reference, toks)
    points = norm_points(bridge, suffix)
    assert points, f"{spec} has no {suffix}"
    for point in points:  # each alone: a mismatch names its point
        logits = bridge.run_with_hooks(toks, fwd_hooks=[(point, IDENTITY_EDITS[edit])], **call_kwargs(model, toks))
        assert torch.equal(logits, expected), f"{spec} {dtype}: identity edit at {point} changed the logits"
    hooked = [(point, IDENTITY_EDITS[edit]) for point in points]
    assert torch.equal(bridge.run_with_hooks(toks, fwd_hooks=hooked, **call_kwargs(model, toks)), expected)


def kind_error_in_ulps(kind: Norm, module: nn.Module, dtype: torch.dtype) -> tuple[float, float]:
    """(fraction of elements that differ, worst difference in units of the dtype's eps times |HF's value|)
    between `kind.output` of the unedited normalized values and the HF module's own output."""
    d = module.weight.shape[-1]
    x = (torch.randn(4, 16, d, generator=torch.Generator().manual_seed(0)) * 3).to(dtype)
    expected = module(x)
    prepared = kind.prepare(x)
    rebuilt = kind.output(
        prepared / kind.scale(prepared, kind.eps(module)), module.weight, getattr(module, "bias", None), expected.dtype
    )
    # one rounding of the output, measured against the size of the terms summed (normalized·w and b): where
    # they cancel (an output near 0, BART's many random-bias norms), |output| alone would call it huge
    normalized = (prepared / kind.scale(prepared, kind.eps(module))).float()
    bias = getattr(module, "bias", None)
    terms = (normalized * module.weight.float()).abs() + (0 if bias is None else bias.float().abs())
    ulp = torch.finfo(dtype).eps * torch.maximum(expected.float().abs(), terms).clamp_min(torch.finfo(dtype).tiny)
    differs = rebuilt != expected
    return differs.float().mean().item(), ((rebuilt.float() - expected.float()).abs() / ulp).max().item()


def assert_kind_computes_as_hf(kind: Norm, module: nn.Module, dtype: torch.dtype, where: str) -> None:
    # Measured with the shipped kinds: at most 0.05% of elements differ (fp16 LayerNorm, whose kernel
    # fuses multiply-adds), each by under one eps; bf16 RMSNorm kinds match exactly.
    fraction, worst = kind_error_in_ulps(kind, module, dtype)
    assert fraction <= 1e-3 and worst < 1.0, f"{where}: {fraction:.2%} of elements differ, worst {worst:.2f} eps"


@pytest.mark.parametrize("dtype", HALF)
@pytest.mark.parametrize("spec", BUILTIN_SPECS)
@torch.no_grad()
def test_each_norm_kind_rebuilds_its_hf_modules_output_to_under_one_rounding_in_half_precision(spec, dtype):
    """What an ablation of `hook_normalized` returns is the kind's arithmetic: it must round as HF does."""
    model = model_with_random_norms(spec, DTYPES[dtype])
    bridge = Bridge.from_hf(model, spec=spec)
    for point in norm_points(bridge, "hook_normalized"):
        place = bridge.hook_point(point).place
        assert_kind_computes_as_hf(place.kind, place.module, DTYPES[dtype], f"{spec} {dtype} {point}")


@pytest.mark.parametrize("dtype", HALF)
@pytest.mark.parametrize(("spec", "kind"), [("gpt2", "layernorm"), ("llama", "rmsnorm")])
@torch.no_grad()
def test_the_rounding_check_fails_on_the_kinds_before_the_fix(spec, kind, dtype):
    model = model_with_random_norms(spec, DTYPES[dtype])
    bridge = Bridge.from_hf(model, spec=spec)
    place = bridge.hook_point("ln_final.hook_normalized").place
    assert place.kind.name == kind
    with pytest.raises(AssertionError, match="elements differ"):
        assert_kind_computes_as_hf(BROKEN_KINDS[kind], place.module, DTYPES[dtype], "broken")


@pytest.mark.parametrize("dtype", HALF)
@pytest.mark.parametrize("spec", ["gpt2", "llama", "gemma"])
@torch.no_grad()
def test_zero_ablating_final_normalized_equals_hf_with_the_norm_output_replaced_by_its_bias(spec, dtype):
    model = model_with_random_norms(spec, DTYPES[dtype])
    reference = copy.deepcopy(model)
    bridge = Bridge.from_hf(model, spec=spec)
    place = bridge.hook_point("ln_final.hook_normalized").place
    ref_norm = reference.get_submodule(place.module_path)
    bias = ref_norm.bias if getattr(ref_norm, "bias", None) is not None else torch.zeros_like(ref_norm.weight)
    ref_norm.register_forward_hook(lambda module, args, output: torch.zeros_like(output) + bias)
    toks = tokens_for(model)
    logits = bridge.run_with_hooks(toks, fwd_hooks=[("ln_final.hook_normalized", lambda t, h: torch.zeros_like(t))])
    assert torch.equal(logits, hf_logits(reference, toks))
