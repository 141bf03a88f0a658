"""One observed forward of a tiny model: every module's inputs, keyword arguments and outputs, and every
call transformers makes to its attention function.

Attention calls are seen through a probing function registered with the public `AttentionInterface`
under a private name; the tiny model (the drafter's own, never a user's) is switched to it with
`set_attn_implementation`, and the probe computes attention with the registered `sdpa` function.
Hooks are removed, and the probing function unregistered, when the forward ends.
"""

from __future__ import annotations

import contextlib
from dataclasses import field
from typing import Any

import torch
from torch import nn

from ..records import record
from ..transformers_internals import temporary_implementation

PROBE = "_bridge_core_draft_probe"
_ACTIVE: list[list[AttentionCall]] = []


@record
class Call:
    args: tuple
    kwargs: dict[str, Any]
    output: Any


@record
class AttentionCall:
    module: nn.Module
    query: torch.Tensor
    key: torch.Tensor
    value: torch.Tensor
    kwargs: dict[str, Any]
    output: torch.Tensor  # [batch, pos, heads, d_head], as returned to the module
    mask: torch.Tensor | None = None  # the attention mask the module passed


@record
class Observation:
    model: nn.Module
    inputs: dict[str, torch.Tensor]
    calls: dict[str, list[Call]] = field(default_factory=dict)
    attention: list[AttentionCall] = field(default_factory=list)
    logits: torch.Tensor | None = None

    def name(self, module: nn.Module) -> str:
        return next(n for n, m in self.model.named_modules() if m is module)

    def module(self, name: str) -> nn.Module:
        return self.model.get_submodule(name) if name else self.model

    def first(self, name: str) -> Call | None:
        found = self.calls.get(name)
        return found[0] if found else None

    def input(self, name: str, kwarg: str = "hidden_states") -> torch.Tensor | None:
        call = self.first(name)
        if call is None:
            return None
        if call.args and isinstance(call.args[0], torch.Tensor):
            return call.args[0]
        value = call.kwargs.get(kwarg)
        if isinstance(value, torch.Tensor):
            return value
        return next((v for v in call.kwargs.values() if isinstance(v, torch.Tensor) and v.is_floating_point()), None)

    def output(self, name: str, index: int = 0) -> torch.Tensor | None:
        call = self.first(name)
        return None if call is None else tensor_at(call.output, index)


def tensor_at(value: Any, index: int = 0) -> torch.Tensor | None:
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, (tuple, list)) and len(value) > index and isinstance(value[index], torch.Tensor):
        return value[index]
    return getattr(value, "last_hidden_state", None) if index == 0 else None


def same(a: Any, b: Any, atol: float = 1e-5) -> bool:
    """Equal tensors (the same shape and values up to float noise)."""
    if not isinstance(a, torch.Tensor) or not isinstance(b, torch.Tensor) or a.shape != b.shape:
        return False
    if a.dtype != b.dtype:
        a, b = a.float(), b.float()
    scale = max(1.0, float(b.abs().max())) if b.numel() else 1.0
    return bool(torch.allclose(a, b, atol=atol * scale, rtol=1e-4))


def _probe(module, query, key, value, attention_mask, **kwargs):
    from transformers import AttentionInterface

    mask = _selected_keys(attention_mask, kwargs.get("indices"), key.shape[-2])
    passed = {k: v for k, v in kwargs.items() if k != "indices"}
    if kwargs.get("softcap") is not None or kwargs.get("s_aux") is not None:
        output, weights = _reference(query, key, value, mask, passed)
    else:
        output, weights = AttentionInterface()["sdpa"](module, query, key, value, mask, **passed)
    if _ACTIVE:
        _ACTIVE[-1].append(
            AttentionCall(
                module,
                query.detach(),
                key.detach(),
                value.detach(),
                dict(kwargs),
                output.detach(),
                attention_mask.detach() if isinstance(attention_mask, torch.Tensor) else None,
            )
        )
    return output, weights


