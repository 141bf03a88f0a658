"""Unedited drafts of the built-in families pass the whole conformance catalogue on every tiny test model they
declare (the registry is not consulted: the draft is checked against HF's own forward). The encoder-decoder
families (T5, BART) are drafted too; `test_encoder_decoder_drafts.py` checks their observed fields."""

from __future__ import annotations

import pytest

from bridge_core.conformance.runner import run, variants_of
from bridge_core.drafting import draft_model_type, to_spec


@pytest.mark.parametrize(
    "model_type", ["gpt2", "gpt_neox", "opt", "llama", "qwen2", "gemma", "gemma2", "gemma3_text", "t5", "bart"]
)
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


def _at(value, field: str):
    for part in field.split("."):
        value = value.get(part) if isinstance(value, dict) else getattr(value, part, None)
    return value


def _builtin(name):
    from bridge_core.registry import default_registry

    return default_registry().get(name)


@pytest.mark.parametrize(
    ("model_type", "fields"),
    [
        # one norm shared by attention and MLP; adjacent-pair rotary from a table returning (sin, cos)
        ("gptj", ["block.kind", "block.ln1.path", "block.ln2", "pos_embed.kind", "pos_embed.rotary_output"]),
        ("phi", ["block.kind", "block.ln1.path", "block.ln2"]),
        # adjacent-pair rotary computed per call; logits times config.logit_scale
        ("cohere", ["block.kind", "block.ln2", "pos_embed.kind", "config.logit_scale"]),
        # norms only after the sublayers; q/k norms over the whole projection
        (
            "olmo2",
            ["block.ln1", "block.ln2", "block.ln1_post.path", "block.ln2_post.path", "block.attn.qk_norm_layout"],
        ),
        # fused experts: router, storage, gate|up order, scoring
        (
            "mixtral",
            [
                "block.mlp.kind",
                "block.mlp.moe.router",
                "block.mlp.moe.experts",
                "block.mlp.moe.storage",
                "block.mlp.moe.gate_up",
                "block.mlp.moe.gate_first",
                "block.mlp.moe.n_experts",
                "block.mlp.moe.top_k",
                "block.mlp.moe.scoring",
            ],
        ),
    ],
)
def test_drafts_use_the_vocabulary_of_the_hand_written_specs(model_type, fields):
    """The drafted spec says what the hand-written built-in spec says, field by field, and passes the fast
    checks against HF's forward."""
    from bridge_core.drafting.reach import FAST_CHECKS

    draft = draft_model_type(model_type)
    assert not draft.gaps, draft.gaps
    drafted, written = to_spec(draft), _builtin(model_type)
    for field in fields:
        ours, theirs = _at(drafted, field), _at(written, field)
        assert ours == theirs, f"{model_type} {field}: drafted {ours!r}, written {theirs!r}"
    report = run(drafted, checks=list(FAST_CHECKS))
    assert report.ok, [r.explain() for r in report.failed()]
