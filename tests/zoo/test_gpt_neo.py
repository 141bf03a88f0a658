"""GPT-Neo (built-in `gpt_neo`): attention computed in the module's own code, unscaled scores, and local layers
whose window lives in the module's own causal buffer (the model hands every layer one causal mask). Every
hook value equals HookedTransformer 3.9's on the same weights, with logits bit-identical to HF's."""

from __future__ import annotations

import copy

import pytest
import torch
from reference import hooked_transformer as ref
from transformers import AutoConfig, AutoModelForCausalLM

from bridge_core import Bridge

SEQ = 9


def _tiny(window: int):
    torch.manual_seed(0)
    config = AutoConfig.for_model(
        "gpt_neo",
        num_layers=2,
        hidden_size=64,
        num_heads=4,
        intermediate_size=None,  # TransformerLens's d_mlp is 4 * d_model
        vocab_size=101,
        max_position_embeddings=64,
        attention_types=[[["global", "local"], 1]],
        window_size=window,
        bos_token_id=0,
        eos_token_id=0,
    )
    model = AutoModelForCausalLM.from_config(config).eval()
    with torch.no_grad():  # non-trivial norm weights and biases
        for p in model.parameters():
            if p.dim() == 1:
                p.add_(torch.randn_like(p) * 0.2)
    return model


@pytest.mark.skipif(not ref.available(), reason=f"TransformerLens 3.9 unavailable: {ref.unavailable_reason()}")
def test_every_hook_value_equals_hooked_transformers_with_a_window_shorter_than_the_input():
    from .hooked_zoo import hooked_gpt_neo

    window = 3
    model = _tiny(window)
    reference = copy.deepcopy(model)
    tokens = torch.randint(0, 101, (2, SEQ), generator=torch.Generator().manual_seed(3))
    bridge = Bridge.from_hf(model)  # the registry's built-in gpt_neo
    assert bridge.spec.name == "gpt_neo"
    with torch.no_grad():
        plain = bridge(tokens)
        hf_logits = reference(tokens).logits
        logits, cache = bridge.run_with_cache(tokens)
    assert torch.equal(plain, hf_logits)  # no hooks: HF's own forward, bit for bit
    with torch.no_grad():
        tl = ref.run_reference(hooked_gpt_neo(reference), tokens)
    q, k = torch.arange(SEQ)[:, None], torch.arange(SEQ)[None, :]
    allowed = {0: k <= q, 1: (k <= q) & (q - k < window)}  # layer 1 is local
    compared, missing = [], []
    for name, theirs in tl.items():
        if name not in cache:
            missing.append(name)
            continue
        ours = cache[name]
        if name.endswith(("hook_attn_scores", "hook_pattern")):
            keep = allowed[int(name.split(".")[1])]
            if name.endswith("hook_pattern"):  # the window's zeros are part of the pattern
                torch.testing.assert_close(ours[..., ~keep], torch.zeros_like(ours[..., ~keep]), atol=0, rtol=0)
            ours, theirs = ours[..., keep], theirs[..., keep]  # masked keys: finfo.min vs -inf
        torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=0, msg=name)
        compared.append(name)
    assert set(missing) <= {"unembed.hook_in", "unembed.hook_out"}, f"TL hooks the bridge lacks: {missing}"
    assert "blocks.1.attn.hook_pattern" in compared and "blocks.1.ln2.hook_scale" in compared
    torch.testing.assert_close(logits, tl["unembed.hook_out"], atol=1e-4, rtol=0)


def test_editing_a_local_layers_pattern_keeps_the_window():
    """A pattern hook on the local layer routes attention through the bridge's recomputation: an identity
    edit keeps HF's logits (the window applied), and halving one head equals the same edit made by hand."""
    model = _tiny(3)
    reference = copy.deepcopy(model)
    tokens = torch.randint(0, 101, (1, SEQ), generator=torch.Generator().manual_seed(4))
    bridge = Bridge.from_hf(model)

    def scale_head(pattern, hook):
        pattern[:, 2] = pattern[:, 2] * 0.5
        return pattern

    with torch.no_grad():
        same = bridge.run_with_hooks(tokens, fwd_hooks=[("blocks.1.attn.hook_pattern", lambda p, hook: p.clone())])
        edited = bridge.run_with_hooks(tokens, fwd_hooks=[("blocks.1.attn.hook_pattern", scale_head)])
        torch.testing.assert_close(same, reference(tokens).logits, atol=1e-5, rtol=0)

        # by hand on the untouched copy: head 2's output of layer 1 halved before out_proj
        attn = reference.transformer.h[1].attn.attention

        def halve_head(module, args):
            z = args[0].clone().view(1, SEQ, 4, 16)
            z[:, :, 2] = z[:, :, 2] * 0.5
            return (z.view(1, SEQ, 64),)

        handle = attn.out_proj.register_forward_pre_hook(halve_head)
        try:
            expected = reference(tokens).logits
        finally:
            handle.remove()
    torch.testing.assert_close(edited, expected, atol=1e-5, rtol=0)
