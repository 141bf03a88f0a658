"""Hidden tiny configurations of GPT-NeoX, OPT and Gemma 1/2/3, and the runs the family tests share.

None of these is a spec's `test_config`: other head counts, GQA ratios (multi-query and 1 < n_kv <
n_heads), rotary fractions, window lengths, layer-type orders, block kinds and softcaps. Every
reference is independent of the bridge: an untouched deep copy of the HF model taken before the
bridge exists, HF's own eager attention probabilities on a further eager copy, plain PyTorch forward
hooks on the copy, or arithmetic on raw HF parameters.
"""

from __future__ import annotations

import copy
import functools
from dataclasses import dataclass, field
from typing import Any

import torch
import transformers
from torch import nn

from bridge_core import Bridge
from bridge_core.bridge import reimplement as _reimplement
from bridge_core.registry import default_registry

VOCAB = 89
BATCH = 3
SEQ = 9
PADDINGS = ["none", "left", "right"]


@dataclass(frozen=True)
class Variant:
    """One hidden configuration: the spec it binds to, the HF class and its config kwargs."""

    spec: str
    hf_class: str
    config: dict[str, Any]
    attn_implementation: str = "eager"

    @property
    def family(self) -> str:
        return self.spec


_NEOX_BASE = dict(num_hidden_layers=2, vocab_size=VOCAB, max_position_embeddings=32, bos_token_id=0, eos_token_id=0)
_OPT_BASE = dict(
    num_hidden_layers=2,
    vocab_size=VOCAB,
    max_position_embeddings=24,
    dropout=0.0,
    attention_dropout=0.0,
    bos_token_id=2,
    eos_token_id=2,
    pad_token_id=1,
)
_GEMMA_BASE = dict(
    num_hidden_layers=2, vocab_size=VOCAB, max_position_embeddings=32, bos_token_id=1, eos_token_id=2, pad_token_id=0
)


def _rope(fraction: float) -> dict[str, Any]:
    return {"rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": fraction}


VARIANTS: dict[str, Variant] = {
    # GPT-NeoX: rotary fractions 0.25 / 0.5 / 1.0, parallel and sequential residual, 4 / 2 / 8 heads.
    "neox-parallel-rot0.25-h4": Variant(
        "gpt_neox",
        "GPTNeoXForCausalLM",
        dict(
            _NEOX_BASE,
            hidden_size=64,
            num_attention_heads=4,
            intermediate_size=80,
            rope_parameters=_rope(0.25),
            use_parallel_residual=True,
        ),
        "sdpa",
    ),
    "neox-sequential-rot0.5-h2": Variant(
        "gpt_neox",
        "GPTNeoXForCausalLM",
        dict(
            _NEOX_BASE,
            hidden_size=32,
            num_attention_heads=2,
            intermediate_size=48,
            rope_parameters=_rope(0.5),
            use_parallel_residual=False,
        ),
        "eager",
    ),
    "neox-sequential-rot1.0-h8": Variant(
        "gpt_neox",
        "GPTNeoXForCausalLM",
        dict(
            _NEOX_BASE,
            hidden_size=64,
            num_attention_heads=8,
            intermediate_size=64,
            rope_parameters=_rope(1.0),
            use_parallel_residual=False,
        ),
        "sdpa",
    ),
    # OPT: pre-norm, post-norm (OPT-350m style) and project_in/out (word_embed_proj_dim != hidden_size).
    "opt-prenorm-h2": Variant(
        "opt",
        "OPTForCausalLM",
        dict(
            _OPT_BASE,
            hidden_size=32,
            num_attention_heads=2,
            ffn_dim=40,
            word_embed_proj_dim=32,
            do_layer_norm_before=True,
        ),
        "sdpa",
    ),
    "opt-postnorm-h4": Variant(
        "opt",
        "OPTForCausalLM",
        dict(
            _OPT_BASE,
            hidden_size=48,
            num_attention_heads=4,
            ffn_dim=56,
            word_embed_proj_dim=48,
            do_layer_norm_before=False,
        ),
        "eager",
    ),
    "opt-project-in-out-h4": Variant(
        "opt",
        "OPTForCausalLM",
        dict(
            _OPT_BASE,
            hidden_size=64,
            num_attention_heads=4,
            ffn_dim=72,
            word_embed_proj_dim=32,
            do_layer_norm_before=True,
        ),
        "sdpa",
    ),
    # Gemma 1: multi-query and 1 < n_kv < n_heads with a group of 4.
    "gemma-mqa-h4-kv1": Variant(
        "gemma",
        "GemmaForCausalLM",
        dict(
            _GEMMA_BASE, hidden_size=32, num_attention_heads=4, num_key_value_heads=1, head_dim=16, intermediate_size=48
        ),
        "sdpa",
    ),
    "gemma-gqa-h8-kv2": Variant(
        "gemma",
        "GemmaForCausalLM",
        dict(
            _GEMMA_BASE, hidden_size=48, num_attention_heads=8, num_key_value_heads=2, head_dim=8, intermediate_size=40
        ),
        "eager",
    ),
    # Gemma 2: windows 2 and 4 (shorter than SEQ), both layer orders, softcaps on and off, GQA and MQA.
    "gemma2-gqa-window2-full-first-softcaps": Variant(
        "gemma2",
        "Gemma2ForCausalLM",
        dict(
            _GEMMA_BASE,
            hidden_size=32,
            num_attention_heads=4,
            num_key_value_heads=2,
            head_dim=8,
            intermediate_size=40,
            sliding_window=2,
            layer_types=["full_attention", "sliding_attention"],
            query_pre_attn_scalar=8,
            attn_logit_softcapping=2.0,
            final_logit_softcapping=1.5,
        ),
        "eager",
    ),
    "gemma2-mqa-window4-sliding-first-no-attn-softcap": Variant(
        "gemma2",
        "Gemma2ForCausalLM",
        dict(
            _GEMMA_BASE,
            hidden_size=48,
            num_attention_heads=6,
            num_key_value_heads=1,
            head_dim=12,
            intermediate_size=40,
            sliding_window=4,
            layer_types=["sliding_attention", "full_attention"],
            query_pre_attn_scalar=12,
            attn_logit_softcapping=None,
            final_logit_softcapping=4.0,
        ),
        "eager",
    ),
    # Gemma 3: q/k norms, per-layer-type rotary, GQA sdpa and MQA eager with an attention softcap.
    "gemma3-gqa-window3-sliding-first-sdpa": Variant(
        "gemma3",
        "Gemma3ForCausalLM",
        dict(
            _GEMMA_BASE,
            hidden_size=48,
            num_attention_heads=6,
            num_key_value_heads=2,
            head_dim=8,
            intermediate_size=40,
            sliding_window=3,
            layer_types=["sliding_attention", "full_attention"],
            query_pre_attn_scalar=8,
            attn_logit_softcapping=None,
            final_logit_softcapping=None,
            rope_parameters={
                "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
                "full_attention": {"rope_type": "default", "rope_theta": 1000000.0},
            },
        ),
        "sdpa",
    ),
    "gemma3-mqa-window2-full-first-eager": Variant(
        "gemma3",
        "Gemma3ForCausalLM",
        dict(
            _GEMMA_BASE,
            hidden_size=32,
            num_attention_heads=2,
            num_key_value_heads=1,
            head_dim=16,
            intermediate_size=40,
            sliding_window=2,
            layer_types=["full_attention", "sliding_attention"],
            query_pre_attn_scalar=16,
            attn_logit_softcapping=3.0,
            final_logit_softcapping=None,
            rope_parameters={
                "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
                "full_attention": {"rope_type": "default", "rope_theta": 1000000.0},
            },
        ),
        "eager",
    ),
}
VARIANT_IDS = list(VARIANTS)


