"""TransformerLens 3.9 ``HookedTransformer`` for GPT-NeoX, as an independent reference for the
rotary / parallel-block / interleaved-QKV family. Weights are converted here, unprocessed.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch

from .hooked_transformer import _require


def _neox_state_dict_to_tl(hf_model: Any, n_heads: int, d_head: int) -> dict[str, torch.Tensor]:
    """HF GPTNeoXForCausalLM parameters under HookedTransformer's names and shapes."""
    neox = hf_model.gpt_neox
    out: dict[str, torch.Tensor] = {"embed.W_E": neox.embed_in.weight.detach()}
    for i, layer in enumerate(neox.layers):
        p = f"blocks.{i}"
        out[f"{p}.ln1.w"], out[f"{p}.ln1.b"] = (
            layer.input_layernorm.weight.detach(),
            layer.input_layernorm.bias.detach(),
        )
        out[f"{p}.ln2.w"] = layer.post_attention_layernorm.weight.detach()
        out[f"{p}.ln2.b"] = layer.post_attention_layernorm.bias.detach()
        qkv = layer.attention.query_key_value
        weight = qkv.weight.detach().view(n_heads, 3, d_head, -1)  # per head [q k v], each [d_head, d_model]
        bias = qkv.bias.detach().view(n_heads, 3, d_head)
        for j, n in enumerate("QKV"):
            out[f"{p}.attn.W_{n}"] = weight[:, j].transpose(1, 2).contiguous()  # [h, d_model, d_head]
            out[f"{p}.attn.b_{n}"] = bias[:, j].contiguous()
        dense = layer.attention.dense
        out[f"{p}.attn.W_O"] = dense.weight.detach().t().reshape(n_heads, d_head, -1).contiguous()
        out[f"{p}.attn.b_O"] = dense.bias.detach()
        out[f"{p}.mlp.W_in"] = layer.mlp.dense_h_to_4h.weight.detach().t().contiguous()
        out[f"{p}.mlp.b_in"] = layer.mlp.dense_h_to_4h.bias.detach()
        out[f"{p}.mlp.W_out"] = layer.mlp.dense_4h_to_h.weight.detach().t().contiguous()
        out[f"{p}.mlp.b_out"] = layer.mlp.dense_4h_to_h.bias.detach()
    out["ln_final.w"], out["ln_final.b"] = neox.final_layer_norm.weight.detach(), neox.final_layer_norm.bias.detach()
    out["unembed.W_U"] = hf_model.get_output_embeddings().weight.detach().t().contiguous()
    out["unembed.b_U"] = torch.zeros(hf_model.config.vocab_size)
    return out


def hooked_neox_from_hf(hf_model: Any):
    """An unprocessed float32 HookedTransformer computing the same function as a GPTNeoXForCausalLM."""
    _require()
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    hf = hf_model.config
    d_head = hf.hidden_size // hf.num_attention_heads
    rope = hf.rope_parameters
    cfg = HookedTransformerConfig(
        model_name="hf-neox-reference",
        original_architecture="GPTNeoXForCausalLM",
        n_layers=hf.num_hidden_layers,
        d_model=hf.hidden_size,
        n_heads=hf.num_attention_heads,
        d_head=d_head,
        d_mlp=hf.intermediate_size,
        d_vocab=hf.vocab_size,
        d_vocab_out=hf.vocab_size,
        n_ctx=hf.max_position_embeddings,
        act_fn="gelu" if hf.hidden_act == "gelu" else hf.hidden_act,
        eps=hf.layer_norm_eps,
        normalization_type="LN",
        positional_embedding_type="rotary",
        rotary_dim=int(d_head * rope.get("partial_rotary_factor", 1.0)),
        rotary_base=int(rope.get("rope_theta", 10000)),
        rotary_adjacent_pairs=False,
        parallel_attn_mlp=bool(hf.use_parallel_residual),
        attention_dir="causal",
        default_prepend_bos=False,
        init_weights=False,
        dtype=torch.float32,
        device="cpu",
    )
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="HookedTransformer is deprecated", category=DeprecationWarning)
        model = HookedTransformer(cfg)
    converted = _neox_state_dict_to_tl(hf_model, cfg.n_heads, d_head)
    params = {name for name, _ in model.named_parameters()}
    if set(converted) != params:
        raise RuntimeError(f"conversion mismatch: missing {sorted(params - set(converted))}")
    result = model.load_state_dict(converted, strict=False)
    if result.unexpected_keys:
        raise RuntimeError(f"unexpected load result: {result}")
    return model.eval()


def neox_reference_cache(hf_model: Any, tokens: torch.Tensor) -> dict[str, torch.Tensor]:
    model = hooked_neox_from_hf(hf_model)
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens, return_cache_object=False)
    return {k: v.detach().float() for k, v in cache.items()}
