"""TransformerLens 3.9 ``HookedTransformer`` for Gemma (1), as an independent reference for grouped-query
heads, RMSNorm with a ``(1 + w)`` weight, the embedding scale and the gated MLP. Weights go through
TransformerLens's own Gemma conversion (it folds the ``1 +`` into the norm weights and the embedding
scale into ``W_E``; hook values are unaffected), with no further processing.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch

from .hooked_transformer import _require


def hooked_gemma_from_hf(hf_model: Any):
    _require()
    from transformer_lens import HookedTransformer, HookedTransformerConfig
    from transformer_lens.pretrained.weight_conversions.gemma import convert_gemma_weights

    hf = hf_model.config
    cfg = HookedTransformerConfig(
        model_name="hf-gemma-reference",
        original_architecture="GemmaForCausalLM",
        n_layers=hf.num_hidden_layers,
        d_model=hf.hidden_size,
        n_heads=hf.num_attention_heads,
        n_key_value_heads=hf.num_key_value_heads,
        d_head=hf.head_dim,
        d_mlp=hf.intermediate_size,
        d_vocab=hf.vocab_size,
        d_vocab_out=hf.vocab_size,
        n_ctx=hf.max_position_embeddings,
        act_fn="gelu_pytorch_tanh",
        eps=hf.rms_norm_eps,
        normalization_type="RMS",
        final_rms=True,
        gated_mlp=True,
        positional_embedding_type="rotary",
        rotary_dim=hf.head_dim,
        rotary_base=int(hf.rope_parameters.get("rope_theta", 10000)),
        rotary_adjacent_pairs=False,
        attention_dir="causal",
        default_prepend_bos=False,
        init_weights=False,
        dtype=torch.float32,
        device="cpu",
    )
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="HookedTransformer is deprecated", category=DeprecationWarning)
        model = HookedTransformer(cfg)
    state = convert_gemma_weights(hf_model, cfg)
    result = model.load_state_dict(state, strict=False)
    params = {name for name, _ in model.named_parameters()}
    if result.unexpected_keys or set(result.missing_keys) & params:
        raise RuntimeError(f"unexpected load result: {result}")
    return model.eval()


def gemma_reference_cache(hf_model: Any, tokens: torch.Tensor) -> dict[str, torch.Tensor]:
    model = hooked_gemma_from_hf(hf_model)
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens, return_cache_object=False)
    return {k: v.detach().float() for k, v in cache.items()}
