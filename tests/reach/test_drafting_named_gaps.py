"""Drafts that cannot pass yet name what is missing precisely (issue 17), read from HF's own modules."""

from __future__ import annotations

import torch
import transformers

from bridge_core.drafting.drafter import draft_model_type


def _tiny(model_type: str, test_config: dict) -> torch.nn.Module:
    config = transformers.AutoConfig.for_model(model_type, **test_config)
    return transformers.AutoModelForCausalLM.from_config(config).eval()


def test_codegen_grouped_fused_projection_is_drafted_with_hfs_grouping():
    # once a named gap (fused q/k/v order), now vocabulary: qkv.order grouped_qvk, qkv.groups (decision 0025)
    draft = draft_model_type("codegen")
    attn = _tiny("codegen", draft.fields["test_config"]).transformer.h[0].attn
    qkv = draft.fields["block"]["attn"]["qkv"]  # CodeGen splits qkv_proj into mp_num groups of [q | v | k]
    assert (qkv["order"], qkv["groups"]) == ("grouped_qvk", attn.mp_num)
    assert not draft.gaps, draft.gaps


def test_ctrl_positions_added_in_the_forward_are_a_named_gap_and_dff_is_d_mlp():
    draft = draft_model_type("ctrl")
    model = _tiny("ctrl", draft.fields["test_config"])
    assert draft.fields["config"]["d_mlp"] == "dff"
    assert model.transformer.h[0].ffn[0].out_features == draft.fields["test_config"]["dff"]
    assert "pos_encoding" in dict(model.transformer.named_buffers())  # a buffer, not a module
    assert any(g.item == "positions outside a module" for g in draft.gaps), draft.gaps


def test_bitnet_sub_norms_are_drafted_and_the_mlp_read_through_them():
    # once named gaps, now vocabulary (decision 0026; tests/reach/test_sub_norms_before_output.py)
    draft = draft_model_type("bitnet")
    model = _tiny("bitnet", draft.fields["test_config"])
    layer = model.model.layers[0]
    assert type(layer.self_attn.attn_sub_norm).__name__.endswith("RMSNorm")  # HF's own sub-norms
    assert type(layer.mlp.ffn_sub_norm).__name__.endswith("RMSNorm")
    assert not draft.gaps, draft.gaps
    assert draft.fields["block"]["attn"]["o_norm"] == {"path": "attn_sub_norm", "kind": "rmsnorm"}
    assert draft.fields["block"]["mlp"]["out_norm"] == {"path": "ffn_sub_norm", "kind": "rmsnorm"}
    mlp = draft.fields["block"]["mlp"]
    assert (mlp["kind"], mlp["in"], mlp["gate"], mlp["out"]) == ("gated", "up_proj", "gate_proj", "down_proj")
    assert draft.fields["block"]["attn"]["o"] == "o_proj"
    assert draft.fields["config"]["act_fn"] == "hidden_act" and model.config.hidden_act == "relu2"


def test_doge_residual_scale_and_computed_mask_are_named():
    draft = draft_model_type("doge")
    layer = _tiny("doge", draft.fields["test_config"]).model.layers[0]
    assert layer.input_residual.shape == (layer.input_residual.numel(),)  # HF's per-channel residual weight
    gaps = {g.item: g.detail for g in draft.gaps}
    assert gaps["learned residual scale"] == "model.layers.0.input_residual multiplies the residual before the add"
    assert gaps["score bias in the mask"].startswith("model.layers.0.self_attn")


def test_a_plain_causal_mask_is_no_score_bias():
    assert not [g for g in draft_model_type("llama").gaps if g.item == "score bias in the mask"]


def test_laguna_softplus_head_gate_is_named_and_afmoe_like_scoring_found():
    draft = draft_model_type("laguna")
    attn = _tiny("laguna", draft.fields["test_config"]).model.layers[0].self_attn
    assert attn.g_proj.out_features == attn.num_heads  # HF's per-head gate
    gaps = {g.item: g.detail for g in draft.gaps}
    assert gaps["attention output gate"].startswith("o_proj reads the output times softplus(g_proj) per head")
    assert "output projection" not in gaps and "MoE scoring" not in gaps  # its frozen correction-bias parameter
    assert draft.fields["block"]["mlp"]["moe"]["correction_bias"] == "gate.e_score_correction_bias"


def test_mllama_embedding_rows_beyond_vocab_and_skipped_cross_attention_are_named():
    from bridge_core.drafting import build

    draft = draft_model_type("mllama")
    cls = build.model_class_for("mllama")  # its text config: AutoConfig's MllamaConfig would build a vision tower
    model = build.build(cls, build.config_from(cls, draft.fields["test_config"]))
    rows, vocab = model.get_input_embeddings().weight.shape[0], model.config.vocab_size
    assert rows > vocab  # HF's table holds extra (image) token rows the logits do not have
    gaps = {g.item: g.detail for g in draft.gaps}
    detail = gaps["embedding rows beyond vocab_size"]
    assert detail.startswith(f"model.embed_tokens has {rows} rows, the logits {vocab}")
    assert model.config.cross_attention_layers  # layers HF's text-only forward skips
    assert "cross-attention layers skipped by a text-only forward" in gaps


def test_llama_embedding_is_no_extent_gap():
    items = {g.item for g in draft_model_type("llama").gaps}
    assert not items & {"embedding rows beyond vocab_size", "cross-attention layers skipped by a text-only forward"}


def test_jetmoe_mixture_of_attention_heads_is_named_and_kept_when_the_draft_does_not_validate():
    from bridge_core.drafting.reach import conform_model_type

    draft = draft_model_type("jetmoe")
    attn = _tiny("jetmoe", draft.fields["test_config"]).model.layers[0].self_attention
    assert attn.experts.router.layer.out_features == attn.experts.num_experts  # HF's router over attention experts
    gaps = {g.item: g.detail for g in draft.gaps}
    assert gaps["mixture of attention heads"].startswith("model.layers.0.self_attention.experts.router routes")
    outcome = conform_model_type("jetmoe", variants=False)  # stops at step 'spec' (no d_mlp): the gaps stay
    assert outcome.status == "failing" and outcome.detail.startswith("drafting step 'spec'")
    assert any(g.startswith("mixture of attention heads: ") for g in outcome.gaps), outcome.gaps
