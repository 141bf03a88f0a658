"""Unedited drafts of the built-in decoder families pass the whole conformance catalogue on every tiny test
model they declare (the registry is not consulted: the draft is checked against HF's own forward).

T5 is the exception, stated here rather than hidden: the drafter does not draft encoder-decoder models yet
(an encoder stack, cross attention and T5's score bias would each need an observer)."""

from __future__ import annotations

import pytest

from bridge_core.conformance.runner import run, variants_of
from bridge_core.drafting import DraftingError, draft_model_type, to_spec


@pytest.mark.parametrize("model_type", ["gpt2", "gpt_neox", "opt", "llama", "qwen2", "gemma", "gemma2", "gemma3_text"])
def test_unedited_draft_passes_conformance(model_type):
    draft = draft_model_type(model_type)
    assert not draft.gaps, draft.gaps
    spec = to_spec(draft)
    failures = [
        f"{report.architecture}: {result.explain()}"
        for variant in variants_of(spec)
        for report in [run(spec, variant=variant)]
        for result in report.failed()
    ]
    assert not failures, failures


def test_drafts_find_what_the_built_in_specs_say():
    """Fields the observation decides, against the hand-written specs (gpt_neox's conditional kind and its
    per-head fused qkv, OPT's offset of 2 and block-level MLP, Gemma 2's post-norms and softcaps)."""
    neox = draft_model_type("gpt_neox").fields
    assert neox["block"]["kind"] == "'parallel' if use_parallel_residual else 'sequential'"
    assert neox["block"]["attn"]["qkv"] == {"kind": "fused", "path": "query_key_value", "order": "per_head_interleaved"}
    opt = draft_model_type("opt").fields
    assert opt["pos_embed"]["offset"] == 2 and opt["block"]["mlp"]["path"] == "."
    gemma2 = draft_model_type("gemma2").fields
    assert gemma2["block"]["ln2"]["path"] == "pre_feedforward_layernorm"
    assert gemma2["block"]["ln1_post"]["path"] == "post_attention_layernorm"
    assert gemma2["unembed"]["softcap"] == "final_logit_softcapping"
    assert gemma2["block"]["attn"]["softcap"] == "attn_logit_softcapping"


def test_t5_is_not_drafted_yet_and_says_so():
    with pytest.raises(DraftingError, match="encoder-decoder"):
        draft_model_type("t5")
