"""TransformerLens 3.9 ``HookedTransformer`` as an independent reference for GPT-2 hook values.

The reference is installed into ``.reference/tl39`` by ``scripts/install_reference.sh``; HF GPT-2
weights are converted here, with no layer-norm folding, centering or other weight processing.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from transformer_lens import HookedTransformer
    from transformers import GPT2LMHeadModel

REPO_ROOT = Path(__file__).resolve().parents[2]
REFERENCE_DIR = REPO_ROOT / ".reference" / "tl39"

# HF GPT2Config.activation_function values whose TransformerLens act_fn of the same name computes the
# same function (gelu_new / gelu_pytorch_tanh are both the tanh approximation, gelu is exact erf).
_ACT_FN = {
    "gelu_new": "gelu_new",
    "gelu_pytorch_tanh": "gelu_new",
    "gelu": "gelu",
    "gelu_fast": "gelu_fast",
    "relu": "relu",
    "silu": "silu",
}


@contextlib.contextmanager
def _undo_import_side_effects() -> Iterator[None]:
    """Undo the process-wide changes ``import transformer_lens`` (3.9) makes, so they cannot leak into
    the rest of the test session: it sets the ``transformers`` logger to ERROR, adds warning filters, and
    patches huggingface_hub's strict-dataclass validator to accept ints for float fields."""
    hf_logger = logging.getLogger("transformers")
    level = hf_logger.level
    try:
        from huggingface_hub import dataclasses as hub_dataclasses
    except ImportError:  # pragma: no cover - transformers 5 depends on huggingface_hub
        hub_dataclasses = None
    validator = getattr(hub_dataclasses, "_validate_simple_type", None)
    try:
        with warnings.catch_warnings():  # restores warnings.filters on exit
            yield
    finally:
        hf_logger.setLevel(level)
        if validator is not None:
            hub_dataclasses._validate_simple_type = validator  # type: ignore[union-attr]


@functools.cache
def _unavailable_reason() -> str | None:
    """Import the reference once; ``None`` when usable, otherwise why not."""
    if not (REFERENCE_DIR / "transformer_lens").is_dir():
        return f"{REFERENCE_DIR} is missing"
    # Appended, not prepended: the reference dir also holds pandas, pyarrow, dill, ... which must not
    # shadow whatever the venv has. The flip side: a transformer_lens installed in the venv (4.x)
    # shadows this one, and two TransformerLens versions cannot share one interpreter anyway.
    reference = str(REFERENCE_DIR)
    if reference not in sys.path:
        sys.path.append(reference)
    try:
        with _undo_import_side_effects():
            import transformer_lens
            from transformer_lens import HookedTransformer  # noqa: F401
    except Exception as exc:  # any import-time failure means "no reference", never a crash
        return f"importing transformer_lens from {REFERENCE_DIR} failed: {exc!r}"
    location = Path(transformer_lens.__file__).resolve()
    if REFERENCE_DIR.resolve() not in location.parents:
        return f"transformer_lens is imported from {location}, which shadows {REFERENCE_DIR}"
    return None


def available() -> bool:
    """True if the TransformerLens 3.9 reference in ``.reference/tl39`` can be imported."""
    return _unavailable_reason() is None


def unavailable_reason() -> str:
    """Why :func:`available` is False (empty string when it is True); the fix is usually to run
    ``scripts/install_reference.sh``."""
    return _unavailable_reason() or ""


def _require() -> None:
    reason = _unavailable_reason()
    if reason is not None:
        raise RuntimeError(reason)


