"""Attention computed in the model's own code (no call reaches transformers' AttentionInterface) is drafted by
recomputation: the projections, head split, scale and mask that reproduce what the output projection reads become
a `block.attn.implementation: reimplement` spec. XGLM (separate q/k/v, q scaled in the module, sinusoidal table
read at position ids) and OpenAI GPT (fused Conv1D c_attn, its own causal buffer, post-norm, list outputs) draft
unedited and pass conformance; a draft with the scale or the causal flag written wrong fails the check that names
it."""

from __future__ import annotations

import pytest

from bridge_core.conformance.runner import run
from bridge_core.drafting import draft_model_type, to_spec
from bridge_core.drafting.reach import FAST_CHECKS
from bridge_core.spec.schema import Spec

ATTENTION = ("attention_alone", "block_alone", "attention_paths_agree", "padding")


@pytest.fixture(scope="module")
def xglm():
    return draft_model_type("xglm")


@pytest.fixture(scope="module")
def openai_gpt():
    return draft_model_type("openai-gpt")


def test_xglm_drafted_fields_are_what_the_module_computes(xglm):
    attn = xglm.fields["block"]["attn"]
    assert attn["implementation"] == "reimplement" and "own_causal_mask" not in attn  # it uses the mask it is handed
    assert attn["qkv"] == {"kind": "separate", "q": "q_proj", "k": "k_proj", "v": "v_proj"} and attn["o"] == "out_proj"
    assert "attn_scale" not in xglm.fields["config"]  # q_proj(x) * head_dim**-0.5 in HF: the default scale
    assert xglm.fields["pos_embed"] == {
        "kind": "sinusoidal_from_positions",
        "path": "model.embed_positions",
        "offset": 2,
    }
    assert not xglm.gaps


def test_xglm_draft_passes_unedited(xglm):
    report = run(to_spec(xglm), checks=[*FAST_CHECKS, *ATTENTION, "embed", "pos_embed"])
    assert report.ok, [r.explain() for r in report.failed()]


def test_xglm_draft_with_a_wrong_scale_fails(xglm):
    fields = to_spec(xglm).model_dump(by_alias=True, exclude_none=True)
    fields["config"]["attn_scale"] = 1.0  # unscaled scores (GPT-Neo's), not XGLM's
    report = run(Spec.model_validate(fields), checks=["attention_paths_agree", "attention_alone"])
    # the module called alone is HF's own forward; recomputed attention (internal hooks) is what the scale changes
    assert [r.name for r in report.failed()] == ["attention_paths_agree"]


def test_openai_gpt_drafted_fields(openai_gpt):
    fields = openai_gpt.fields
    attn = fields["block"]["attn"]
    assert attn["implementation"] == "reimplement" and attn["own_causal_mask"] is True  # the model hands no mask
    assert attn["qkv"] == {"kind": "fused", "path": "c_attn", "order": "qkv"} and attn["layout"] == "conv1d"
    assert fields["block"]["kind"] == "post_norm" and fields["block"]["hidden_states_kwarg"] == "x"
    assert "attn_scale" not in fields["config"]
    assert not openai_gpt.gaps


def test_openai_gpt_draft_passes_unedited(openai_gpt):
    report = run(to_spec(openai_gpt), checks=[*FAST_CHECKS, *ATTENTION, "delta_once", "backward_hooks"])
    assert report.ok, [r.explain() for r in report.failed()]


def test_openai_gpt_draft_without_its_causal_mask_fails(openai_gpt):
    fields = to_spec(openai_gpt).model_dump(by_alias=True, exclude_none=True)
    fields["block"]["attn"]["own_causal_mask"] = False  # the reimplement path would attend to future keys
    report = run(Spec.model_validate(fields), checks=["attention_paths_agree", "attention_alone"])
    assert [r.name for r in report.failed()] == ["attention_paths_agree"]


def test_own_causal_mask_needs_the_reimplement_path(openai_gpt):
    fields = to_spec(openai_gpt).model_dump(by_alias=True, exclude_none=True)
    fields["block"]["attn"]["implementation"] = "interface"
    with pytest.raises(ValueError, match="own_causal_mask"):
        Spec.model_validate(fields)
