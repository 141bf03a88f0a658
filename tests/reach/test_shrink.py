"""The drafter's tiny configs are consistent: they build and forward in HF, and what depends on a shrunk
size was shrunk with it (types whose naive shrinking failed before: GPT-J's rotary_dim wider than the head,
GPTBigCode's multi_query, Gemma 3's per-layer `layer_types`, OPT's special ids outside the vocabulary)."""

from __future__ import annotations

import pytest
import torch

from bridge_core.drafting import build
from bridge_core.drafting.shrink import D_VOCAB, N_LAYERS, shrink


def tiny(model_type: str):
    cls = build.model_class_for(model_type)
    base = build.default_config(cls, model_type)
    overrides, _ = shrink(base)
    config = cls.config_class(**overrides)
    model = build.build(cls, config)
    return base, config, model


@pytest.mark.parametrize("model_type", ["gptj", "gpt_bigcode", "gemma3_text", "opt", "phi", "gemma3n_text"])
def test_tiny_config_builds_and_forwards(model_type):
    _, config, model = tiny(model_type)
    tokens = torch.randint(0, config.vocab_size, (2, 7))
    with torch.no_grad():
        logits = model(tokens).logits
    assert logits.shape == (2, 7, config.vocab_size) and torch.isfinite(logits).all()
    for key, value in config.to_dict().items():  # every special id inside the shrunk vocabulary
        if key.endswith("token_id") and isinstance(value, int):
            assert 0 <= value < D_VOCAB, (key, value)


