"""Scope read from the config and class before anything is built (issue 17): recurrent-state models are out of
scope as 'no attention' or 'hybrid', audio codebook models as such; transformers stay in scope."""

from __future__ import annotations

import inspect

import pytest
import torch
import transformers

from bridge_core.drafting import build
from bridge_core.drafting.scope import codebook_reason, recurrent_reason


def _reason(model_type: str, **overrides) -> str | None:
    cls = build.model_class_for(model_type)
    config = transformers.AutoConfig.for_model(model_type, **overrides)
    return build.out_of_scope(cls, config)


@pytest.mark.parametrize("model_type", ["mamba", "mamba2", "rwkv", "xlstm"])
def test_models_without_attention_are_out_of_scope(model_type):
    reason = _reason(model_type)
    assert reason is not None and reason.startswith("no attention: every layer keeps a recurrent state")
    model = build.model_class_for(model_type)  # HF's own modules: no attention function is ever called
    assert not any("Attention" in type(m).__name__ and hasattr(m, "q_proj") for m in _meta(model_type, model))


@pytest.mark.parametrize("model_type", ["bamba", "zamba2", "granitemoehybrid", "qwen3_next", "zaya"])
def test_hybrids_are_out_of_scope_as_hybrid(model_type):
    assert _reason(model_type).startswith("hybrid: state-space / linear-attention layers beside attention")


def test_layer_types_decide_between_hybrid_and_attention_only():
    # Qwen3-Next with only full-attention layers is a plain transformer; one linear-attention layer makes a hybrid
    assert recurrent_reason(transformers.Qwen3NextForCausalLM, _config("qwen3_next", ["full_attention"] * 2)) is None
    hybrid = _config("qwen3_next", ["linear_attention", "full_attention"])
    assert recurrent_reason(transformers.Qwen3NextForCausalLM, hybrid).startswith("hybrid")


@pytest.mark.parametrize("model_type", ["llama", "mistral", "gpt2", "lfm2", "deepseek_v32"])
def test_transformers_stay_in_scope(model_type):
    assert _reason(model_type) is None


def test_musicgen_reads_codebooks_and_moshi_text_does_not():
    config = transformers.AutoConfig.for_model("musicgen").decoder
    reason = codebook_reason(transformers.MusicgenForCausalLM, config)
    assert reason == "audio codebooks: one token embedding per codebook (num_codebooks 4), not a text token stream"
    moshi = transformers.AutoConfig.for_model("moshi")
    assert moshi.num_codebooks > 1 and codebook_reason(transformers.MoshiForCausalLM, moshi) is None


def _config(model_type: str, layer_types: list[str]):
    return transformers.AutoConfig.for_model(model_type, num_hidden_layers=len(layer_types), layer_types=layer_types)


def _meta(model_type: str, cls) -> list[torch.nn.Module]:
    with torch.device("meta"):
        return list(cls(build.default_config(cls, model_type)).modules())


def test_encoder_decoder_wrapper_of_two_model_types_is_out_of_scope_as_composite():
    from bridge_core.drafting.scope import composite_reason

    small = {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 96}
    encoder = transformers.BertConfig(vocab_size=101, **small)
    decoder = transformers.GPT2Config(vocab_size=101, n_embd=64, n_layer=2, n_head=4, add_cross_attention=True)
    config = transformers.EncoderDecoderConfig.from_encoder_decoder_configs(encoder, decoder)
    reason = build.out_of_scope(transformers.EncoderDecoderModel, config)
    assert reason == composite_reason(config)
    assert reason.startswith("composite wrapper") and "encoder `bert`, decoder `gpt2`" in reason
    with torch.device("meta"):  # HF's own wrapper: its stacks are the two other model types' models
        model = transformers.EncoderDecoderModel(config=config)
    assert (type(model.encoder).__name__, type(model.decoder).__name__) == ("BertModel", "GPT2LMHeadModel")
    # a seq2seq model with its own encoder/decoder configs (T5Gemma) is no composite
    assert composite_reason(transformers.AutoConfig.for_model("t5gemma")) is None
    assert _reason("encoder-decoder").startswith("composite wrapper")


@pytest.mark.parametrize("model_type", ["gemma4_assistant", "gemma4_unified_assistant"])
def test_speculative_decoding_assistants_are_out_of_scope(model_type):
    from bridge_core.drafting import OutOfScopeError, draft_model_type

    with pytest.raises(OutOfScopeError, match="speculative-decoding assistant") as info:
        draft_model_type(model_type)
    assert "`shared_kv_states`" in info.value.reason
    cls = build.model_class_for(model_type)
    assert "shared_kv_states" in inspect.signature(cls.forward).parameters  # HF's own forward takes them


def test_a_plain_forward_borrows_no_keys_and_values():
    from bridge_core.drafting.scope import borrowed_kv_reason

    assert borrowed_kv_reason(transformers.LlamaForCausalLM) is None
    assert borrowed_kv_reason(transformers.Gemma4ForCausalLM) is None
