"""Multi-head latent attention (MLA) drafted by observation (decision 0018, `observers/latent.py`): the drafted
latent fields are the hand-written specs' (DeepSeek V2, V3), a drafted family with no spec passes the whole
catalogue on every tiny model it declares, and a draft with one observed field wrong fails conformance
against HF's own forward."""

from __future__ import annotations

import pytest

from bridge_core.conformance.runner import run, variants_of
from bridge_core.drafting import draft_model_type, to_spec
from bridge_core.drafting.reach import FAST_CHECKS
from bridge_core.registry import default_registry

_LATENT_CONFIG = ("d_head", "d_head_v", "q_lora_rank", "kv_lora_rank", "rotary_dim")


@pytest.fixture(scope="module")
def v3_draft():
    return draft_model_type("deepseek_v3")


def _failures(spec, variant=None, checks=None) -> list[str]:
    return [r.explain() for r in run(spec, variant=variant, checks=checks).failed()]


@pytest.mark.parametrize("model_type", ["deepseek_v2", "deepseek_v3"])
def test_drafted_latent_fields_are_the_hand_written_ones(model_type, v3_draft):
    draft = v3_draft if model_type == "deepseek_v3" else draft_model_type(model_type)
    assert not draft.gaps, draft.gaps
    drafted, written = to_spec(draft), default_registry().get(model_type)
    assert drafted.block.attn.qkv == written.block.attn.qkv
    assert drafted.block.attn.o == written.block.attn.o
    for key in _LATENT_CONFIG:
        assert drafted.config[key] == written.config[key], key
    assert "n_kv_heads" not in drafted.config  # keys are expanded to every head: the default n_heads
    assert drafted.pos_embed == written.pos_embed
    assert "no_q_lora" in draft.fields["variants"]  # the plain q_proj form is drawn too
    for variant in variants_of(drafted):
        assert not _failures(drafted, variant, list(FAST_CHECKS)), variant


def test_v3_rope_deinterleave_is_the_config_flag_whose_flip_changes_it(v3_draft):
    qkv = v3_draft.fields["block"]["attn"]["qkv"]
    assert qkv["rope_deinterleave"] == "rope_interleave"
    assert v3_draft.fields["variants"]["no_rope_interleave"] == {"rope_interleave": False}


def test_a_drafted_latent_family_passes_the_catalogue():
    """YouTu has no hand-written spec: its unedited draft passes every check on every tiny model it declares
    (with and without the query latent, with and without rope de-interleaving)."""
    draft = draft_model_type("youtu")
    assert not draft.gaps, draft.gaps
    spec = to_spec(draft)
    assert spec.block.attn.qkv.kind == "latent"
    assert {"no_q_lora", "no_rope_interleave"} <= set(spec.variants)
    failures = [f"{v}: {f}" for v in variants_of(spec) for f in _failures(spec, v)]
    assert not failures, failures


def _mutant(draft, **qkv_changes):
    fields = {**draft.fields, "block": {**draft.fields["block"]}}
    attn = {**fields["block"]["attn"]}
    attn["qkv"] = {**attn["qkv"], **qkv_changes}
    fields["block"]["attn"] = attn
    mutated = type(draft)(fields=fields, notes=list(draft.notes), gaps=list(draft.gaps))
    return to_spec(mutated)


def test_a_flipped_rope_deinterleave_fails_conformance(v3_draft):
    """rope_deinterleave: false on a model that de-interleaves: the rope parts at position 0 disagree."""
    assert not _failures(to_spec(v3_draft), checks=["qkv_recompute"])
    failures = _failures(_mutant(v3_draft, rope_deinterleave=False), checks=["qkv_recompute"])
    assert failures and any("rope part at position 0" in f for f in failures), failures


def test_swapped_latent_norms_fail_conformance(v3_draft):
    """q_a_norm and kv_a_norm swapped: the latents recomputed through the other norm are not HF's."""
    qkv = v3_draft.fields["block"]["attn"]["qkv"]
    mutant = _mutant(v3_draft, q_a_norm=qkv["kv_a_norm"], kv_a_norm=qkv["q_a_norm"])
    failures = _failures(mutant, checks=["bind", "qkv_recompute"])
    assert failures and all(f.startswith("qkv_recompute") for f in failures), failures