def test_gptj_rotary_dim_keeps_its_share_of_the_head():
    base, config, _ = tiny("gptj")
    head = config.n_embd // config.n_head
    assert config.rotary_dim / head == base.rotary_dim / (base.n_embd // base.n_head)
    assert config.rotary_dim <= head and config.rotary_dim % 2 == 0


def test_gpt_bigcode_stays_multi_query():
    base, config, model = tiny("gpt_bigcode")
    assert base.multi_query and config.multi_query
    d = config.n_embd // config.n_head
    assert model.transformer.h[0].attn.c_attn.out_features == config.n_embd + 2 * d  # one key and value head


def test_layer_types_are_resized_and_keep_both_kinds():
    base, config, _ = tiny("gemma3_text")
    assert len(config.layer_types) == N_LAYERS == config.num_hidden_layers
    assert set(config.layer_types) == set(base.layer_types) == {"sliding_attention", "full_attention"}
    assert config.sliding_window < 6  # shorter than the test sequences: the window is exercised


def test_per_layer_config_follows_the_layers_kept():
    """Gemma 4's per_layer_config gives its full-attention layers (5, 11, ...) a wider head: the tiny model
    keeps one sliding and one full layer, and the full one (now layer 1) keeps a head twice the tiny one."""
    base, config, model = tiny("gemma4_text")
    assert base.layer_types[5] == "full_attention" and 5 in {int(k) for k in base.to_dict()["per_layer_config"]}
    assert config.layer_types == ["sliding_attention", "full_attention"]
    widths = [layer.self_attn.q_proj.out_features // config.num_attention_heads for layer in model.model.layers]
    assert widths == [16, 32]
    with torch.no_grad():
        logits = model(torch.randint(0, config.vocab_size, (1, 5))).logits
    assert torch.isfinite(logits).all()


def test_a_class_whose_defaults_do_not_build_is_named_so():
    """Lfm2-MoE's default config leaves layer_types unset and its layers read them: the draft fails at 'build'
    saying where, and (first) that transformers' own default config fails too."""
    from bridge_core.drafting.drafter import draft_model_type
    from bridge_core.drafting.errors import DraftingError

    with pytest.raises(DraftingError) as err:
        draft_model_type("lfm2_moe")
    assert err.value.step == "build"
    assert "modeling_lfm2_moe.py" in err.value.reason
    assert err.value.reason.startswith("HF's default Lfm2MoeConfig fails too (leaving layer_types unset)")
    assert build.default_config(build.model_class_for("lfm2_moe")).layer_types is None  # HF's own default


def test_sub_configs_of_parts_are_shrunk_with_the_config():
    """DBRX keeps its attention and MLP sizes in `attn_config` / `ffn_config`: they shrink with the model, and a
    checkpoint's own values there (rope_theta, clip_qkv, which HF's defaults leave unset) stay."""
    from transformers import DbrxConfig, DbrxForCausalLM

    checkpoint = DbrxConfig(
        d_model=1024, n_heads=8, n_layers=4, attn_config={"kv_n_heads": 2, "rope_theta": 5e5, "clip_qkv": 8.0},
        ffn_config={"hidden_size": 1024, "ffn_hidden_size": 2048, "moe_num_experts": 8, "moe_top_k": 2},
    )  # fmt: skip
    overrides, _ = shrink(checkpoint)
    config = DbrxConfig(**overrides)
    assert (config.attn_config.kv_n_heads, config.attn_config.rope_theta, config.attn_config.clip_qkv) == (2, 5e5, 8.0)
    model = build.build(DbrxForCausalLM, config)
    block = model.transformer.blocks[0]
    assert block.norm_attn_norm.attn.Wqkv.in_features == 64  # HF's own modules at the shrunk sizes
    assert block.ffn.router.layer.out_features == 4 and config.ffn_config.ffn_hidden_size == 96
    with torch.no_grad():
        assert torch.isfinite(model(torch.randint(0, config.vocab_size, (1, 5))).logits).all()


def test_dbrx_defaults_fail_in_hf_and_the_draft_says_so():
    from bridge_core.drafting.drafter import draft_model_type
    from bridge_core.drafting.errors import DraftingError

    assert not build.builds_on_meta(build.model_class_for("dbrx"), build.default_config(build.model_class_for("dbrx")))
    with pytest.raises(DraftingError) as err:
        draft_model_type("dbrx")
    assert err.value.step == "build" and err.value.reason.startswith("HF's default DbrxConfig fails too")
    assert "(leaving rope_theta unset)" in err.value.reason  # what HF's DbrxAttentionConfig leaves unset
    assert not hasattr(build.default_config(build.model_class_for("dbrx")).attn_config, "rope_theta")


def test_a_looped_model_names_its_loop_when_its_shrink_cannot_build():
    """Dory runs its middle layers n_recurrent_loops times; its validator needs its input, recurrent and output
    layer groups to sum to num_hidden_layers, which 2 layers do not: the shrink failure names the loop."""
    from transformers import DoryConfig

    from bridge_core.drafting.drafter import draft_model_type
    from bridge_core.drafting.errors import DraftingError

    hf = DoryConfig()
    assert hf.n_recurrent_loops == 2 and hf.n_input_layers + hf.n_recurrent_layers + hf.n_output_layers == 36
    with pytest.raises(DraftingError) as err:
        draft_model_type("dory")
    assert err.value.step == "shrink" and "n_input_layers + n_recurrent_layers" in err.value.reason
    assert err.value.gaps == [
        "looped layers: n_recurrent_loops 2 (layers run more than once per forward; spec blocks run once)"
    ]


def test_a_model_over_bytes_and_patches_names_its_hierarchical_stacks():
    """BLT runs a byte-level encoder and decoder around a global transformer over patches (four part sub-configs);
    whatever step its draft stops at, the reason names the stacks a one-stack-per-role spec cannot state. A plain
    decoder's config names nothing."""
    from transformers import AutoConfig, BltConfig

    from bridge_core.drafting.scope import structure_gaps

    parts = set(BltConfig.sub_configs)
    assert {"global_config", "encoder_config", "decoder_config"} <= parts
    (gap,) = structure_gaps(BltConfig())
    assert gap.startswith("hierarchical stacks: ") and all(p in gap for p in parts)
    assert structure_gaps(AutoConfig.for_model("llama")) == []


def test_a_part_rejected_shrunk_stays_as_its_parent_passes_it():
    """Moshi's depth decoder, shrunk alone, makes MoshiConfig pass it audio_vocab_size None: the part is kept
    unshrunk, with a note, and the tiny config builds (it did not while the shrunk part was written)."""
    from transformers import AutoConfig

    from bridge_core.drafting.shrink import shrink

    config = AutoConfig.for_model("moshi")
    small, notes = shrink(config)
    assert "depth_decoder_config" not in small
    assert any(n.startswith("test_config: depth_decoder_config kept unshrunk") for n in notes)
    assert type(config)(**small).hidden_size == small["hidden_size"]
