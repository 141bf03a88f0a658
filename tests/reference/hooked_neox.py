"""TransformerLens 3.9 ``HookedTransformer`` for GPT-NeoX, as an independent reference for the
rotary / parallel-block / interleaved-QKV family. Weights are converted here, unprocessed.
"""

from __future__ import annotations

from typing import Any

import torch

from .hooked_transformer import build_loaded, run_reference


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
    hf = hf_model.config
    d_head = hf.hidden_size // hf.num_attention_heads
    rope = hf.rope_parameters
    cfg = {
        "model_name": "hf-neox-reference",
        "original_architecture": "GPTNeoXForCausalLM",
        "n_layers": hf.num_hidden_layers,
        "d_model": hf.hidden_size,
        "n_heads": hf.num_attention_heads,
        "d_head": d_head,
        "d_mlp": hf.intermediate_size,
        "d_vocab": hf.vocab_size,
        "d_vocab_out": hf.vocab_size,
        "n_ctx": hf.max_position_embeddings,
        "act_fn": hf.hidden_act,
        "eps": hf.layer_norm_eps,
        "normalization_type": "LN",
        "rotary_dim": int(d_head * rope.get("partial_rotary_factor", 1.0)),
        "rotary_base": int(rope.get("rope_theta", 10000)),
        "parallel_attn_mlp": bool(hf.use_parallel_residual),
    }
    return build_loaded(cfg, lambda tl_cfg: _neox_state_dict_to_tl(hf_model, tl_cfg.n_heads, d_head))


def neox_reference_cache(hf_model: Any, tokens: torch.Tensor) -> dict[str, torch.Tensor]:
    return run_reference(hooked_neox_from_hf(hf_model), tokens)