def variants_of(*specs: str) -> list[str]:
    return [name for name, v in VARIANTS.items() if v.spec in specs]


def tiny_model(name: str, seed: int = 0, attn_implementation: str | None = None) -> nn.Module:
    """The variant's random model in eval mode, every parameter perturbed (norm weights, biases not 0/1)."""
    variant = VARIANTS[name]
    cls = getattr(transformers, variant.hf_class)
    config = cls.config_class(**variant.config, attn_implementation=attn_implementation or variant.attn_implementation)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = cls(config)
        with torch.no_grad():
            for param in model.parameters():
                param.add_(torch.randn_like(param) * 0.2)
    return model.eval()


def spec(name: str, implementation: str | None = None):
    found = default_registry().get(VARIANTS[name].spec)
    return found if implementation is None else _reimplement.with_attention_implementation(found, implementation)


def eager_copy(model: nn.Module) -> nn.Module:
    """An untouched deep copy on HF's eager attention (the only model `output_attentions=True` is used on)."""
    clone = copy.deepcopy(model)
    clone.set_attn_implementation("eager")
    assert clone.config._attn_implementation == "eager"
    return clone


def tokens(batch: int = BATCH, seq: int = SEQ, seed: int = 1) -> torch.Tensor:
    # avoid the pad ids so that nothing depends on token values at padded positions
    return torch.randint(3, VOCAB, (batch, seq), generator=torch.Generator().manual_seed(seed))


def padding_mask(kind: str, batch: int = BATCH, seq: int = SEQ) -> torch.Tensor | None:
    """None, or a 1/0 mask padding rows 0 (3 positions) and 1 (1 position) on one side; row 2 is full."""
    if kind == "none":
        return None
    mask = torch.ones(batch, seq, dtype=torch.long)
    if kind == "left":
        mask[0, :3] = 0
        mask[1, :1] = 0
    elif kind == "right":
        mask[0, -3:] = 0
        mask[1, -1:] = 0
    else:
        raise ValueError(kind)
    return mask


def real_positions(mask: torch.Tensor | None, batch: int = BATCH, seq: int = SEQ) -> torch.Tensor:
    return torch.ones(batch, seq, dtype=torch.bool) if mask is None else mask.bool()


