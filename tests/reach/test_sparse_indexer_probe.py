"""DeepSeek V3.2-style sparse attention (an indexer keeping the top-k keys per query) under the drafter's probe,
and hyper-connection residual streams (DeepSeek V4): drafting proceeds as far as the vocabulary goes and names
what it cannot say (issue 17)."""

from __future__ import annotations

import pytest
import torch
import transformers

from bridge_core.drafting import build
from bridge_core.drafting.drafter import draft_model_type
from bridge_core.drafting.errors import DraftingError
from bridge_core.drafting.probe import observe
from bridge_core.drafting.shrink import complete, shrink


def _tiny(model_type: str) -> torch.nn.Module:
    cls = build.model_class_for(model_type)
    base = build.default_config(cls, model_type)
    overrides, _ = shrink(base)
    return build.build(cls, build.config_from(cls, complete(cls.config_class, base, overrides)))


def test_the_probe_applies_the_indexers_selection_as_hfs_own_sdpa_path_does():
    model = _tiny("deepseek_v32")
    inputs = build.example_inputs(model)
    seq = inputs["input_ids"].shape[1]
    assert model.config.index_topk < seq  # the tiny model's indexer really drops keys
    with torch.no_grad():
        reference = model(**inputs, use_cache=False).logits  # sdpa: HF folds the selection into the mask
    obs = observe(model, inputs)
    assert obs.attention, "the probe saw no attention call"
    indices = obs.attention[0].kwargs["indices"]
    assert indices.shape[-1] == model.config.index_topk
    torch.testing.assert_close(obs.logits, reference, atol=1e-5, rtol=1e-4)
    model.set_attn_implementation("sdpa")  # the probe leaves the drafter's own model switched to it
    with torch.no_grad():  # the same model with the selection ignored (index_topk >= seq) computes otherwise
        model.config.index_topk = seq
        for layer in model.model.layers:
            layer.self_attn.indexer.index_topk = seq
        dense = model(**inputs, use_cache=False).logits
    assert not torch.allclose(dense, reference, atol=1e-4)


@pytest.mark.parametrize("model_type", ["deepseek_v32", "glm_moe_dsa"])
def test_sparse_attention_indexer_is_a_named_gap(model_type):
    draft = draft_model_type(model_type)
    gaps = {g.item: g.detail for g in draft.gaps}
    topk = draft.fields["test_config"]["index_topk"]
    assert gaps["sparse attention indexer"] == (
        f"model.layers.0.self_attn attends, per query, only to the {topk} of 6 keys its indexer selects "
        "(config field `index_topk`)"
    )
    config = transformers.AutoConfig.for_model(model_type, **draft.fields["test_config"])
    assert config.index_topk == topk


def test_hyper_connection_streams_stop_drafting_with_a_named_gap():
    with pytest.raises(DraftingError) as info:
        draft_model_type("deepseek_v4")
    model = _tiny("deepseek_v4")
    streams = model.config.hc_mult  # HF's number of residual streams
    assert info.value.step == "observe"
    assert info.value.gaps == [
        f"hyper-connection residual streams: model.layers.0 reads {streams} residual streams [1, 6, {streams}, "
        f"{model.config.hidden_size}] where the embedding gives one"
    ]
