"""Batched activation patching and steering sweeps: many interventions per forward, not one each.

Every variant (a layer × position, a layer × head, a steering scale) is one slice of the batch; one
hook per hook point writes each slice's own intervention, so a sweep of N patches costs N/chunk forwards.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Literal

import torch

from .bridge.running import unembed
from .errors import InputError

Metric = Callable[[torch.Tensor], torch.Tensor]
PATCH_POINTS = {"resid_pre": "blocks.{layer}.hook_resid_pre", "head": "blocks.{layer}.attn.hook_z"}


def _as_tokens(tokens: Any, what: str) -> torch.Tensor:
    if not isinstance(tokens, torch.Tensor) or tokens.is_floating_point():
        raise InputError(f"{what} must be an integer token tensor [batch, pos], got {type(tokens).__name__}")
    return tokens if tokens.dim() == 2 else tokens.unsqueeze(0)


def _layers(bridge: Any, layers: Sequence[int] | None) -> list[int]:
    n = bridge.cfg.n_layers
    chosen = list(range(n)) if layers is None else [int(layer) for layer in layers]
    bad = [layer for layer in chosen if not 0 <= layer < n]
    if bad:
        raise InputError(f"layers {bad} are outside [0, {n}) for a model with {n} blocks")
    return chosen


def _run_chunks(
    bridge: Any,
    inputs: torch.Tensor,
    variants: list[tuple[str, Any]],
    patch: Callable[[torch.Tensor, str, list[int], list[Any]], torch.Tensor],
    metric: Metric,
    batch_size: int,
    start_at_layer: int | None = None,
    logit_positions: slice | None = None,
) -> list[torch.Tensor]:
    """Run `variants` (hook name, argument) `batch_size` at a time on copies of `inputs` (tokens, or the
    residual entering block `start_at_layer`); one metric value each.

    `patch(tensor, name, rows, args)` returns the point's activation with the listed rows' interventions."""
    b = inputs.shape[0]
    repeat = (1,) * (inputs.dim() - 1)
    results: list[torch.Tensor] = []
    for start in range(0, len(variants), batch_size):
        chunk = variants[start : start + batch_size]
        by_name: dict[str, tuple[list[int], list[Any]]] = {}
        for slot, (name, arg) in enumerate(chunk):
            rows, args = by_name.setdefault(name, ([], []))
            rows.append(slot)
            args.append(arg)

        def hook(tensor: torch.Tensor, hook: Any, by_name: dict = by_name) -> torch.Tensor:
            rows, args = by_name[hook.name]
            return patch(tensor, hook.name, rows, args)

        with torch.no_grad():
            out = bridge.run_with_hooks(
                inputs.repeat(len(chunk), *repeat),
                fwd_hooks=[(n, hook) for n in by_name],
                start_at_layer=start_at_layer,
                stop_at_layer=None if logit_positions is None else bridge.cfg.n_layers,
            )
            # the unembedding (often the largest matmul) only where the metric reads logits
            logits = out if logit_positions is None else unembed(bridge, out[:, logit_positions])
        # the metric sees each variant's logits alone, exactly as it would after a forward of its own
        results += [torch.as_tensor(metric(part)).reshape(()) for part in logits.split(b)]
    return results


def patch_sweep(
    bridge: Any,
    clean_tokens: torch.Tensor,
    corrupted_tokens: torch.Tensor,
    metric: Metric,
    kind: Literal["resid_pre", "head"] = "resid_pre",
    layers: Sequence[int] | None = None,
    positions: Sequence[int] | None = None,
    batch_size: int = 32,
    logit_positions: slice | None = None,
) -> torch.Tensor:
    """Patch clean activations into the corrupted run, one variant per (layer, position) or (layer, head).

    `kind="resid_pre"`: `blocks.{l}.hook_resid_pre` at one position -> `[len(layers), len(positions)]`.
    `kind="head"`: `blocks.{l}.attn.hook_z` of one head at every position -> `[len(layers), n_heads]`.
    Each entry is `metric(logits)` of the corrupted run with that one patch, where `logits` has the
    corrupted batch's shape; `batch_size` variants share one forward (memory grows with it).
    `logit_positions=slice(-1, None)` unembeds only those positions (the metric then sees
    `[batch, 1, d_vocab]`; `logits[:, -1]` reads the same values): the fastest choice for a
    last-token metric. Decoder-only models; each layer's variants resume from the corrupted
    residual entering that layer, since earlier blocks are unaffected by the patch.
    """
    if kind not in PATCH_POINTS:
        raise InputError(f"kind must be one of {sorted(PATCH_POINTS)}, got {kind!r}")
    clean, corrupted = _as_tokens(clean_tokens, "clean_tokens"), _as_tokens(corrupted_tokens, "corrupted_tokens")
    if clean.shape != corrupted.shape:
        raise InputError(f"clean {tuple(clean.shape)} and corrupted {tuple(corrupted.shape)} tokens differ in shape")
    if batch_size < 1:
        raise InputError(f"batch_size must be at least 1, got {batch_size}")
    chosen = _layers(bridge, layers)
    names = [PATCH_POINTS[kind].format(layer=layer) for layer in chosen]
    if kind == "resid_pre":
        seq = clean.shape[1]
        slots = list(range(seq)) if positions is None else [int(p) for p in positions]
        if any(not -seq <= p < seq for p in slots):
            raise InputError(f"positions {slots} are outside a sequence of {seq} tokens")
    else:
        slots = list(range(bridge.cfg.n_heads))
    starts = [f"blocks.{layer}.hook_resid_pre" for layer in chosen]
    with torch.no_grad():
        _, cache = bridge.run_with_cache(clean, names_filter=names)
        # blocks before the patched one compute what the corrupted run computes: each layer's variants
        # resume from the corrupted residual entering it (about half the block work on average)
        _, resume = bridge.run_with_cache(corrupted, names_filter=starts)
    b = clean.shape[0]

    def patch(tensor: torch.Tensor, name: str, rows: list[int], args: list[int]) -> torch.Tensor:
        source = cache[name]
        # row r*b + i of the stacked batch is prompt i of variant r; it takes clean prompt i's values
        row = (torch.tensor(rows).repeat_interleave(b) * b + torch.arange(b).repeat(len(rows))).to(tensor.device)
        prompt = torch.arange(b).repeat(len(rows)).to(tensor.device)
        slot = torch.tensor(args).repeat_interleave(b).to(tensor.device)
        out = tensor.clone()
        if kind == "resid_pre":
            out[row, slot] = source[prompt, slot].to(out.dtype)
        else:  # [batch, pos, head, d_head]: every position of one head
            out[row, :, slot] = source[prompt, :, slot].to(out.dtype)
        return out

    values = []
    for layer, name, start in zip(chosen, names, starts, strict=True):
        variants = [(name, slot) for slot in slots]
        values += _run_chunks(bridge, resume[start], variants, patch, metric, batch_size, layer, logit_positions)
    return torch.stack(values).reshape(len(names), len(slots))


def steering_sweep(
    bridge: Any,
    tokens: torch.Tensor,
    hook_name: str,
    vector: torch.Tensor,
    scales: Sequence[float],
    metric: Metric,
    batch_size: int = 32,
    logit_positions: slice | None = None,
) -> torch.Tensor:
    """`metric(logits)` with `scale * vector` added to `hook_name`'s activation, for each scale -> `[len(scales)]`.

    `logit_positions` as in `patch_sweep`."""
    prompt = _as_tokens(tokens, "tokens")
    bridge.hook_point(hook_name)  # a typed error naming the point before any forward runs
    if batch_size < 1:
        raise InputError(f"batch_size must be at least 1, got {batch_size}")
    b = prompt.shape[0]

    def patch(tensor: torch.Tensor, name: str, rows: list[int], args: list[float]) -> torch.Tensor:
        factors = torch.zeros(tensor.shape[0], dtype=tensor.dtype, device=tensor.device)
        row = (torch.tensor(rows).repeat_interleave(b) * b + torch.arange(b).repeat(len(rows))).to(tensor.device)
        factors[row] = torch.tensor(args, dtype=tensor.dtype).repeat_interleave(b).to(tensor.device)
        shape = (-1,) + (1,) * (tensor.dim() - 1)
        return tensor + factors.view(shape) * vector.to(tensor.device, tensor.dtype)

    variants = [(hook_name, float(scale)) for scale in scales]
    return torch.stack(_run_chunks(bridge, prompt, variants, patch, metric, batch_size, None, logit_positions))