def _selected_keys(mask: Any, indices: Any, keys: int) -> Any:
    """`mask` narrowed to the keys a sparse-attention indexer selected per query (`indices`, [batch, q, top-k],
    DeepSeek V3.2 and kin), as the model's own eager / sdpa path applies them; `mask` itself when there is
    no selection. Only implementations outside eager / sdpa (this probe's) are handed the indices."""
    if not isinstance(indices, torch.Tensor):
        return mask
    batch, q = indices.shape[:2]
    keep = torch.zeros(batch, q, keys, dtype=torch.bool, device=indices.device)
    keep = keep.scatter(-1, indices.long(), True).unsqueeze(1)
    if mask is None:
        return keep & torch.ones(q, keys, dtype=torch.bool, device=indices.device).tril(keys - q)
    if mask.dtype == torch.bool:
        return mask[..., :keys] & keep
    return mask[..., :keys].masked_fill(~keep, torch.finfo(mask.dtype).min)


def _reference(query, key, value, mask, kwargs) -> tuple[torch.Tensor, torch.Tensor]:
    """Plain attention for what `sdpa` refuses (a softcap, sinks): GQA repeat, scale, softcap, mask, softmax
    (with the per-head sink logits `s_aux` as one more column, dropped after the softmax)."""
    from ..bridge.attention import softmax_with_sinks

    repeat = query.shape[1] // key.shape[1]
    key, value = key.repeat_interleave(repeat, 1), value.repeat_interleave(repeat, 1)
    scaling = kwargs.get("scaling") or query.shape[-1] ** -0.5
    scores = query @ key.transpose(-1, -2) * scaling
    if kwargs.get("softcap") is not None:
        scores = torch.tanh(scores / kwargs["softcap"]) * kwargs["softcap"]
    if mask is None:
        q, k = scores.shape[-2:]
        mask = torch.ones(q, k, dtype=torch.bool).tril(k - q)
    if mask.dtype == torch.bool:
        scores = scores.masked_fill(~mask[..., : scores.shape[-1]], float("-inf"))
    else:
        scores = scores + mask[..., : scores.shape[-1]]
    probs = softmax_with_sinks(scores.float(), kwargs.get("s_aux"), None).to(query.dtype)
    return (probs @ value).transpose(1, 2).contiguous(), probs


def _detach(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.detach().clone()  # what the module returned then: HF may edit it in place later (CTRL)
    if isinstance(value, tuple):
        return tuple(_detach(v) for v in value)
    if isinstance(value, list):
        return [_detach(v) for v in value]
    if isinstance(value, dict):
        return {k: _detach(v) for k, v in value.items()}
    return value


def observe(model: nn.Module, inputs: dict[str, torch.Tensor]) -> Observation:
    """Run `model` (the drafter's own tiny model) once under hooks and the attention probe."""
    from transformers.masking_utils import sdpa_mask

    # the probe's masks are sdpa's: a model that reads the mask itself (an indexer scoring keys) gets one
    with temporary_implementation(PROBE, _probe, sdpa_mask):
        return _observe(model, inputs)


def _observe(model: nn.Module, inputs: dict[str, torch.Tensor]) -> Observation:
    obs = Observation(model, inputs)
    # a model that cannot dispatch through AttentionInterface refuses: then no attention calls are seen
    with contextlib.suppress(Exception):
        model.set_attn_implementation(PROBE)
    handles = []
    for name, module in model.named_modules():

        def post(mod, args, kwargs, output, name=name):
            obs.calls.setdefault(name, []).append(Call(_detach(args), _detach(kwargs), _detach(output)))

        handles.append(module.register_forward_hook(post, with_kwargs=True))
    _ACTIVE.append(obs.attention)
    try:
        with torch.no_grad():
            try:
                out = model(**inputs, use_cache=False)
            except Exception as exc:
                from .errors import DraftingError

                raise DraftingError("observe", f"the probed forward failed: {type(exc).__name__}: {exc}") from None
        obs.logits = getattr(out, "logits", None)
    finally:
        _ACTIVE.pop()
        for handle in handles:
            handle.remove()
    return obs
