"""Text to tokens and back, as TransformerLens's `to_tokens` / `to_string` / `to_str_tokens` / `to_single_token`.

Plain functions over a bridge with a tokenizer. Whether a BOS token is prepended defaults to the
spec's `tokenizer.default_prepend_bos` when the schema has it, else to "the tokenizer has a BOS token".
"""

from __future__ import annotations

from typing import Any

import torch

from ..errors import TokenizerError


def require_tokenizer(bridge: Any) -> Any:
    if bridge.tokenizer is None:
        raise TokenizerError(
            "this bridge has no tokenizer: pass one to Bridge.from_hf(model, tokenizer=...) or set bridge.tokenizer"
        )
    return bridge.tokenizer


def default_prepend_bos(bridge: Any) -> bool:
    """The spec's `tokenizer.default_prepend_bos` if declared; else True when the tokenizer has a BOS token."""
    declared = bridge.bound.default_prepend_bos
    if declared is not None:
        return bool(declared)
    return getattr(require_tokenizer(bridge), "bos_token_id", None) is not None


def pad_id(tokenizer: Any) -> int:
    for name in ("pad_token_id", "eos_token_id", "bos_token_id"):
        value = getattr(tokenizer, name, None)
        if value is not None:
            return value
    return 0


def to_tokens(
    bridge: Any,
    input: str | list[str],
    prepend_bos: bool | None = None,
    padding_side: str | None = None,
    move_to_device: bool = True,
    truncate: bool = True,
) -> torch.Tensor:
    """Token ids `[batch, pos]` (batch 1 for a string). Special tokens are never added by the tokenizer
    itself: BOS is prepended (once) when `prepend_bos`; a batch is padded on `padding_side` (the tokenizer's
    default), and sequences are cut to the model's context when `truncate`."""
    tokenizer = require_tokenizer(bridge)
    prepend_bos = default_prepend_bos(bridge) if prepend_bos is None else prepend_bos
    if prepend_bos and tokenizer.bos_token_id is None:
        raise TokenizerError("prepend_bos=True but the tokenizer has no BOS token")
    texts = [input] if isinstance(input, str) else list(input)
    rows = [tokenizer.encode(text, add_special_tokens=False) for text in texts]
    if prepend_bos:
        rows = [[tokenizer.bos_token_id, *row] for row in rows]
    if truncate and bridge.cfg.n_ctx:
        rows = [row[: bridge.cfg.n_ctx] for row in rows]
    side = padding_side or getattr(tokenizer, "padding_side", "right")
    if side not in ("left", "right"):
        raise TokenizerError(f"padding_side must be 'left' or 'right', got {side!r}")
    width = max(len(row) for row in rows)
    pad = [pad_id(tokenizer)]
    rows = [row + pad * (width - len(row)) if side == "right" else pad * (width - len(row)) + row for row in rows]
    tokens = torch.tensor(rows, dtype=torch.long)
    return tokens.to(bridge._device()) if move_to_device else tokens


def to_string(bridge: Any, tokens: torch.Tensor | list[int] | int) -> str | list[str]:
    """Decode `[pos]` ids to a string, or `[batch, pos]` ids to a list of strings (special tokens kept)."""
    tokenizer = require_tokenizer(bridge)
    tokens = torch.as_tensor(tokens)
    if tokens.dim() == 0:
        tokens = tokens[None]
    if tokens.dim() == 1:
        return tokenizer.decode(tokens.tolist(), clean_up_tokenization_spaces=False)
    if tokens.dim() == 2:
        return [tokenizer.decode(row.tolist(), clean_up_tokenization_spaces=False) for row in tokens]
    raise TokenizerError(f"to_string takes [pos] or [batch, pos] tokens, got shape {tuple(tokens.shape)}")


def to_str_tokens(
    bridge: Any, input: str | list[str] | torch.Tensor | list[int], prepend_bos: bool | None = None
) -> list[str] | list[list[str]]:
    """Each token of `input` decoded on its own: a list of strings (a list of lists for a batch of texts)."""
    tokenizer = require_tokenizer(bridge)
    if isinstance(input, list) and input and all(isinstance(x, str) for x in input):
        return [to_str_tokens(bridge, text, prepend_bos) for text in input]
    if isinstance(input, str):
        ids = to_tokens(bridge, input, prepend_bos, move_to_device=False)[0]
    else:
        ids = torch.as_tensor(input)
        if ids.dim() == 2 and ids.shape[0] == 1:
            ids = ids[0]
        if ids.dim() == 0:
            ids = ids[None]
        if ids.dim() != 1:
            raise TokenizerError(f"to_str_tokens takes [pos] or [1, pos] tokens, got shape {tuple(ids.shape)}")
    return [tokenizer.decode([i], clean_up_tokenization_spaces=False) for i in ids.tolist()]


def to_single_token(bridge: Any, string: str) -> int:
    """The id of the one token that `string` is; a `TokenizerError` if it is several (or none)."""
    ids = to_tokens(bridge, string, prepend_bos=False, move_to_device=False)[0]
    if ids.numel() != 1:
        pieces = to_str_tokens(bridge, ids)
        raise TokenizerError(f"{string!r} is not a single token: it tokenizes to {len(pieces)} tokens {pieces}")
    return int(ids.item())


class TokenMethods:
    """The token conveniences of `Bridge` (TransformerLens names), over the functions above."""

    def to_tokens(
        self,
        input: str | list[str],
        prepend_bos: bool | None = None,
        padding_side: str | None = None,
        move_to_device: bool = True,
        truncate: bool = True,
    ) -> torch.Tensor:
        return to_tokens(self, input, prepend_bos, padding_side, move_to_device, truncate)

    def to_string(self, tokens: torch.Tensor | list[int] | int) -> str | list[str]:
        return to_string(self, tokens)

    def to_str_tokens(self, input: Any, prepend_bos: bool | None = None) -> list[str] | list[list[str]]:
        return to_str_tokens(self, input, prepend_bos)

    def to_single_token(self, string: str) -> int:
        return to_single_token(self, string)
