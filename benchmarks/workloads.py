"""What is measured: the random models, and each workload written once per implementation.

`run.py` forks one worker process per (workload, implementation); the worker calls `build_model`
and `make_op` from here and times the op. An op is `(prepare, call)`: `prepare()` runs untimed
before each timed `call()` (only the TransformerLens build needs it: that build edits the model).
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass

import torch

VOCAB = 50257  # GPT-2's


@dataclass(frozen=True)
class ModelShape:
    """A random HF model and the batch it is run on."""

    family: str  # "gpt2" | "gemma"
    layers: int
    d_model: int
    heads: int
    kv_heads: int
    vocab: int
    batch: int
    seq: int

    def describe(self) -> str:
        gqa = f", GQA {self.heads}/{self.kv_heads}" if self.kv_heads != self.heads else ""
        size = f"{self.layers}L d{self.d_model} h{self.heads}{gqa}"
        return f"{self.family} {size} vocab {self.vocab}, batch {self.batch}x{self.seq}"


MODELS = {
    "gpt2s": ModelShape("gpt2", 12, 768, 12, 12, VOCAB, 4, 128),
    # vocab 1000: with GPT-2's 50257 the unembedding alone would dominate a 2-layer d-64 model and
    # hide the per-hook cost this model is here to expose.
    "tiny": ModelShape("gpt2", 2, 64, 4, 4, 1000, 1, 32),
    "gemma": ModelShape("gemma", 6, 512, 8, 2, 32000, 2, 128),
}
ARCH = {"gpt2": "GPT2LMHeadModel", "gemma": "GemmaForCausalLM"}
GEN_PROMPT = 32  # generation: batch 1 x 32 prompt tokens, 32 new tokens, greedy
GEN_NEW = 32


def build_model(shape: ModelShape, attn: str) -> torch.nn.Module:
    """The same random weights in every process (seed 0), attention implementation `attn`."""
    import transformers

    torch.manual_seed(0)
    if shape.family == "gpt2":
        config = transformers.GPT2Config(
            n_layer=shape.layers, n_embd=shape.d_model, n_head=shape.heads, vocab_size=shape.vocab, n_positions=1024,
            bos_token_id=0, eos_token_id=0,
        )  # fmt: skip
        config._attn_implementation = attn
        model = transformers.GPT2LMHeadModel(config)
    else:
        config = transformers.GemmaConfig(
            num_hidden_layers=shape.layers,
            hidden_size=shape.d_model,
            intermediate_size=4 * shape.d_model,
            num_attention_heads=shape.heads,
            num_key_value_heads=shape.kv_heads,
            head_dim=shape.d_model // shape.heads,
            vocab_size=shape.vocab,
            max_position_embeddings=2048,
        )
        config._attn_implementation = attn
        model = transformers.GemmaForCausalLM(config)
    model.eval().requires_grad_(False)
    # Generation runs exactly GEN_NEW steps everywhere: no end-of-sequence token can stop it early.
    model.generation_config.eos_token_id = None
    model.generation_config.pad_token_id = 0
    return model


def tokens(shape: ModelShape, batch: int | None = None, seq: int | None = None) -> torch.Tensor:
    gen = torch.Generator().manual_seed(1)
    return torch.randint(0, shape.vocab, (batch or shape.batch, seq or shape.seq), generator=gen)


def blocks(model: torch.nn.Module) -> list[torch.nn.Module]:
    return list(model.transformer.h) if hasattr(model, "transformer") else list(model.model.layers)


def steering_vector(shape: ModelShape) -> torch.Tensor:
    return torch.randn(shape.d_model, generator=torch.Generator().manual_seed(2))


Op = tuple[Callable[[], None] | None, Callable[[], object]]


# ---------------------------------------------------------------------------------------------- raw HF
def hf_op(workload: str, model, shape: ModelShape) -> Op:
    if workload == "generate":
        prompt = tokens(shape, 1, GEN_PROMPT)
        mask = torch.ones_like(prompt)
        return None, lambda: model.generate(
            prompt, attention_mask=mask, max_new_tokens=GEN_NEW, do_sample=False, pad_token_id=0
        )
    if workload == "build":
        raise ValueError("HF has nothing to build")
    toks = tokens(shape)
    return None, lambda: model(input_ids=toks).logits  # every forward workload is compared with this


# ---------------------------------------------------------------------------------------------- bridge-core
def _not_result(name: str) -> bool:
    return not name.endswith("hook_result")


def _resid_post(name: str) -> bool:
    return name.endswith("hook_resid_post")


def bridge_core_op(
    workload: str, model, shape: ModelShape, n_hooks: int | None = None, stop_at: int | None = None
) -> Op:
    from bridge_core import Bridge

    if workload == "build":
        return None, lambda: Bridge.from_hf(model)
    bridge = Bridge.from_hf(model)
    toks = tokens(shape)
    mid = shape.layers // 2
    if workload == "forward":
        return None, lambda: bridge(toks)
    if workload == "cache_all":
        return None, lambda: bridge.run_with_cache(toks, names_filter=_not_result)
    if workload == "cache_all_result":
        return None, lambda: bridge.run_with_cache(toks)
    if workload == "cache_resid_post":
        return None, lambda: bridge.run_with_cache(toks, names_filter=_resid_post)
    if workload == "cache_n":  # scaling: the first n_hooks points in firing order
        names = [n for n in bridge.hook_names() if _not_result(n)][:n_hooks]
        return None, lambda: bridge.run_with_cache(toks, names_filter=names)
    if workload == "stop_at":  # scaling: the residual entering block `stop_at`; later blocks never run
        return None, lambda: bridge(toks, stop_at_layer=stop_at)
    if workload == "pattern_hook":
        hooks = [(f"blocks.{mid}.attn.hook_pattern", lambda t, hook: None)]
        return None, lambda: bridge.run_with_hooks(toks, fwd_hooks=hooks)
    if workload == "generate":
        prompt = tokens(shape, 1, GEN_PROMPT)
        vec = steering_vector(shape)
        bridge.add_hook(f"blocks.{mid}.hook_resid_post", lambda t, hook: t + vec)
        return None, lambda: bridge.generate(prompt, max_new_tokens=GEN_NEW)
    raise ValueError(workload)


# ---------------------------------------------------------------------------------------------- TransformerLens
def transformer_lens_op(workload: str, model, shape: ModelShape) -> Op:
    from transformer_lens.model_bridge.sources import build_bridge_from_module

    arch = ARCH[shape.family]
    if workload == "build":
        fresh: list = []

        def prepare() -> None:  # the build edits the model in place: each build gets its own copy
            fresh[:] = [copy.deepcopy(model)]

        return prepare, lambda: build_bridge_from_module(fresh.pop(), arch, hf_config=model.config)
    bridge = build_bridge_from_module(model, arch, hf_config=model.config)
    toks = tokens(shape)
    mid = shape.layers // 2
    if workload == "forward":
        return None, lambda: bridge(toks)
    if workload == "cache_all":  # TransformerLens's default: every hook point (hook_result off by default)
        return None, lambda: bridge.run_with_cache(toks)
    if workload == "cache_all_result":
        bridge.set_use_attn_result(True)
        return None, lambda: bridge.run_with_cache(toks)
    if workload == "cache_resid_post":
        return None, lambda: bridge.run_with_cache(toks, names_filter=_resid_post)
    if workload == "pattern_hook":
        hooks = [(f"blocks.{mid}.attn.hook_pattern", lambda t, hook: None)]
        return None, lambda: bridge.run_with_hooks(toks, fwd_hooks=hooks)
    if workload == "generate":
        prompt = tokens(shape, 1, GEN_PROMPT)
        vec = steering_vector(shape)
        bridge.add_hook(f"blocks.{mid}.hook_resid_post", lambda t, hook: t + vec)
        return None, lambda: bridge.generate(
            prompt, max_new_tokens=GEN_NEW, do_sample=False, stop_at_eos=False, verbose=False
        )
    raise ValueError(workload)


# ---------------------------------------------------------------------------------------------- nnsight
def _local_tokenizer():
    """nnsight's LanguageModel wants a tokenizer; a bare random model has none, so make one here."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    raw = Tokenizer(models.WordLevel({"<unk>": 0}, unk_token="<unk>"))
    raw.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=raw, unk_token="<unk>", pad_token="<unk>", eos_token="<unk>")