def assert_close_at(actual: torch.Tensor, expected: torch.Tensor, where: torch.Tensor, atol: float = 1e-5) -> None:
    """Compare `[batch, seq, ...]` tensors only where `where` (`[batch, seq]` bool) is True."""
    torch.testing.assert_close(actual[where], expected[where], rtol=0, atol=atol)


def capture(
    model: nn.Module, toks: torch.Tensor, mask: torch.Tensor | None, paths: list[str], inputs: bool = False
) -> dict[str, torch.Tensor]:
    """Outputs (or hidden-state inputs) of HF modules by path, captured with plain PyTorch hooks."""
    modules = dict(model.named_modules())
    captured: dict[str, torch.Tensor] = {}
    handles = []
    for path in paths:
        if inputs:

            def save_in(module, args, kwargs, path=path):
                value = args[0] if args else kwargs.get("hidden_states", kwargs.get("input"))
                captured[path] = value.detach().clone()

            handles.append(modules[path].register_forward_pre_hook(save_in, with_kwargs=True))
        else:

            def save(module, args, output, path=path):
                captured[path] = (output[0] if isinstance(output, tuple) else output).detach().clone()

            handles.append(modules[path].register_forward_hook(save))
    try:
        with torch.no_grad():
            model(input_ids=toks, attention_mask=mask, use_cache=False)
    finally:
        for handle in handles:
            handle.remove()
    return captured


def hf_probabilities(model: nn.Module, toks: torch.Tensor, mask: torch.Tensor | None) -> list[torch.Tensor]:
    """HF's own eager attention probabilities `[b, h, q, k]` per layer, from an eager deep copy."""
    clone = eager_copy(model)
    with torch.no_grad():
        out = clone(input_ids=toks, attention_mask=mask, output_attentions=True, use_cache=False)
    return [a.detach() for a in out.attentions]


@dataclass
class Run:
    """One variant with one padding: the bridge, its untouched copy, and the cached forward."""

    name: str
    padding: str
    bridge: Bridge
    reference: nn.Module
    toks: torch.Tensor
    mask: torch.Tensor | None
    logits: torch.Tensor
    cache: Any
    memo: dict[str, Any] = field(default_factory=dict)

    @property
    def variant(self) -> Variant:
        return VARIANTS[self.name]

    @property
    def family(self) -> str:
        return self.variant.spec

    @property
    def hf_config(self):
        return self.reference.config

    @property
    def real(self) -> torch.Tensor:
        return real_positions(self.mask)

    @property
    def n_layers(self) -> int:
        return self.bridge.cfg.n_layers

    def window(self, layer: int) -> int | None:
        types = getattr(self.hf_config, "layer_types", None)
        if self.family in ("gemma2", "gemma3") and types[layer] == "sliding_attention":
            return self.hf_config.sliding_window
        return None

    def allowed(self, layer: int) -> torch.Tensor:
        """`[b, 1, q, k]` bool: causal, not a padded key, and inside the layer's sliding window."""
        seq = self.toks.shape[1]
        q = torch.arange(seq)[:, None]
        k = torch.arange(seq)[None, :]
        ok = k <= q
        window = self.window(layer)
        if window is not None:
            ok = ok & (q - k < window)
        return ok[None, None] & self.real[:, None, None, :]

    def real_rows(self, like: torch.Tensor) -> torch.Tensor:
        """`[b, h, q, k]` bool selecting the rows of real queries."""
        return self.real[:, None, :, None].expand_as(like)

    def hf_probabilities(self) -> list[torch.Tensor]:
        if "probs" not in self.memo:
            self.memo["probs"] = hf_probabilities(self.reference, self.toks, self.mask)
        return self.memo["probs"]

    def hf_outputs(self, paths: list[str], inputs: bool = False) -> dict[str, torch.Tensor]:
        key = ("in" if inputs else "out", tuple(paths))
        if key not in self.memo:
            self.memo[key] = capture(self.reference, self.toks, self.mask, paths, inputs=inputs)
        return self.memo[key]

    def hf_module(self, path: str) -> nn.Module:
        return dict(self.reference.named_modules())[path]


@functools.cache
def build_run(name: str, padding: str) -> Run:
    model = tiny_model(name)
    reference = copy.deepcopy(model)
    bridge = Bridge.from_hf(model, spec=spec(name))
    toks, mask = tokens(), padding_mask(padding)
    with torch.no_grad():
        logits, cache = bridge.run_with_cache(toks, attention_mask=mask)
    return Run(name, padding, bridge, reference, toks, mask, logits, cache)


# Paths of the HF modules each family's tests read, in the untouched copy.
def block_path(family: str, layer: int) -> str:
    return {
        "gpt_neox": "gpt_neox.layers",
        "opt": "model.decoder.layers",
    }.get(family, "model.layers") + f".{layer}"


def attn_path(family: str, layer: int) -> str:
    return block_path(family, layer) + {"gpt_neox": ".attention", "opt": ".self_attn"}.get(family, ".self_attn")


def ln1_path(family: str, layer: int) -> str:
    return block_path(family, layer) + {"gpt_neox": ".input_layernorm", "opt": ".self_attn_layer_norm"}.get(
        family, ".input_layernorm"
    )
