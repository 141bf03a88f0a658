"""Persimmon (issue 17): one fused query_key_value projection, per-head interleaved, whose q and k pass
LayerNorms before rotary. hook_q / hook_k are the projection's q and k (what HF's q/k norms receive), and
W_Q / W_K recompute them; qkv_recompute compared them with the normalized q HF hands attention and failed."""

from __future__ import annotations

import pytest
import torch
import transformers

from bridge_core import Bridge
from bridge_core.conformance import build_context, run_checks
from bridge_core.drafting.drafter import draft_model_type
from bridge_core.drafting.emit import to_spec
from bridge_core.drafting.onboarding import DraftedSpecWarning


def test_hook_q_and_k_are_what_hfs_qk_norms_receive():
    draft = draft_model_type("persimmon")
    assert draft.fields["block"]["attn"]["qkv"]["order"] == "per_head_interleaved"
    assert run_checks(build_context(to_spec(draft)), ["qkv_recompute"])["qkv_recompute"].status == "pass"
    config = transformers.AutoConfig.for_model("persimmon", **draft.fields["test_config"])
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(config).eval()
    with pytest.warns(DraftedSpecWarning):
        bridge = Bridge.from_hf(model)
    attn = model.model.layers[1].self_attn
    seen = {}
    handles = [
        attn.q_layernorm.register_forward_hook(lambda m, a, out: seen.update(q=a[0])),
        attn.k_layernorm.register_forward_hook(lambda m, a, out: seen.update(k=a[0])),
        attn.register_forward_pre_hook(lambda m, a, kw: seen.update(x=kw.get("hidden_states", a[0] if a else None)),
                                       with_kwargs=True),
    ]  # fmt: skip
    tokens = torch.randint(3, config.vocab_size, (2, 6))
    with torch.no_grad():
        model(tokens)
    for handle in handles:
        handle.remove()
    with torch.no_grad():
        _, cache = bridge.run_with_cache(tokens)
    weights = bridge.blocks[1].attn
    for n in "qk":
        torch.testing.assert_close(cache[f"blocks.1.attn.hook_{n}"], seen[n])  # [b, s, heads, d_head]
        w, b = getattr(weights, f"W_{n.upper()}"), getattr(weights, f"b_{n.upper()}")
        torch.testing.assert_close(torch.einsum("bsm,hmd->bshd", seen["x"], w) + b, seen[n])
