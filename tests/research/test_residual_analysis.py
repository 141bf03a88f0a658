"""ActivationCache residual-stream analyses, checked against values computed by hand from the untouched HF model."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from bridge_core.bridge.analysis import AnalysisError
from bridge_core.bridge.processing import processed_copy

from .conftest import tiny, tokens


def _capture_inputs(modules: dict[str, torch.nn.Module]) -> tuple[dict[str, torch.Tensor], list]:
    """Forward pre-hooks on the reference model recording each module's input (hidden_states by keyword too)."""
    seen: dict[str, torch.Tensor] = {}
    handles = []
    for name, module in modules.items():

        def hook(mod, args, kwargs, name=name):
            seen[name] = (args[0] if args else kwargs["hidden_states"]).detach()

        handles.append(module.register_forward_pre_hook(hook, with_kwargs=True))
    return seen, handles


def _reference_gpt2(reference, x):
    t = reference.transformer
    seen, handles = _capture_inputs(
        {"final": t.ln_f, "mid1": t.h[1].ln_2, **{f"z{i}": t.h[i].attn.c_proj for i in range(2)}}
    )
    out = reference(x, output_hidden_states=True)
    for h in handles:
        h.remove()
    return out, seen


def test_decompose_resid_sums_to_the_final_residual_and_to_the_mid_residual():
    bridge, reference = tiny("gpt2")
    x = tokens()
    _, cache = bridge.run_with_cache(x)
    _out, seen = _reference_gpt2(reference, x)
    parts, labels = cache.decompose_resid(return_labels=True)
    assert labels == ["embed", "pos_embed", "0_attn_out", "0_mlp_out", "1_attn_out", "1_mlp_out"]
    assert parts.shape == (6, 2, 9, 64)
    torch.testing.assert_close(parts.sum(0), seen["final"], atol=1e-5, rtol=0)
    mid = cache.decompose_resid(layer=1, mlp_input=True)
    torch.testing.assert_close(mid.sum(0), seen["mid1"], atol=1e-5, rtol=0)
    attn_only = cache.decompose_resid(layer=1, mode="attn", incl_embeds=False)
    assert attn_only.shape[0] == 1
    with pytest.raises(AnalysisError):
        cache.decompose_resid(mode="heads")


def test_logit_lens_of_the_last_layer_gives_hf_logits_layernorm():
    bridge, reference = tiny("gpt2")
    x = tokens()
    _, cache = bridge.run_with_cache(x)
    out, seen = _reference_gpt2(reference, x)
    stack, labels = cache.accumulated_resid(apply_ln=True, return_labels=True)
    assert labels == ["0_pre", "1_pre", "final_post"]
    # at the final layer the lens runs ln_f itself, weights included (HookedTransformer 3.9)
    torch.testing.assert_close(stack[-1] @ reference.lm_head.weight.T, out.logits, atol=1e-4, rtol=0)
    # the lens at block 1 normalizes with block 1's ln1 statistics: LayerNorm without affine of its input
    lens = cache.accumulated_resid(layer=1, apply_ln=True)
    torch.testing.assert_close(lens[-1], F.layer_norm(out.hidden_states[1], (64,), eps=1e-5), atol=1e-5, rtol=0)
    torch.testing.assert_close(cache.accumulated_resid(layer=0)[0], out.hidden_states[0], atol=0, rtol=0)
    mid = cache.accumulated_resid(layer=1, mlp_input=True, apply_ln=True)
    torch.testing.assert_close(mid[-1], F.layer_norm(seen["mid1"], (64,), eps=1e-5), atol=1e-5, rtol=0)
    assert cache.accumulated_resid(incl_mid=True, return_labels=True)[1] == [
        "0_pre", "0_mid", "1_pre", "1_mid", "final_post"
    ]  # fmt: skip


def test_logit_lens_of_the_last_layer_gives_hf_logits_rmsnorm_offset():
    bridge, reference = tiny("gemma")
    x = tokens()
    _, cache = bridge.run_with_cache(x)
    out = reference(x)
    final = cache.accumulated_resid(apply_ln=True, pos_slice=-1)[-1]  # [batch, d_model]: the final norm's output
    torch.testing.assert_close(final @ reference.lm_head.weight.T, out.logits[:, -1], atol=1e-4, rtol=0)
    # apply_ln_to_stack only divides by the cached scale (not centered: RMSNorm); Gemma's (1 + w) by hand
    scaled = cache.apply_ln_to_stack(cache["resid_post", -1][None, :, -1], pos_slice=-1)[0]
    norm = reference.model.norm
    logits = (scaled * (1 + norm.weight)) @ reference.lm_head.weight.T
    torch.testing.assert_close(logits, out.logits[:, -1], atol=1e-4, rtol=0)


