"""Forward variants of the bridge: layer ranges, losses and generation.

`stop_at_layer` stops the model's own forward at a block's input (an exception raised from a
pre-hook, caught here); `start_at_layer` runs blocks alone through the spec's call conventions up
to `stop_at_layer` (HookedTransformer's `blocks[start:stop]`) or through the final norm and
unembedding; `generate` runs HF's own `generate` with the bridge's hooks attached for every step.
"""

from __future__ import annotations

import operator
from contextlib import ExitStack
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers.cache_utils import DynamicCache, EncoderDecoderCache

from ..errors import InputError
from .dispatch import activate, gated
from .places import select_output


class _StopForward(Exception):
    def __init__(self, residual: torch.Tensor) -> None:
        self.residual = residual


def layer_index(bridge: Any, layer: Any, what: str) -> int:
    """`layer` as a block index in [0, n_layers]; negative values count from the end, as in a slice."""
    if isinstance(layer, bool) or (isinstance(layer, torch.Tensor) and layer.dtype == torch.bool):
        raise InputError(f"{what} must be an integer block index, got the bool {layer!r}")
    try:
        layer = operator.index(layer)  # int, numpy integers, one-element integer tensors
    except TypeError:
        raise InputError(f"{what} must be an integer block index, got {type(layer).__name__} {layer!r}") from None
    n = bridge.cfg.n_layers
    index = layer + n if layer < 0 else layer
    if not 0 <= index <= n:
        raise InputError(f"{what}={layer} is outside [-{n}, {n}] for a model with {n} blocks")
    return index


def layer_range(bridge: Any, start_at_layer: Any, stop_at_layer: Any) -> tuple[int | None, int | None]:
    """Both arguments as block indices (None stays None); the slice `blocks[start:stop]` must not run backwards."""
    start = None if start_at_layer is None else layer_index(bridge, start_at_layer, "start_at_layer")
    stop = None if stop_at_layer is None else layer_index(bridge, stop_at_layer, "stop_at_layer")
    if start is not None and stop is not None and stop < start:
        raise InputError(
            f"stop_at_layer={stop_at_layer} (block {stop}) comes before start_at_layer={start_at_layer} "
            f"(block {start}): the blocks run are blocks[start:stop]"
        )
    return start, stop


def check_residual(bridge: Any, residual: Any) -> torch.Tensor:
    """The input of a call with `start_at_layer`: a floating residual `[batch, pos, d_model]`."""
    d_model = bridge.cfg.d_model
    if not isinstance(residual, torch.Tensor) or not residual.is_floating_point():
        raise InputError("with start_at_layer, pass the residual stream [batch, pos, d_model], not tokens")
    if residual.dim() != 3 or residual.shape[-1] != d_model:
        shape = tuple(residual.shape)
        raise InputError(f"start_at_layer needs a residual [batch, pos, d_model={d_model}], got {shape}")
    return residual


def check_loss_inputs(tokens: torch.Tensor, attention_mask: torch.Tensor | None) -> None:
    """A next-token loss needs a token with a real next token; otherwise its mean is over nothing (nan)."""
    if tokens.shape[1] < 2:
        raise InputError(
            f"a loss needs at least 2 tokens per sequence (it predicts each next token), got {tokens.shape[1]}; "
            "return_type='logits' works on a single token"
        )
    if attention_mask is not None and not bool((attention_mask[:, 1:].bool() & attention_mask[:, :-1].bool()).any()):
        raise InputError("a loss needs two adjacent real tokens in some row; attention_mask leaves none")


def stop_hook(bridge: Any, stop_at_layer: int, stack: ExitStack) -> None:
    """Make the model's forward end at the input of block `stop_at_layer` (or after the last block)."""
    index = layer_index(bridge, stop_at_layer, "stop_at_layer")
    blocks = bridge.bound.blocks
    gate = object()
    activate(gate, stack)
    if index < len(blocks):
        kwarg = blocks[index].hidden_kwarg

        def stop_before(module: nn.Module, args: tuple, kwargs: dict) -> None:
            raise _StopForward(kwargs[kwarg] if kwarg in kwargs else args[0])

        # first among the pre-hooks: block k does not start, so none of its hook points fire
        hook = gated(gate, stop_before)  # only this call stops: another thread's forward runs on
        handle = blocks[index].module.register_forward_pre_hook(hook, with_kwargs=True, prepend=True)
    else:
        output_index = blocks[-1].output_index

        def stop_after(module: nn.Module, args: tuple, output: Any) -> None:
            raise _StopForward(select_output(output, output_index))

        handle = blocks[-1].module.register_forward_hook(gated(gate, stop_after))
    stack.callback(handle.remove)


