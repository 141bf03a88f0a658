"""Tiny GPT-2- and Llama-shaped HF models, and SAELens's `HookedSAETransformer` (on TransformerLens 3.9, as
sae-lens installs it in `.venv-sae`) built from the same weights by TransformerLens's own converters."""

from __future__ import annotations

import warnings
from typing import Any

import torch
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

VOCAB = 97


def _perturb(model: torch.nn.Module) -> torch.nn.Module:
    with torch.no_grad():  # norms and biases away from 1 and 0, so a misplaced one shows
        for p in model.parameters():
            if p.dim() == 1:
                p.add_(torch.randn_like(p) * 0.2)
    return model.eval()


def gpt2() -> GPT2LMHeadModel:
    torch.manual_seed(0)
    config = GPT2Config(n_layer=2, n_embd=32, n_head=4, vocab_size=VOCAB, n_positions=32, attn_implementation="eager")
    return _perturb(GPT2LMHeadModel(config))


def llama() -> LlamaForCausalLM:
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=32,
                         attn_implementation="eager")  # fmt: skip
    return _perturb(LlamaForCausalLM(config))


def _tl_config(hf_model: Any) -> dict[str, Any]:
    hf = hf_model.config
    common = {"d_vocab": VOCAB, "d_vocab_out": VOCAB, "default_prepend_bos": False, "dtype": torch.float32,
              "device": "cpu", "init_weights": False, "attention_dir": "causal"}  # fmt: skip
    if isinstance(hf_model, GPT2LMHeadModel):
        return {**common, "model_name": "gpt2-ref", "original_architecture": "GPT2LMHeadModel",
                "n_layers": hf.n_layer, "d_model": hf.n_embd, "n_heads": hf.n_head, "d_head": hf.n_embd // hf.n_head,
                "d_mlp": 4 * hf.n_embd, "n_ctx": hf.n_positions, "act_fn": "gelu_new", "eps": hf.layer_norm_epsilon,
                "normalization_type": "LN", "positional_embedding_type": "standard"}  # fmt: skip
    d_head = hf.hidden_size // hf.num_attention_heads
    return {**common, "model_name": "llama-ref", "original_architecture": "LlamaForCausalLM",
            "n_layers": hf.num_hidden_layers, "d_model": hf.hidden_size, "n_heads": hf.num_attention_heads,
            "n_key_value_heads": hf.num_key_value_heads, "d_head": d_head, "d_mlp": hf.intermediate_size,
            "n_ctx": hf.max_position_embeddings, "act_fn": "silu", "eps": hf.rms_norm_eps, "normalization_type": "RMS",
            "final_rms": True, "gated_mlp": True, "positional_embedding_type": "rotary", "rotary_dim": d_head,
            "rotary_adjacent_pairs": False,
            "rotary_base": int(hf.rope_parameters.get("rope_theta", 10000))}  # fmt: skip


def hooked_sae_transformer(hf_model: Any) -> Any:
    """An unprocessed HookedSAETransformer computing what `hf_model` computes."""
    from sae_lens import HookedSAETransformer
    from transformer_lens import HookedTransformerConfig
    from transformer_lens.pretrained.weight_conversions import convert_gpt2_weights, convert_llama_weights

    cfg = HookedTransformerConfig(**_tl_config(hf_model))
    convert = convert_gpt2_weights if isinstance(hf_model, GPT2LMHeadModel) else convert_llama_weights
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        model = HookedSAETransformer(cfg)
    state = convert(hf_model, cfg)
    state.setdefault("unembed.b_U", torch.zeros(cfg.d_vocab_out))  # HF's lm_head has no bias
    params = {name for name, _ in model.named_parameters()}
    missing = params - set(state)
    if missing:
        raise RuntimeError(f"conversion misses parameters: {sorted(missing)}")
    result = model.load_state_dict(state, strict=False)
    if result.unexpected_keys:
        raise RuntimeError(f"unexpected keys: {result.unexpected_keys}")
    return model.eval()
