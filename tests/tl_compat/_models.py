"""A GPT-2-shaped and a Llama-shaped tiny model with a BPE tokenizer trained offline, each as a bridge and
as TransformerLens 3.9's HookedTransformer over the same (unprocessed) weights, for the compatibility tests.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import torch
from _bpe import train_bpe
from reference import hooked_transformer as ref
from transformers import (
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
)

from bridge_core import Bridge

SENTENCES = [
    "the cat sat on the mat",
    "the dog sat on the log",
    "a cat and a dog met on the mat",
    "when mary and john went to the store john gave a drink to mary",
] * 5


def train_tokenizer(path: Path) -> Any:
    """A byte-level BPE tokenizer (pad, bos, eos, unk specials) trained on SENTENCES, saved and loaded back."""
    return train_bpe(SENTENCES, path, vocab_size=360)[1]


def _perturb(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    with torch.no_grad():  # norms and biases away from 1 and 0, so a wrong one shows
        for p in model.parameters():
            if p.dim() == 1:
                p.add_(torch.randn_like(p) * 0.2)
    return model.eval()


def gpt2(vocab: int) -> GPT2LMHeadModel:
    torch.manual_seed(0)
    config = GPT2Config(n_layer=2, n_embd=32, n_head=4, vocab_size=vocab, n_positions=64, attn_implementation="eager",
                        bos_token_id=1, eos_token_id=2)  # fmt: skip
    return _perturb(GPT2LMHeadModel(config), 1)


def llama(vocab: int) -> LlamaForCausalLM:
    torch.manual_seed(0)
    config = LlamaConfig(
        num_hidden_layers=2, hidden_size=32, num_attention_heads=4, num_key_value_heads=2, intermediate_size=48,
        vocab_size=vocab, max_position_embeddings=64, rms_norm_eps=1e-5, attn_implementation="eager",
        tie_word_embeddings=False, bos_token_id=1, eos_token_id=2, pad_token_id=0,
    )  # fmt: skip
    return _perturb(LlamaForCausalLM(config), 2)


def hooked_llama(hf_model: LlamaForCausalLM) -> Any:
    from transformer_lens.pretrained.weight_conversions.llama import convert_llama_weights

    hf = hf_model.config
    cfg = {
        "model_name": "hf-llama-reference",
        "original_architecture": "LlamaForCausalLM",
        "n_layers": hf.num_hidden_layers,
        "d_model": hf.hidden_size,
        "n_heads": hf.num_attention_heads,
        "n_key_value_heads": hf.num_key_value_heads,
        "d_head": hf.hidden_size // hf.num_attention_heads,
        "d_mlp": hf.intermediate_size,
        "d_vocab": hf.vocab_size,
        "d_vocab_out": hf.vocab_size,
        "n_ctx": hf.max_position_embeddings,
        "act_fn": "silu",
        "eps": hf.rms_norm_eps,
        "normalization_type": "RMS",
        "final_rms": True,
        "gated_mlp": True,
        "rotary_dim": hf.hidden_size // hf.num_attention_heads,
        "rotary_base": int(hf.rope_parameters.get("rope_theta", 10000)),
    }
    return ref.build_loaded(cfg, lambda tl_cfg: convert_llama_weights(hf_model, tl_cfg))


def pair(family: str, tokenizer: Any) -> tuple[Bridge, Any]:
    """(bridge, HookedTransformer) over the same weights, both with `tokenizer` and BOS prepended by default."""
    hf = gpt2(len(tokenizer)) if family == "gpt2" else llama(len(tokenizer))
    reference = copy.deepcopy(hf)
    bridge = Bridge.from_hf(hf, family, tokenizer=tokenizer)
    hooked = ref.hooked_gpt2_from_hf(reference) if family == "gpt2" else hooked_llama(reference)
    hooked.set_tokenizer(tokenizer, default_padding_side="right")
    hooked.cfg.default_prepend_bos = True
    return bridge, hooked
