"""processed_copy: folded / centered weights in a copy, log-probabilities unchanged, the user's model untouched."""

from __future__ import annotations

import pytest
import torch

from bridge_core.bridge.processing import ProcessingError, processed_copy

from .conftest import tiny, tokens


def _log_probs(logits: torch.Tensor) -> torch.Tensor:
    return torch.log_softmax(logits.float(), -1)


def _assert_same_log_probs(processed, reference, x=None):
    x = tokens() if x is None else x
    torch.testing.assert_close(_log_probs(processed(x)), _log_probs(reference(x).logits), atol=1e-4, rtol=0)


def test_gpt2_all_four_transforms_keep_log_probs_and_match_hand_folding():
    bridge, reference = tiny("gpt2")
    processed = processed_copy(bridge)
    _assert_same_log_probs(processed, reference)
    block, ref = processed.model.transformer.h[0], reference.transformer.h[0]
    assert torch.equal(block.ln_1.weight, torch.ones(64)) and torch.equal(block.ln_1.bias, torch.zeros(64))
    # fold_ln by hand: W' = diag(w) W (Conv1D [in, out]); b' = b + b_ln @ W; then b_V folded into b_O
    W, b = ref.attn.c_attn.weight, ref.attn.c_attn.bias
    torch.testing.assert_close(block.attn.c_attn.weight, ref.ln_1.weight[:, None] * W)
    b_qkv = b + ref.ln_1.bias @ W
    torch.testing.assert_close(block.attn.c_attn.bias[:128], b_qkv[:128], atol=1e-6, rtol=0)
    assert torch.equal(block.attn.c_attn.bias[128:], torch.zeros(64))
    W_O = ref.attn.c_proj.weight
    b_O = ref.attn.c_proj.bias + b_qkv[128:] @ W_O
    torch.testing.assert_close(block.attn.c_proj.bias, b_O - b_O.mean(), atol=1e-6, rtol=0)
    torch.testing.assert_close(block.attn.c_proj.weight, W_O - W_O.mean(-1, keepdim=True), atol=1e-6, rtol=0)
    W_U = processed.W_U
    torch.testing.assert_close(W_U.mean(-1), torch.zeros(64), atol=1e-6, rtol=0)
    torch.testing.assert_close(processed.W_E.mean(-1), torch.zeros(101), atol=1e-6, rtol=0)
    assert processed.model.lm_head.weight is not processed.model.transformer.wte.weight  # untied in the copy
    assert processed.processing == {
        "fold_ln": True, "center_writing_weights": True, "center_unembed": True, "fold_value_biases": True
    }  # fmt: skip


@pytest.mark.parametrize("parallel", [True, False])
def test_gpt_neox_all_four_transforms_keep_log_probs(parallel):
    bridge, reference = tiny("gpt_neox", use_parallel_residual=parallel)
    _assert_same_log_probs(processed_copy(bridge), reference)


def test_each_transform_alone_keeps_log_probs():
    bridge, reference = tiny("gpt2", seed=3)
    for name in ("fold_ln", "center_writing_weights", "center_unembed", "fold_value_biases"):
        flags = dict.fromkeys(("fold_ln", "center_writing_weights", "center_unembed", "fold_value_biases"), False)
        _assert_same_log_probs(processed_copy(bridge, **{**flags, name: True}), reference)


def test_gemma_folds_its_one_plus_w_norms_and_refuses_centering_writers():
    bridge, reference = tiny("gemma")
    with pytest.raises(ProcessingError, match="center_writing_weights"):
        processed_copy(bridge, center_writing_weights=True)  # insisting on an inexact transform
    processed = processed_copy(bridge, center_writing_weights=False)
    _assert_same_log_probs(processed, reference)
    layer, ref = processed.model.model.layers[1], reference.model.layers[1]
    assert torch.equal(layer.input_layernorm.weight, torch.zeros(64))  # (1 + 0): pure normalization
    scale = 1 + ref.input_layernorm.weight
    torch.testing.assert_close(layer.self_attn.k_proj.weight, ref.self_attn.k_proj.weight * scale, atol=1e-6, rtol=0)
    folded = reference.lm_head.weight * (1 + reference.model.norm.weight)  # then centered over the vocabulary
    torch.testing.assert_close(processed.model.lm_head.weight, folded - folded.mean(0), atol=1e-6, rtol=0)


def test_gemma2_final_softcap_refuses_center_unembed_and_still_folds():
    bridge, reference = tiny("gemma2")
    with pytest.raises(ProcessingError, match="center_unembed"):
        processed_copy(bridge, center_writing_weights=False, center_unembed=True)
    _assert_same_log_probs(processed_copy(bridge, center_writing_weights=False, center_unembed=False), reference)


def test_post_norm_blocks_refuse_folding_and_centering_but_allow_exact_transforms():
    bridge, reference = tiny("opt", do_layer_norm_before=False)
    for flag in ("fold_ln", "center_writing_weights"):
        with pytest.raises(ProcessingError, match=flag):
            processed_copy(bridge, **{"fold_ln": False, "center_writing_weights": False, flag: True})
    _assert_same_log_probs(processed_copy(bridge, fold_ln=False, center_writing_weights=False), reference)


def test_the_users_model_is_left_bitwise_unchanged():
    bridge, _ = tiny("gpt2")
    model = bridge.model
    before = {k: v.clone() for k, v in model.state_dict().items()}
    tied = model.lm_head.weight is model.transformer.wte.weight
    config = model.config.to_dict()
    processed_copy(bridge)
    after = model.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert (model.lm_head.weight is model.transformer.wte.weight) == tied
    assert model.config.to_dict() == config
    assert model.lm_head.bias is None
