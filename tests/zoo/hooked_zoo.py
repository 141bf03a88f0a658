"""TransformerLens 3.9 `HookedTransformer`s for GPT-J, Phi, OLMo 2 and Phi-3 built from a HF model, as independent
references for the zoo's structural patterns (a norm shared by a parallel block, adjacent-pair rotary,
post-sublayer norms, q/k norms over the whole projection, a fused gate/up MLP projection).

Configs follow TransformerLens 3.9's own `loading_from_pretrained` entries for these architectures, and the
weights are converted by TransformerLens's own converters (`pretrained/weight_conversions`), unprocessed.
"""

from __future__ import annotations

from typing import Any

import torch
from reference.hooked_transformer import build_loaded, run_reference


def _detached(convert, hf_model: Any):
    """`convert(hf_model, cfg)` with every tensor detached (HookedTransformer loads plain tensors)."""

    def run(cfg):
        return {name: tensor.detach().clone() for name, tensor in convert(hf_model, cfg).items()}

    return run


def hooked_gptj(hf_model: Any):
    """GPT-J as TransformerLens 3.9 configures it (parallel block, tied ln1/ln2, adjacent-pair rotary)."""
    from transformer_lens.pretrained.weight_conversions import convert_gptj_weights

    hf = hf_model.config
    cfg = {
        "model_name": "hf-gptj-reference",
        "original_architecture": "GPTJForCausalLM",
        "d_model": hf.n_embd,
        "d_head": hf.n_embd // hf.n_head,
        "n_heads": hf.n_head,
        "d_mlp": 4 * hf.n_embd,  # TransformerLens reads no n_inner: build the HF model with n_inner=None
        "n_layers": hf.n_layer,
        "n_ctx": hf.n_positions,
        "eps": hf.layer_norm_epsilon,
        "d_vocab": hf.vocab_size,
        "act_fn": hf.activation_function,
        "parallel_attn_mlp": True,
        "rotary_dim": hf.rotary_dim,
        "rotary_adjacent_pairs": True,
        "normalization_type": "LN",
    }
    return build_loaded(cfg, _detached(convert_gptj_weights, hf_model))


def hooked_phi(hf_model: Any):
    """Phi as TransformerLens 3.9 configures it (parallel block, tied ln1/ln2, partial rotate-half rotary).
    TransformerLens's Phi has neither grouped-query heads nor q/k LayerNorms."""
    from transformer_lens.pretrained.weight_conversions import convert_phi_weights

    hf = hf_model.config
    d_head = hf.hidden_size // hf.num_attention_heads
    rope = hf.rope_parameters
    cfg = {
        "model_name": "hf-phi-reference",
        "original_architecture": "PhiForCausalLM",
        "d_model": hf.hidden_size,
        "d_head": d_head,
        "n_heads": hf.num_attention_heads,
        "d_mlp": hf.intermediate_size,
        "n_layers": hf.num_hidden_layers,
        "n_ctx": hf.max_position_embeddings,
        "eps": hf.layer_norm_eps,
        "d_vocab": hf.vocab_size,
        "act_fn": hf.hidden_act,
        "normalization_type": "LN",
        "rotary_base": rope["rope_theta"],
        "parallel_attn_mlp": True,
        "rotary_dim": round(rope["partial_rotary_factor"] * d_head),
    }
    return build_loaded(cfg, _detached(convert_phi_weights, hf_model))


def hooked_olmo2(hf_model: Any):
    """OLMo 2 as TransformerLens 3.9 configures it (post-sublayer RMSNorms named ln1 / ln2, q/k RMSNorms over
    the whole projection, gated SiLU MLP). TransformerLens's OLMo 2 has no grouped-query heads."""
    from transformer_lens.pretrained.weight_conversions import convert_olmo2_weights

    hf = hf_model.config
    cfg = {
        "model_name": "hf-olmo2-reference",
        "original_architecture": "Olmo2ForCausalLM",
        "d_model": hf.hidden_size,
        "d_head": hf.hidden_size // hf.num_attention_heads,
        "n_heads": hf.num_attention_heads,
        "d_mlp": hf.intermediate_size,
        "n_layers": hf.num_hidden_layers,
        "n_ctx": hf.max_position_embeddings,
        "eps": hf.rms_norm_eps,
        "d_vocab": hf.vocab_size,
        "act_fn": hf.hidden_act,
        "normalization_type": "RMS",
        "rotary_base": hf.rope_parameters["rope_theta"],
        "attn_types": ["global"] * hf.num_hidden_layers,
        "gated_mlp": True,
    }
    return build_loaded(cfg, _detached(convert_olmo2_weights, hf_model))


