"""Forward parity against HF in fp32, bf16 and fp16 for every built-in spec.

The HF reference is a deep copy of the tiny model `.to(dtype)` before the bridge exists; the bridge's own
model is converted the same way. With no hook the logits are bit-identical in every dtype. A cached run
(every hook point, which routes attention through the bridge's eager path) stays close to HF's eager
attention, within:
- fp32: 1e-5 absolute (docs/architecture.md#hook-points). Measured: at most 1.5e-6 (T5), 7e-7 or less elsewhere.
- fp16: 5e-3 of the logits' scale (max |logit|). Measured: at most 1.6e-3 (T5), 1.3e-3 elsewhere.
- bf16: 3e-2 of the logits' scale. Measured: at most 1.4e-2 (T5), 1.0e-2 elsewhere (bf16 has 8 bits of
  mantissa: one rounding step of a logit near 2 is 7.8e-3).
"""

from __future__ import annotations

import copy

import pytest
import torch

from bridge_core import Bridge

from ._models import BUILTIN_SPECS, call_kwargs, hf_logits, model_for, tokens_for

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
ABSOLUTE = {"fp32": 1e-5}
RELATIVE_TO_SCALE = {"bf16": 3e-2, "fp16": 5e-3}


@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize("spec", BUILTIN_SPECS)
@torch.no_grad()
def test_logits_match_hf_in_each_dtype_bitwise_without_hooks_and_within_tolerance_with_all_hooks(spec, dtype):
    model = model_for(spec)
    reference = copy.deepcopy(model).to(DTYPES[dtype])
    model.to(DTYPES[dtype])
    bridge = Bridge.from_hf(model, spec=spec)
    toks = tokens_for(model)
    kwargs = call_kwargs(model, toks)
    expected = hf_logits(reference, toks)
    plain = bridge(toks, **kwargs)
    assert plain.dtype == DTYPES[dtype]
    assert torch.equal(plain, expected), "no-hook logits must be bit-identical to HF's in the same dtype"
    cached, cache = bridge.run_with_cache(toks, **kwargs)
    assert cached.dtype == DTYPES[dtype] and torch.isfinite(cached).all()
    assert all(torch.isfinite(v).all() for v in cache.values() if v.is_floating_point())
    # a cached run attends through the bridge's eager path: held to HF's own eager attention (against SDPA, a
    # bf16 rounding difference can flip a mixture-of-experts top-k choice: OLMoE 8.6e-2 there, 0 against eager)
    eager = copy.deepcopy(reference)
    eager.set_attn_implementation("eager")
    expected = hf_logits(eager, toks)
    error = (cached.float() - expected.float()).abs().max().item()
    if dtype in ABSOLUTE:
        assert error <= ABSOLUTE[dtype], f"{spec} {dtype}: {error:.2e}"
    else:
        scale = expected.float().abs().max().item()
        assert error <= RELATIVE_TO_SCALE[dtype] * scale, f"{spec} {dtype}: {error:.2e} at scale {scale:.2f}"
    # and the bridge leaves the dtype it found
    assert all(p.dtype == DTYPES[dtype] for p in model.parameters())