def _hf_gpt2_state_dict_to_tl(
    state_dict: dict[str, torch.Tensor], n_layers: int, n_heads: int, d_head: int
) -> dict[str, torch.Tensor]:
    """Map an HF ``GPT2LMHeadModel`` state dict onto HookedTransformer parameter names.

    HF GPT-2 uses ``Conv1D`` (weight ``[in, out]``, ``y = x @ W + b``), the same orientation as
    TransformerLens' ``W_in``/``W_out``; ``c_attn`` fuses q|k|v along its output dim, each of those
    laid out head-major (``head * d_head + i``).
    """
    d_model = n_heads * d_head

    def sd(key: str) -> torch.Tensor:
        return state_dict[key].detach().to(torch.float32)

    def per_head_in(w: torch.Tensor) -> torch.Tensor:
        # [d_model, n_heads * d_head] -> [n_heads, d_model, d_head]
        return w.reshape(d_model, n_heads, d_head).permute(1, 0, 2).contiguous()

    wte = sd("transformer.wte.weight")
    # GPT-2 ties lm_head to wte; the HF state dict normally lists both, but fall back to wte if not.
    lm_head = sd("lm_head.weight") if "lm_head.weight" in state_dict else wte
    out: dict[str, torch.Tensor] = {
        "embed.W_E": wte,
        "pos_embed.W_pos": sd("transformer.wpe.weight"),
        "ln_final.w": sd("transformer.ln_f.weight"),
        "ln_final.b": sd("transformer.ln_f.bias"),
        "unembed.W_U": lm_head.T.contiguous(),
        "unembed.b_U": torch.zeros(lm_head.shape[0]),
    }
    for layer in range(n_layers):
        hf, tl = f"transformer.h.{layer}", f"blocks.{layer}"
        w_q, w_k, w_v = sd(f"{hf}.attn.c_attn.weight").split(d_model, dim=1)
        b_q, b_k, b_v = sd(f"{hf}.attn.c_attn.bias").split(d_model, dim=0)
        out |= {
            f"{tl}.ln1.w": sd(f"{hf}.ln_1.weight"),
            f"{tl}.ln1.b": sd(f"{hf}.ln_1.bias"),
            f"{tl}.attn.W_Q": per_head_in(w_q),
            f"{tl}.attn.W_K": per_head_in(w_k),
            f"{tl}.attn.W_V": per_head_in(w_v),
            f"{tl}.attn.b_Q": b_q.reshape(n_heads, d_head),
            f"{tl}.attn.b_K": b_k.reshape(n_heads, d_head),
            f"{tl}.attn.b_V": b_v.reshape(n_heads, d_head),
            f"{tl}.attn.W_O": sd(f"{hf}.attn.c_proj.weight").reshape(n_heads, d_head, d_model),
            f"{tl}.attn.b_O": sd(f"{hf}.attn.c_proj.bias"),
            f"{tl}.ln2.w": sd(f"{hf}.ln_2.weight"),
            f"{tl}.ln2.b": sd(f"{hf}.ln_2.bias"),
            f"{tl}.mlp.W_in": sd(f"{hf}.mlp.c_fc.weight"),
            f"{tl}.mlp.b_in": sd(f"{hf}.mlp.c_fc.bias"),
            f"{tl}.mlp.W_out": sd(f"{hf}.mlp.c_proj.weight"),
            f"{tl}.mlp.b_out": sd(f"{hf}.mlp.c_proj.bias"),
        }
    return out


def hooked_gpt2_from_hf(hf_model: GPT2LMHeadModel, *, extra_hooks: bool = False) -> HookedTransformer:
    """Build an unprocessed float32 HookedTransformer computing the same function as ``hf_model``.

    ``extra_hooks`` turns on TransformerLens' optional hook points (``hook_tokens``,
    ``hook_{q,k,v}_input``, ``attn.hook_result``, ``hook_mlp_in``). They do not change any output, but
    ``use_split_qkv_input`` makes ln1 run per head, so ``blocks.{i}.ln1.hook_scale`` / ``hook_normalized``
    gain a head dim (``[batch, pos, n_heads, 1 | d_model]``, identical across heads).
    """
    _require()
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    hf_cfg = hf_model.config
    if hf_cfg.activation_function not in _ACT_FN:
        raise NotImplementedError(f"no reference for activation_function={hf_cfg.activation_function!r}")
    if hf_cfg.n_embd % hf_cfg.n_head:
        raise ValueError(f"n_embd={hf_cfg.n_embd} is not divisible by n_head={hf_cfg.n_head}")
    d_head = hf_cfg.n_embd // hf_cfg.n_head
    device = next(hf_model.parameters()).device
    cfg = HookedTransformerConfig(
        model_name="hf-gpt2-reference",
        original_architecture="GPT2LMHeadModel",
        n_layers=hf_cfg.n_layer,
        d_model=hf_cfg.n_embd,
        n_heads=hf_cfg.n_head,
        d_head=d_head,
        d_mlp=hf_cfg.n_inner if hf_cfg.n_inner is not None else 4 * hf_cfg.n_embd,
        d_vocab=hf_cfg.vocab_size,
        d_vocab_out=hf_cfg.vocab_size,
        n_ctx=hf_cfg.n_positions,
        act_fn=_ACT_FN[hf_cfg.activation_function],
        eps=hf_cfg.layer_norm_epsilon,
        normalization_type="LN",
        positional_embedding_type="standard",
        attention_dir="causal",
        use_attn_scale=bool(hf_cfg.scale_attn_weights),
        scale_attn_by_inverse_layer_idx=bool(hf_cfg.scale_attn_by_inverse_layer_idx),
        default_prepend_bos=False,
        use_attn_result=extra_hooks,
        use_split_qkv_input=extra_hooks,
        use_hook_mlp_in=extra_hooks,
        use_hook_tokens=extra_hooks,
        init_weights=False,  # every parameter is overwritten below
        dtype=torch.float32,
        device=str(device),
    )
    with warnings.catch_warnings():
        # 3.9 marks HookedTransformer deprecated in favour of TransformerBridge; it is exactly what we want.
        warnings.filterwarnings("ignore", message="HookedTransformer is deprecated", category=DeprecationWarning)
        model = HookedTransformer(cfg)
    converted = _hf_gpt2_state_dict_to_tl(hf_model.state_dict(), cfg.n_layers, cfg.n_heads, cfg.d_head)
    param_names = {name for name, _ in model.named_parameters()}
    if set(converted) != param_names:
        raise RuntimeError(
            "GPT-2 conversion does not cover HookedTransformer's parameters exactly: "
            f"missing {sorted(param_names - set(converted))}, extra {sorted(set(converted) - param_names)}"
        )
    # Plain load_state_dict: no fold_ln / centering / value-bias folding, so hook values match an
    # unprocessed HF model. strict=False only because non-parameter buffers (e.g. attention IGNORE
    # constants) are not in `converted`; parameter coverage was checked exactly above.
    result = model.load_state_dict(converted, strict=False)
    if result.unexpected_keys or set(result.missing_keys) & param_names:
        raise RuntimeError(f"unexpected load result: {result}")
    return model.eval()  # already on cfg.device; HookedTransformer.to() would print