def hooked_phi3(hf_model: Any):
    """Phi-3 as TransformerLens 3.9 configures it (RMSNorms, rotate-half rotary over the whole head, a gated
    SiLU MLP whose fused gate_up_proj its converter splits into W_gate | W_in). Grouped-query heads as
    `n_key_value_heads` when fewer than the query heads; no sliding window here."""
    from transformer_lens.pretrained.weight_conversions import convert_phi3_weights

    hf = hf_model.config
    kv = hf.num_key_value_heads
    cfg = {
        "model_name": "hf-phi3-reference",
        "original_architecture": "Phi3ForCausalLM",
        "d_model": hf.hidden_size,
        "d_head": hf.hidden_size // hf.num_attention_heads,
        "n_heads": hf.num_attention_heads,
        "n_key_value_heads": kv if kv != hf.num_attention_heads else None,
        "d_mlp": hf.intermediate_size,
        "n_layers": hf.num_hidden_layers,
        "n_ctx": hf.max_position_embeddings,
        "eps": hf.rms_norm_eps,
        "d_vocab": hf.vocab_size,
        "act_fn": hf.hidden_act,
        "normalization_type": "RMS",
        "positional_embedding_type": "rotary",
        "rotary_base": hf.rope_parameters["rope_theta"],
        "gated_mlp": True,
        "rotary_dim": hf.hidden_size // hf.num_attention_heads,
    }
    convert = _detached(convert_phi3_weights, hf_model)

    def with_mlp_biases(tl_cfg):
        # TL's Phi-3 converter gives no MLP biases (HF has none; its from_pretrained leaves them zero) and
        # zero ln1.b / ln2.b an RMSNorm has no parameter for (its from_pretrained drops them)
        state = {k: v for k, v in convert(tl_cfg).items() if not k.endswith((".ln1.b", ".ln2.b"))}
        for layer in range(tl_cfg.n_layers):
            state.setdefault(f"blocks.{layer}.mlp.b_in", torch.zeros(tl_cfg.d_mlp))
            state.setdefault(f"blocks.{layer}.mlp.b_out", torch.zeros(tl_cfg.d_model))
        return state

    return build_loaded(cfg, with_mlp_biases)


def reference_cache(model: Any, tokens: torch.Tensor) -> dict[str, torch.Tensor]:
    return run_reference(model, tokens)


def hooked_gpt_neo(hf_model: Any):
    """GPT-Neo as TransformerLens 3.9 configures it (unscaled scores, alternating global and local attention).
    TransformerLens's d_mlp is 4 * d_model: build the HF model with intermediate_size=None."""
    from transformer_lens.pretrained.weight_conversions import convert_neo_weights

    hf = hf_model.config
    cfg = {
        "model_name": "hf-gpt-neo-reference",
        "original_architecture": "GPTNeoForCausalLM",
        "d_model": hf.hidden_size,
        "d_head": hf.hidden_size // hf.num_heads,
        "n_heads": hf.num_heads,
        "d_mlp": 4 * hf.hidden_size,
        "n_layers": hf.num_layers,
        "n_ctx": hf.max_position_embeddings,
        "eps": hf.layer_norm_epsilon,
        "d_vocab": hf.vocab_size,
        "attn_types": hf.attention_layers,
        "act_fn": hf.activation_function,
        "use_attn_scale": False,
        "use_local_attn": True,
        "window_size": hf.window_size,
        "scale_attn_by_inverse_layer_idx": False,
        "normalization_type": "LN",
        "positional_embedding_type": "standard",
    }
    return build_loaded(cfg, _detached(convert_neo_weights, hf_model))
