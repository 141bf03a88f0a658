"""Attention on hidden family configurations: scores, pattern, masks and GQA heads against HF itself.

HF's probabilities come from `output_attentions=True` on an eager deep copy of the untouched model;
the allowed keys (causal, not padding, inside the layer's sliding window) are written out here.
"""

from __future__ import annotations

import torch

from ._models import assert_close_at, attn_path


def test_softmax_of_attn_scores_is_the_pattern(run):
    for i in range(run.n_layers):
        scores = run.cache[f"blocks.{i}.attn.hook_attn_scores"]
        pattern = run.cache[f"blocks.{i}.attn.hook_pattern"]
        rows = run.real_rows(pattern)
        torch.testing.assert_close(scores.float().softmax(-1)[rows], pattern[rows], rtol=0, atol=1e-6)


def test_pattern_equals_hf_eager_attention_probabilities_at_real_queries(run):
    for i, probs in enumerate(run.hf_probabilities()):
        pattern = run.cache[f"blocks.{i}.attn.hook_pattern"]
        assert pattern.shape == probs.shape == (*run.toks.shape[:1], run.bridge.cfg.n_heads, *run.toks.shape[1:2] * 2)
        rows = run.real_rows(pattern)
        torch.testing.assert_close(pattern[rows], probs[rows], rtol=0, atol=1e-6)


def test_masked_keys_get_zero_probability_and_real_rows_sum_to_one(run):
    for i in range(run.n_layers):
        pattern = run.cache[f"blocks.{i}.attn.hook_pattern"]
        allowed = run.allowed(i).expand_as(pattern)
        rows = run.real_rows(pattern)
        assert torch.all(pattern[rows & ~allowed] == 0), f"layer {i}: a causal/padding/window key is attended"
        sums = pattern.sum(-1)[run.real[:, None, :].expand(pattern.shape[:3])]
        torch.testing.assert_close(sums, torch.ones_like(sums), rtol=0, atol=1e-6)


def test_sliding_window_layers_attend_to_the_window_only_and_full_layers_beyond_it(run):
    window_layers = [i for i in range(run.n_layers) if run.window(i) is not None]
    if not window_layers:
        return  # families without sliding windows: the mask test above covers causal and padding
    full_layers = [i for i in range(run.n_layers) if run.window(i) is None]
    assert full_layers, "a hidden Gemma 2/3 config must have both layer types"
    # the last row of the unpadded batch row reaches back further than the window on full layers only
    last = run.toks.shape[1] - 1
    for i in window_layers:
        pattern = run.cache[f"blocks.{i}.attn.hook_pattern"][2, :, last]
        assert torch.all(pattern[:, : last - run.window(i) + 1] == 0)
        assert torch.all(pattern[:, last - run.window(i) + 1 :] > 0)
    for i in full_layers:
        assert torch.all(run.cache[f"blocks.{i}.attn.hook_pattern"][2, :, last] > 0)


def test_k_and_v_hooks_have_n_kv_heads_and_q_has_n_heads(run):
    cfg = run.bridge.cfg
    n_kv = getattr(run.hf_config, "num_key_value_heads", None) or run.hf_config.num_attention_heads
    assert cfg.n_kv_heads == n_kv and cfg.n_heads == run.hf_config.num_attention_heads
    b, s = run.toks.shape
    for i in range(run.n_layers):
        assert run.cache[f"blocks.{i}.attn.hook_q"].shape == (b, s, cfg.n_heads, cfg.d_head)
        assert run.cache[f"blocks.{i}.attn.hook_k"].shape == (b, s, n_kv, cfg.d_head)
        assert run.cache[f"blocks.{i}.attn.hook_v"].shape == (b, s, n_kv, cfg.d_head)
        if f"blocks.{i}.attn.hook_rot_k" in run.cache:
            assert run.cache[f"blocks.{i}.attn.hook_rot_q"].shape == (b, s, cfg.n_heads, cfg.d_head)
            assert run.cache[f"blocks.{i}.attn.hook_rot_k"].shape == (b, s, n_kv, cfg.d_head)


def test_k_and_v_hooks_equal_the_hf_projections_split_into_kv_heads(run):
    if run.family == "gpt_neox":
        return  # fused projection: checked by hand in test_family_specifics.py
    cfg = run.bridge.cfg
    paths = [f"{attn_path(run.family, i)}.{n}_proj" for i in range(run.n_layers) for n in "kv"]
    hf = run.hf_outputs(paths)
    for i in range(run.n_layers):
        for n in "kv":
            expected = hf[f"{attn_path(run.family, i)}.{n}_proj"].unflatten(-1, (cfg.n_kv_heads, cfg.d_head))
            # a cached forward runs every layer's attention eagerly; the untouched copy may run sdpa
            assert_close_at(run.cache[f"blocks.{i}.attn.hook_{n}"], expected, run.real)


def test_w_k_is_expanded_to_n_heads_while_w_k_raw_is_a_kv_head_view_of_k_proj(run):
    if run.family == "gpt_neox":
        return  # NeoX has no GQA; its fused views are checked in test_family_specifics.py
    cfg = run.bridge.cfg
    h, kv, d, dm = cfg.n_heads, cfg.n_kv_heads, cfg.d_head, cfg.d_model
    for i in range(run.n_layers):
        attn = run.bridge.blocks[i].attn
        module = dict(run.bridge.model.named_modules())[attn_path(run.family, i)]
        for n in "KV":
            proj = getattr(module, f"{n.lower()}_proj").weight  # [kv * d, d_model]
            raw = getattr(attn, f"W_{n}_raw")
            expanded = getattr(attn, f"W_{n}")
            assert raw.shape == (kv, dm, d)
            assert expanded.shape == (h, dm, d)
            assert raw.untyped_storage().data_ptr() == proj.untyped_storage().data_ptr()
            assert torch.equal(raw, proj.t().reshape(dm, kv, d).permute(1, 0, 2))
            for head in range(h):
                assert torch.equal(expanded[head], raw[head // (h // kv)])
        assert attn.W_Q.shape == (h, dm, d)
        assert attn.W_Q.untyped_storage().data_ptr() == module.q_proj.weight.untyped_storage().data_ptr()
