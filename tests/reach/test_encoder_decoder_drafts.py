"""Encoder-decoder drafting: unedited drafts of the T5 and BART families say what the hand-written specs say
and pass the fast checks against HF's own forward (t5 and bart pass the whole catalogue in
`test_builtin_scaffolds.py`), and a draft with one observed field made wrong fails the check
for it. Types the vocabulary cannot describe fail with a named gap or drafting step; audio/speech
encoder-decoders are out of scope with a reason."""

from __future__ import annotations

from pathlib import Path

import pytest

from bridge_core.conformance.runner import run
from bridge_core.drafting import DraftingError, OutOfScopeError, draft_model_type, to_spec
from bridge_core.drafting.reach import FAST_CHECKS
from bridge_core.spec.loader import load_spec

ZOO = Path(__file__).resolve().parents[1] / "zoo" / "specs"


def _at(value, field: str):
    for part in field.split("."):
        value = value.get(part) if isinstance(value, dict) else getattr(value, part, None)
    return value


def _written(name: str):
    if (ZOO / f"{name}.yaml").exists():
        return load_spec(ZOO / f"{name}.yaml")
    from bridge_core.registry import default_registry

    return default_registry().get(name)


_T5 = [
    "encoder.blocks",
    "encoder.block.kind",
    "encoder.block.ln1.path",
    "encoder.block.ln2.path",
    "encoder.block.mlp.path",
    "encoder.ln_final.path",
    "encoder.score_bias.kind",
    "encoder.score_bias.path",
    "encoder.score_bias.params",  # bidirectional, num_buckets and max_distance by name
    "score_bias.path",
    "score_bias.params",  # not bidirectional: the decoder's later keys share bucket 0
    "block.cross_attn.attn.path",
    "block.cross_attn.attn.qkv",
    "block.cross_attn.ln.path",
    "block.ln2.path",
    "block.mlp.path",
    "config.n_layers",
    "config.n_encoder_layers",
    "config.d_head",
    "config.attn_scale",
    "call.attention_mask_kwarg",
    "call.position_bias_kwarg",
    "unembed.pre_scale",  # conditional on scale_decoder_outputs, from a flipped re-observation
]
_BART = ["encoder.embed.norm", "encoder.embed.norm_after_pos", "encoder.pos_embed", "encoder.block.kind",
         "embed.norm_after_pos", "pos_embed", "block.kind", "block.ln1.path", "block.cross_attn.ln.path",
         "block.ln2.path", "block.mlp.path", "unembed.bias", "config.embed_scale"]  # fmt: skip


@pytest.mark.parametrize(
    ("model_type", "fields"),
    [
        ("t5", _T5),
        ("bart", _BART),
        ("plbart", _BART),
        # pre-norm cross blocks with final norms; learned table without offset; sinusoidal tables
        ("mbart", ["block.kind", "block.ln1.path", "block.cross_attn.ln.path", "ln_final", "encoder.ln_final"]),
        ("blenderbot", ["pos_embed", "encoder.pos_embed", "block.kind", "embed.norm", "ln_final"]),
        ("marian", ["pos_embed", "encoder.pos_embed", "block.kind", "encoder.block.kind", "ln_final", "unembed.bias"]),
        # scale_embedding multiplies outside the embedding module (Marian, Pegasus)
        ("pegasus", ["pos_embed", "block.kind", "ln_final", "embed.scale_at", "encoder.embed.scale_at"]),
        ("marian", ["config.embed_scale", "embed.scale_at"]),
    ],
)
def test_encoder_decoder_drafts_say_what_the_hand_written_specs_say(model_type, fields):
    draft = draft_model_type(model_type)
    assert not draft.gaps, draft.gaps
    drafted, written = to_spec(draft), _written(model_type)
    for field in fields:
        ours, theirs = _at(drafted, field), _at(written, field)
        assert ours == theirs, f"{model_type} {field}: drafted {ours!r}, written {theirs!r}"
    report = run(drafted, checks=list(FAST_CHECKS))
    assert report.ok, [r.explain() for r in report.failed()]


def _mutated(model_type: str, edit) -> object:
    fields = draft_model_type(model_type).fields
    edit(fields)
    from bridge_core.spec.schema import Spec

    return Spec.model_validate(fields)


@pytest.mark.parametrize(
    ("model_type", "edit", "check"),
    [
        # the encoder's buckets read as causal: the bias HF passes the encoder differs
        ("t5", lambda f: f["encoder"]["score_bias"]["params"].update(bidirectional=False), "rel_pos_bias"),
        # the T5 decoder's tied unembedding without its pre-scale
        ("t5", lambda f: f["unembed"].pop("pre_scale"), "unembed"),
        # final_logits_bias not observed
        ("bart", lambda f: f["unembed"].pop("bias"), "unembed"),
        # positions read from row 0 instead of after BART's two extra rows
        ("bart", lambda f: f["pos_embed"].update(offset=0), "pos_embed"),
        # the embedding norm taken as BLOOM's (before positions)
        ("bart", lambda f: f["embed"].pop("norm_after_pos"), "embed"),
        # post-norm decoder blocks read as pre-norm
        ("bart", lambda f: f["block"].update(kind="sequential"), "norm_roles"),
        # M2M100's positions counted from the ids (sinusoidal_from_ids) read from row 0
        ("m2m_100", lambda f: f["pos_embed"].update(offset=0), "pos_embed"),
    ],
)
def test_a_draft_with_a_wrong_observed_field_fails_its_check(model_type, edit, check):
    report = run(_mutated(model_type, edit), checks=[check])
    assert not report.ok, f"{check} passed a {model_type} draft with a wrong field"


@pytest.mark.parametrize(
    ("model_type", "reason"),
    [
        ("whisper", "text decoder of a speech encoder-decoder"),
        ("seamless_m4t", "speech encoder-decoder family"),
        ("granite_speech", "input_features"),
        ("vibevoice_asr", "input_values"),
    ],
)
def test_audio_encoder_decoders_are_out_of_scope(model_type, reason):
    with pytest.raises(OutOfScopeError, match=reason):
        draft_model_type(model_type)


def test_attention_outside_the_interface_is_a_named_drafting_failure():
    """Pegasus-X's encoder computes its local/global attention in the module: no call reaches the probe."""
    with pytest.raises(DraftingError, match="AttentionInterface") as info:
        draft_model_type("pegasus_x")
    assert info.value.step == "observe" and "model.encoder.layers" in info.value.reason
    items = [g.split(":")[0] for g in info.value.gaps]  # the reimplement path refuses encoder-decoders; local attention
    assert items == ["cross attention on the reimplement path", "local (windowed/global-token) attention"]


@pytest.mark.parametrize("model_type, local", [("fsmt", False), ("led", True)])
def test_encoder_decoders_computing_all_attention_themselves_name_the_missing_path(model_type, local):
    import transformers

    with pytest.raises(DraftingError, match="no call reached") as info:
        draft_model_type(model_type)
    items = [g.split(":")[0] for g in info.value.gaps]
    assert items[0] == "cross attention on the reimplement path"
    assert ("local (windowed/global-token) attention" in items) == local
    # LED's config sets the window its encoder attends in; FSMT's has none
    assert bool(getattr(transformers.AutoConfig.for_model(model_type), "attention_window", None)) == local
