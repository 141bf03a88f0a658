"""TransformerLens 3.9 ``HookedTransformer`` for Gemma (1), as an independent reference for grouped-query
heads, RMSNorm with a ``(1 + w)`` weight, the embedding scale and the gated MLP. Weights go through
TransformerLens's own Gemma conversion (it folds the ``1 +`` into the norm weights and the embedding
scale into ``W_E``; hook values are unaffected), with no further processing.
"""

from __future__ import annotations

from typing import Any

import torch

from .hooked_transformer import build_loaded, run_reference


def hooked_gemma_from_hf(hf_model: Any):
    from transformer_lens.pretrained.weight_conversions.gemma import convert_gemma_weights

    hf = hf_model.config
    cfg = {
        "model_name": "hf-gemma-reference",
        "original_architecture": "GemmaForCausalLM",
        "n_layers": hf.num_hidden_layers,
        "d_model": hf.hidden_size,
        "n_heads": hf.num_attention_heads,
        "n_key_value_heads": hf.num_key_value_heads,
        "d_head": hf.head_dim,
        "d_mlp": hf.intermediate_size,
        "d_vocab": hf.vocab_size,
        "d_vocab_out": hf.vocab_size,
        "n_ctx": hf.max_position_embeddings,
        "act_fn": "gelu_pytorch_tanh",
        "eps": hf.rms_norm_eps,
        "normalization_type": "RMS",
        "final_rms": True,
        "gated_mlp": True,
        "rotary_dim": hf.head_dim,
        "rotary_base": int(hf.rope_parameters.get("rope_theta", 10000)),
    }
    return build_loaded(cfg, lambda tl_cfg: convert_gemma_weights(hf_model, tl_cfg))


def gemma_reference_cache(hf_model: Any, tokens: torch.Tensor) -> dict[str, torch.Tensor]:
    return run_reference(hooked_gemma_from_hf(hf_model), tokens)
