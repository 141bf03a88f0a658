"""Checking call arguments before anything is attached (docs/architecture.md#errors): dtype, shape, token range,
sequence length where positions are learned, and the attention mask's shape."""

from __future__ import annotations

import torch

from ..errors import InputError


def check_tokens(tokens: torch.Tensor, d_vocab: int, max_length: int | None, what: str = "tokens") -> torch.Tensor:
    """Returns `tokens` as `[batch, seq]`; raises `InputError` saying what is wrong with them."""
    if not isinstance(tokens, torch.Tensor):
        raise InputError(
            f"{what} must be a torch.Tensor of token ids, got {type(tokens).__name__} "
            "(strings need a tokenizer: pass tokenizer= when building the bridge)"
        )
    if tokens.dtype.is_floating_point or tokens.dtype.is_complex or tokens.dtype == torch.bool:
        raise InputError(f"{what} must be integer token ids, got dtype {tokens.dtype}")
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