def reference_cache(
    hf_model: GPT2LMHeadModel,
    tokens: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    *,
    extra_hooks: bool = False,
) -> dict[str, torch.Tensor]:
    """Run the reference on ``tokens`` ``[batch, pos]`` and return every hook value, detached.

    Floating values are float32; the only integer one, ``hook_tokens`` (``extra_hooks``), stays integer.

    Without ``attention_mask`` every position is real and positions are ``0..pos-1``, as in HF.
    With an ``attention_mask`` ``[batch, pos]`` (1 = real token) TransformerLens 3.9 handles left
    *and* right padding itself (``padding_side`` only matters when it tokenizes strings): pad keys are
    masked out of attention, position ids are ``cumsum(mask) - 1`` (so each row's first real token
    is position 0, i.e. each row behaves as if it were unpadded; HF GPT-2 only does this when given
    matching ``position_ids``), and pad positions get a zero positional embedding. Only positions
    with ``attention_mask == 1`` are meaningful: values at pad positions are arbitrary (rows of
    left-pad queries attend to nothing), and ``hook_attn_scores`` is ``-inf`` at masked keys.
    """
    model = hooked_gpt2_from_hf(hf_model, extra_hooks=extra_hooks)
    device = next(model.parameters()).device
    kwargs: dict[str, torch.Tensor] = {}
    if attention_mask is not None:
        if attention_mask.shape != tokens.shape:
            raise ValueError(f"attention_mask {tuple(attention_mask.shape)} != tokens {tuple(tokens.shape)}")
        kwargs["attention_mask"] = attention_mask.to(device=device, dtype=torch.long)
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens.to(device), return_cache_object=False, **kwargs)
    return {
        name: value.detach().to(torch.float32) if value.is_floating_point() else value.detach()
        for name, value in cache.items()
    }


_ROTARY_DEFAULTS = {
    "positional_embedding_type": "rotary",
    "rotary_adjacent_pairs": False,
    "attention_dir": "causal",
    "default_prepend_bos": False,
    "init_weights": False,  # every parameter is overwritten by the converted state dict
    "dtype": torch.float32,
    "device": "cpu",
}


def build_loaded(cfg_kwargs: dict, convert) -> HookedTransformer:
    """A HookedTransformer from config fields (rotary-family defaults added) and `convert(cfg)`, a function
    returning its state dict; every parameter must be covered, and no weight processing is applied."""
    _require()
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    cfg = HookedTransformerConfig(**{**_ROTARY_DEFAULTS, **cfg_kwargs})
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="HookedTransformer is deprecated", category=DeprecationWarning)
        model = HookedTransformer(cfg)
    state = convert(cfg)
    params = {name for name, _ in model.named_parameters()}
    if not params <= set(state):
        raise RuntimeError(f"conversion misses parameters: {sorted(params - set(state))}")
    result = model.load_state_dict(state, strict=False)
    if result.unexpected_keys:
        raise RuntimeError(f"unexpected load result: {result}")
    return model.eval()


def run_reference(model: HookedTransformer, tokens: torch.Tensor) -> dict[str, torch.Tensor]:
    """Every hook value of `model` on `tokens`, detached, as float32."""
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens, return_cache_object=False)
    return {k: v.detach().float() for k, v in cache.items()}
