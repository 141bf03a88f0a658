"""Checking call arguments before anything is attached (docs/architecture.md#errors): dtype, shape, token range,
sequence length where positions are learned, and the attention mask's shape."""

from __future__ import annotations

import torch

from ..errors import InputError

# Integer dtypes whose every value converts to int64 exactly; bool, float, complex, quantized and uint64 are refused.
_ID_DTYPES = (torch.int8, torch.int16, torch.int32, torch.int64, torch.uint8, torch.uint16, torch.uint32)


def check_tokens(tokens: torch.Tensor, d_vocab: int, max_length: int | None, what: str = "tokens") -> torch.Tensor:
    """Returns `tokens` as int64 `[batch, seq]`; raises `InputError` saying what is wrong with them."""
    if not isinstance(tokens, torch.Tensor):
        raise InputError(
            f"{what} must be a torch.Tensor of token ids, got {type(tokens).__name__} "
            "(strings need a tokenizer: pass tokenizer= when building the bridge)"
        )
    if tokens.dtype not in _ID_DTYPES:
        raise InputError(
            f"{what} must be integer token ids (int8/16/32/64, uint8/16/32), got dtype {tokens.dtype}"
            + (" (uint64 ids do not all fit the int64 that embeddings take)" if tokens.dtype == torch.uint64 else "")
        )
    tokens = tokens.long()  # lossless for these dtypes; embeddings and gather take int64 (int8 ids would fail there)
    if tokens.dim() == 1:
        tokens = tokens.unsqueeze(0)
    if tokens.dim() != 2:
        raise InputError(f"{what} must be [batch, seq] (or [seq]), got shape {tuple(tokens.shape)}")
    if tokens.shape[0] == 0 or tokens.shape[1] == 0:
        raise InputError(f"{what} is empty (shape {tuple(tokens.shape)}): give at least one token")
    low, high = (int(v) for v in torch.aminmax(tokens))  # one reduction, one sync
    if low < 0 or high >= d_vocab:
        bad = low if low < 0 else high
        raise InputError(f"{what} holds token id {bad}, outside the vocabulary [0, {d_vocab})")
    if max_length is not None and tokens.shape[1] > max_length:
        raise InputError(
            f"{what} has {tokens.shape[1]} positions but this model's learned position table has "
            f"{max_length} (cfg.n_ctx)"
        )
    return tokens


def check_attention_mask(mask: torch.Tensor | None, tokens: torch.Tensor) -> torch.Tensor | None:
    if mask is None:
        return None
    if not isinstance(mask, torch.Tensor):
        raise InputError(f"attention_mask must be a torch.Tensor, got {type(mask).__name__}")
    if mask.dim() == 1:
        mask = mask.unsqueeze(0)
    if tuple(mask.shape) != tuple(tokens.shape):
        raise InputError(
            f"attention_mask has shape {tuple(mask.shape)} but tokens have shape {tuple(tokens.shape)}; "
            "they must match (1 = real token, 0 = padding)"
        )
    if mask.dtype.is_floating_point and not bool(((mask == 0) | (mask == 1)).all()):
        raise InputError("attention_mask must hold only 0 and 1")
    if not mask.dtype.is_floating_point and mask.dtype != torch.bool and not bool(((mask == 0) | (mask == 1)).all()):
        raise InputError("attention_mask must hold only 0 and 1")
    if bool((mask.sum(-1) == 0).any()):
        raise InputError("attention_mask has a row with no real token")
    return mask
