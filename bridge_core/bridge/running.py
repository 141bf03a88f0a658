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
from . import tokens as tk
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
    """Final norm, projection, unembedding, logit scale and final softcap applied to a residual `[b, s, d_model]`."""
    bound = bridge.bound
    x = residual
    if bound.ln_final is not None:
        x = bound.ln_final.module(x)
    if bound.unembed_project is not None:
        x = bound.unembed_project(x)
    if bound.unembed_pre_scale is not None:
        x = x * bound.unembed_pre_scale
    logits = bound.unembed(x)
    if bound.unembed_bias is not None:
        logits = logits + bound.unembed_bias.to(logits.device)
    if bound.logit_scale is not None:
        logits = logits * bound.logit_scale
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


def prompt_tokens(
    bridge: Any, input: Any, prepend_bos: bool | None, padding_side: str | None, attention_mask: Any
) -> tuple[Any, Any, str]:
    """Tokens, mask and the kind of input ("str" or "tokens") for `generate`, as HookedTransformer reads them:
    a list of strings is left-padded (each row's real tokens end where generation starts)."""
    if isinstance(input, str):
        return bridge.to_tokens(input, prepend_bos, padding_side), attention_mask, "str"
    if isinstance(input, list) and input and all(isinstance(x, str) for x in input):
        rows = [bridge.to_tokens(text, prepend_bos, move_to_device=False)[0] for text in input]
        width = max(len(row) for row in rows)
        pad = tk.pad_id(tk.require_tokenizer(bridge))
        tokens = torch.full((len(rows), width), pad, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, row in enumerate(rows):
            tokens[i, width - len(row) :] = row
            mask[i, width - len(row) :] = 1
        return tokens, mask, "str"
    if isinstance(input, torch.Tensor) and input.is_floating_point():
        raise InputError("generate from embeddings (return_type='embeds') is not supported: pass token ids or text")
    return input, attention_mask, "tokens"


def stop_tokens(bridge: Any, stop_at_eos: bool, eos_token_id: int | list[int] | None) -> int | list[int] | None:
    """The tokens that end a sequence: none unless `stop_at_eos`; else the given ones, the tokenizer's EOS,
    or the checkpoint's generation config's."""
    if not stop_at_eos:
        return None
    if eos_token_id is not None:
        return eos_token_id
    tokenizer_eos = getattr(bridge.tokenizer, "eos_token_id", None)
    if tokenizer_eos is not None:
        return tokenizer_eos
    return getattr(bridge.model.generation_config, "eos_token_id", None)


def generate(
    bridge: Any,
    tokens: torch.Tensor,
    attention_mask: torch.Tensor | None,
    max_new_tokens: int,
    do_sample: bool,
    temperature: float,
    top_k: int | None,
    top_p: float | None,
    eos_token_id: int | list[int] | None,
    use_cache: bool,
) -> torch.Tensor:
    """HF's own `generate`, so decoding is exactly the model's; hooks fire on every step.

    `eos_token_id` None: no sequence stops early. Finished rows are padded with the (first) stop token,
    as HookedTransformer does.
    """
    if max_new_tokens < 0:
        raise InputError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
    limit = bridge.cfg.n_ctx if bridge.position_kind.limits_length else None
    if limit is not None and tokens.shape[1] + max_new_tokens > limit:
        raise InputError(
            f"{tokens.shape[1]} prompt tokens + {max_new_tokens} new ones exceed this model's {limit} positions"
        )
    if max_new_tokens == 0:  # HookedTransformer returns the input; HF refuses
        return tokens
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
    kwargs["eos_token_id"] = eos_token_id
    first_eos = eos_token_id[0] if isinstance(eos_token_id, list) and eos_token_id else eos_token_id
    pad = getattr(bridge.model.generation_config, "pad_token_id", None)
    kwargs["pad_token_id"] = first_eos if isinstance(first_eos, int) else (pad if pad is not None else 0)
    if attention_mask is None:
        attention_mask = torch.ones_like(tokens)
    if use_cache and bridge.is_encoder_decoder:
        # transformers 5.24 sizes the decoder's cache from the encoder's depth (num_layers) and fails
        # when the two differ; caches that grow as layers write to them work for any depths.
        kwargs["cache"] = EncoderDecoderCache(DynamicCache(), DynamicCache())
    return bridge.model.generate(input_ids=tokens, attention_mask=attention_mask, **kwargs)


def generated_output(bridge: Any, out: torch.Tensor, input_kind: str, return_type: str) -> Any:
    """`generate`'s result as HookedTransformer returns it: text without special tokens, or token ids."""
    if return_type == "input":
        return_type = input_kind
    if return_type == "tokens":
        return out
    texts = [bridge.tokenizer.decode(row.tolist(), skip_special_tokens=True) for row in out]
    return texts[0] if len(texts) == 1 else texts