def nnsight_op(workload: str, model, shape: ModelShape) -> Op:
    import nnsight

    if workload == "build":
        return None, lambda: nnsight.NNsight(model)
    mid = shape.layers // 2
    if workload == "generate":
        import warnings

        warnings.filterwarnings("ignore", category=DeprecationWarning)
        lm = nnsight.LanguageModel(model, tokenizer=_local_tokenizer())
        prompt = tokens(shape, 1, GEN_PROMPT)
        inputs = {"input_ids": prompt, "attention_mask": torch.ones_like(prompt)}
        vec = steering_vector(shape)
        layer = blocks(lm)[mid]

        def generate():
            with lm.generate(inputs, max_new_tokens=GEN_NEW, do_sample=False, pad_token_id=0) as tracer:
                for _ in tracer.iter[:GEN_NEW]:
                    layer.output[:] += vec
                ids = tracer.result.save()
            return ids

        return None, generate
    nm = nnsight.NNsight(model)
    toks = tokens(shape)
    layers = blocks(nm)
    head = nm.lm_head

    if workload == "forward":

        def forward():
            with nm.trace(toks):
                logits = head.output.save()
            return logits

        return None, forward
    if workload == "cache_all":  # per layer the attention output (with the pattern on eager) and the block output

        def cache_all():
            saved: list = []
            with nm.trace(toks):
                for block in layers:
                    attn = block.attn if hasattr(block, "attn") else block.self_attn
                    saved.append(attn.output.save())
                    saved.append(block.output.save())
                logits = head.output.save()
            return saved, logits

        return None, cache_all
    if workload == "cache_resid_post":

        def resid_post():
            saved: list = []
            with nm.trace(toks):
                for block in layers:
                    saved.append(block.output.save())
                logits = head.output.save()
            return saved, logits

        return None, resid_post
    raise ValueError(workload)


IMPLEMENTATIONS = {
    "hf": hf_op,
    "bridge_core": bridge_core_op,
    "transformer_lens": transformer_lens_op,
    "nnsight": nnsight_op,
}