def unembed(bridge: Any, residual: torch.Tensor) -> torch.Tensor:
    """Final norm, projection, unembedding and final softcap applied to a residual `[b, s, d_model]`."""
    bound = bridge.bound
    x = residual
    if bound.ln_final is not None:
        x = bound.ln_final.module(x)
    if bound.unembed_project is not None:
        x = bound.unembed_project(x)
    if bound.unembed_pre_scale is not None:
        x = x * bound.unembed_pre_scale
    logits = bound.unembed(x)
    cap = bound.final_softcap
    if cap is not None:
        logits = torch.tanh(logits / cap) * cap
    return logits


def run_from_layer(
    bridge: Any, residual: torch.Tensor, start: int, stop: int | None, attention_mask: torch.Tensor | None
) -> torch.Tensor:
    """Blocks `start..stop-1` on `residual` (indices from `layer_range`): the residual entering block
    `stop`, or with no stop, every later block and the unembedding (logits)."""
    x = residual
    for layer in range(start, bridge.cfg.n_layers if stop is None else stop):
        x = bridge.components.block(layer, x, attention_mask)
    return x if stop is not None else unembed(bridge, x)


def lm_loss(
    logits: torch.Tensor, tokens: torch.Tensor, attention_mask: torch.Tensor | None, per_token: bool
) -> torch.Tensor:
    """Next-token cross-entropy; padded targets are left out (per-token values there are 0)."""
    log_probs = F.log_softmax(logits[:, :-1].float(), dim=-1)
    losses = -log_probs.gather(-1, tokens[:, 1:, None])[..., 0]
    if attention_mask is not None:
        keep = (attention_mask[:, 1:] * attention_mask[:, :-1]).to(losses.dtype)
        losses = losses * keep
        return losses if per_token else losses.sum() / keep.sum().clamp(min=1)
    return losses if per_token else losses.mean()


def generate(
    bridge: Any,
    tokens: torch.Tensor,
    attention_mask: torch.Tensor | None,
    max_new_tokens: int,
    do_sample: bool,
    temperature: float,
    top_k: int | None,
    top_p: float | None,
    eos_token_id: int | None,
    use_cache: bool,
) -> torch.Tensor:
    """HF's own `generate`, so decoding is exactly the model's; hooks fire on every step."""
    if max_new_tokens < 0:
        raise InputError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
    limit = bridge.cfg.n_ctx if bridge.position_kind.limits_length else None
    if limit is not None and tokens.shape[1] + max_new_tokens > limit:
        raise InputError(
            f"{tokens.shape[1]} prompt tokens + {max_new_tokens} new ones exceed this model's {limit} positions"
        )
    kwargs: dict[str, Any] = {
        "max_new_tokens": max_new_tokens,
        "do_sample": do_sample,
        "use_cache": use_cache,
        "min_new_tokens": 0,
    }
    if do_sample:
        kwargs.update(temperature=temperature, top_k=top_k, top_p=top_p)
    else:  # greedy: neutralize sampling settings a checkpoint's generation_config may carry
        kwargs.update(temperature=None, top_k=None, top_p=None)
    eos = eos_token_id if eos_token_id is not None else getattr(bridge.model.generation_config, "eos_token_id", None)
    kwargs["eos_token_id"] = eos
    pad = getattr(bridge.model.generation_config, "pad_token_id", None)
    kwargs["pad_token_id"] = pad if pad is not None else (eos if isinstance(eos, int) else 0)
    if attention_mask is None:
        attention_mask = torch.ones_like(tokens)
    if use_cache and bridge.is_encoder_decoder:
        # transformers 5.24 sizes the decoder's cache from the encoder's depth (num_layers) and fails
        # when the two differ; caches that grow as layers write to them work for any depths.
        kwargs["cache"] = EncoderDecoderCache(DynamicCache(), DynamicCache())
    return bridge.model.generate(input_ids=tokens, attention_mask=attention_mask, **kwargs)
