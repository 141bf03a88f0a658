"""What the reimplement drafter cannot settle is flagged, never guessed. GPT-NeoX Japanese's last attention
returns its `dense_bias` for the block to add (a named gap: its unedited draft fails norm_roles and
residual_stream in that block); TrOCR's causal-LM forward never calls its cross attention (noted and left out
of the roles) and adds its learned positions before `layernorm_embedding` (embed.norm with norm_after_pos);
the search's limits (grouped kv heads, adjacent-pair rotary) are written as a NOTE on a match and named on a
refusal."""

from __future__ import annotations

import pytest

from bridge_core.conformance.runner import run
from bridge_core.drafting import draft_model_type, to_spec
from bridge_core.drafting.observers.reimplemented import LIMITS, untried
from bridge_core.drafting.reach import FAST_CHECKS
from bridge_core.spec.schema import Spec


@pytest.fixture(scope="module")
def trocr():
    return draft_model_type("trocr")


def test_gpt_neox_japanese_output_bias_is_a_named_gap():
    draft = draft_model_type("gpt_neox_japanese")
    gaps = [g for g in draft.gaps if g.item == "attention output bias returned separately"]
    # use_bias only on the last layer (layer_number == num_hidden_layers - 1): block 1 of the tiny model
    assert [g.detail.split(" ")[0] for g in gaps] == ["gpt_neox_japanese.layers.1.attention"]
    assert "dense_bias as output 2" in gaps[0].detail
    assert any(LIMITS in n for n in draft.notes)  # a match is written with the search's limits


def test_untried_candidates_are_named():
    assert untried({"q": 64, "k": 64, "v": 64}, 64, rotary=False) == []
    named = untried({"q_proj": 64, "k_proj": 16, "v_proj": 16}, 64, rotary=True)
    assert named[0] == "grouped kv heads were not tried (['k_proj', 'v_proj'] narrower than 64)"
    assert "adjacent-pair" in named[1]


def test_trocr_draft_leaves_the_uncalled_cross_attention_out(trocr):
    assert not trocr.gaps
    block = trocr.fields["block"]
    assert block["ln1"]["path"] == "self_attn_layer_norm" and block["ln2"]["path"] == "final_layer_norm"
    assert block["kind"] == "post_norm" and block["attn"]["implementation"] == "reimplement"
    never = [n for n in trocr.notes if "never called" in n]
    assert [n.split(" ")[0] for n in never] == ["encoder_attn", "encoder_attn_layer_norm"]
    assert trocr.fields["embed"]["norm"] == {"path": "model.decoder.layernorm_embedding", "kind": "layernorm"}
    assert trocr.fields["embed"]["norm_after_pos"] is True


def test_trocr_draft_passes_the_role_checks(trocr):
    checks = [*FAST_CHECKS, "attention_alone", "block_alone", "attention_paths_agree", "embed", "pos_embed"]
    # HF's TrOCR loss does not shift its labels, and its learned positions ignore position_ids (left padding
    # moves them in HF itself): backward_hooks and padding hold the bridge to the next-token loss and to HF's
    # own padded run there
    checks += ["backward_hooks", "padding"]
    report = run(to_spec(trocr), checks=checks)
    assert report.ok, [r.explain() for r in report.failed()]


def test_trocr_draft_without_its_embedding_norm_fails(trocr):
    fields = to_spec(trocr).model_dump(by_alias=True, exclude_none=True)
    del fields["embed"]["norm"], fields["embed"]["norm_after_pos"]
    report = run(Spec.model_validate(fields), checks=["embed", "residual_stream"])
    assert [r.name for r in report.failed()] == ["embed"]  # hook_embed vs what the first block reads


def test_trocr_left_padding_held_to_hf_padded_run_still_fails_a_wrong_scale(trocr):
    fields = to_spec(trocr).model_dump(by_alias=True, exclude_none=True)
    fields["config"]["attn_scale"] = 1.0  # unscaled scores: the recomputed attention (cached run) goes wrong
    report = run(Spec.model_validate(fields), checks=["padding"])
    failed = report.failed()
    assert [r.name for r in failed] == ["padding"]
    # the left-padded comparison (against HF's own padded run) fails on its own, not only the right-padded one
    left = "left-padded logits vs HF left-padded (HF ignores position_ids)"
    assert any(d.startswith(left) for d in failed[0].details)