def test_direct_logit_attribution_on_a_processed_copy_sums_to_hf_logit_difference():
    bridge, reference = tiny("gpt2")
    x = tokens()
    processed = processed_copy(bridge)
    _, cache = processed.run_with_cache(x)
    right, wrong = x[:, -1], (x[:, -1] + 7) % 101
    parts = cache.decompose_resid(pos_slice=-1)  # [components, batch, d_model]
    attrs = cache.logit_attrs(parts, right, incorrect_tokens=wrong, pos_slice=-1)
    assert attrs.shape == (parts.shape[0], 2)
    with pytest.raises(AnalysisError, match="pos_slice"):
        cache.logit_attrs(parts, right, incorrect_tokens=wrong)
    hf = reference(x).logits[:, -1]
    expected = hf.gather(-1, right[:, None])[:, 0] - hf.gather(-1, wrong[:, None])[:, 0]
    W_U = reference.lm_head.weight  # [d_vocab, d_model]; b_U of the folded copy = ln_f.b @ W_U (+ a shift)
    bias_term = (W_U[right] - W_U[wrong]) @ reference.transformer.ln_f.bias
    torch.testing.assert_close(attrs.sum(0) + bias_term, expected, atol=1e-4, rtol=0)
    heads = cache.stack_head_results(layer=-1, pos_slice=-1, incl_remainder=True)
    torch.testing.assert_close(
        cache.logit_attrs(heads, right, wrong, pos_slice=-1).sum(0), attrs.sum(0), atol=1e-4, rtol=0
    )


def test_stack_head_results_from_hook_z_matches_hand_per_head_outputs():
    bridge, reference = tiny("gpt2")
    x = tokens()
    _, cache = bridge.run_with_cache(x, names_filter=lambda n: not n.endswith("hook_result"))
    _out, seen = _reference_gpt2(reference, x)
    stack, labels = cache.stack_head_results(return_labels=True)
    assert labels == [f"L{layer}H{h}" for layer in range(2) for h in range(4)]
    assert stack.shape == (8, 2, 9, 64)
    for layer in range(2):
        c_proj = reference.transformer.h[layer].attn.c_proj
        z = seen[f"z{layer}"].unflatten(-1, (4, 16))
        for h in range(4):
            hand = z[..., h, :] @ c_proj.weight[h * 16 : (h + 1) * 16]
            torch.testing.assert_close(stack[layer * 4 + h], hand, atol=1e-5, rtol=0)
    _, full = bridge.run_with_cache(x)  # with hook_result cached: same values
    torch.testing.assert_close(full.stack_head_results(), stack, atol=1e-5, rtol=0)
    with_rest = cache.stack_head_results(incl_remainder=True)
    torch.testing.assert_close(with_rest.sum(0), seen["final"], atol=1e-5, rtol=0)


def test_stack_activation_matches_hf_attention_weights():
    bridge, reference = tiny("gpt2")
    x = tokens()
    _, cache = bridge.run_with_cache(x)
    reference.set_attn_implementation("eager")
    attentions = reference(x, output_attentions=True).attentions
    stacked = cache.stack_activation("pattern")
    assert stacked.shape == (2, 2, 4, 9, 9)
    torch.testing.assert_close(stacked, torch.stack(attentions), atol=1e-6, rtol=0)
    assert cache.stack_activation("resid_pre", layer=1).shape == (1, 2, 9, 64)


def test_apply_ln_to_stack_without_a_batch_dim():
    bridge, reference = tiny("gpt2")
    x = tokens(batch=1)
    _, cache = bridge.run_with_cache(x, remove_batch_dim=True)
    assert not cache.has_batch_dim
    stack = cache.apply_ln_to_stack(cache.accumulated_resid())
    out = reference(x, output_hidden_states=True)
    ln = reference.transformer.ln_f
    torch.testing.assert_close(
        (stack[-1] * ln.weight + ln.bias) @ reference.lm_head.weight.T, out.logits[0], atol=1e-4, rtol=0
    )


def test_parallel_blocks_have_no_mid_residual_and_decompose_without_it():
    bridge, reference = tiny("gpt_neox")
    x = tokens()
    _, cache = bridge.run_with_cache(x)
    with pytest.raises(AnalysisError, match="parallel"):
        cache.accumulated_resid(incl_mid=True)
    out = reference(x, output_hidden_states=True)
    # the MLP of a parallel block reads resid_pre: mlp_input adds no attention output of that block
    parts, labels = cache.decompose_resid(layer=1, mlp_input=True, return_labels=True)
    assert labels == ["embed", "0_attn_out", "0_mlp_out"]
    torch.testing.assert_close(parts.sum(0), out.hidden_states[1], atol=1e-5, rtol=0)
    lens = cache.accumulated_resid(layer=1, mlp_input=True, apply_ln=True)  # ln2's scale of block 1
    torch.testing.assert_close(lens[-1], F.layer_norm(out.hidden_states[1], (64,), eps=1e-5), atol=1e-5, rtol=0)


def test_post_norm_blocks_refuse_residual_decompositions():
    bridge, _ = tiny("opt", do_layer_norm_before=False)
    _, cache = bridge.run_with_cache(tokens())
    for call in (cache.decompose_resid, cache.accumulated_resid, lambda: cache.apply_ln_to_stack(torch.zeros(64))):
        with pytest.raises(AnalysisError, match="post-norm"):
            call()
    assert cache.stack_head_results().shape == (8, 2, 9, 64)  # per-head outputs still exist
