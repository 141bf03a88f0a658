"""Eager attention on demand, through transformers' AttentionInterface (docs/architecture.md#attention-internals).

One function name, `bridge_core`, is registered once at import with `AttentionInterface` and
`AttentionMaskInterface`. While a forward needs `hook_attn_scores` / `hook_pattern`, every config
object of the model is switched to that name (restored in `finally`). The function then looks the
calling module up: a module with an internal hook runs the eager computation below with its hooks;
any other module is handed to the implementation the config had (sdpa, eager, ...), unchanged.
Routes live in a context variable, so a thread (or task) only ever sees its own calls' routes; the
config switch is shared by threads and counted, and a thread with no route gets the original.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from types import MappingProxyType
from typing import Any

import torch
from torch import nn

from .. import transformers_internals as hf
from ..records import record

IMPLEMENTATION_NAME = "bridge_core"

TensorHook = Callable[[torch.Tensor], torch.Tensor]


@record
class AttentionRoute:
    """What the bridge wants from one attention module during one forward."""

    module: nn.Module
    softmax_float32: bool
    on_scores: TensorHook | None = None
    on_pattern: TensorHook | None = None
    on_rot_q: TensorHook | None = None  # [b, q, h, d] after rotary (and q-norm), current positions
    on_rot_k: TensorHook | None = None  # [b, q, n_kv, d]: the keys of the current positions

    @property
    def needs_eager(self) -> bool:
        return self.on_scores is not None or self.on_pattern is not None


# This context's routes: id(attention module) -> (the bridge call's owner, its route).
_ROUTES: ContextVar[Mapping[int, tuple[object, AttentionRoute]]] = ContextVar(
    "bridge_core_routes", default=MappingProxyType({})
)
# id(config) -> [implementation it had, how many switches hold it now]. A record outlives its switch:
# a thread that read the switched name just before the last switch ended still finds the original.
_ORIGINALS: dict[int, list[Any]] = {}
_SWITCH_LOCK = threading.Lock()


def _original_name(module: nn.Module) -> str:
    config = getattr(module, "config", None)
    entry = _ORIGINALS.get(id(config)) if config is not None else None
    return entry[0] if entry is not None else "eager"


def _route(module: nn.Module) -> AttentionRoute | None:
    entry = _ROUTES.get().get(id(module))
    return entry[1] if entry is not None else None


def _original_function(module: nn.Module, name: str) -> Callable[..., Any]:
    if name == "eager" or name is None:
        # The model's own module-level eager function carries its family's quirks.
        own = hf.model_eager_function(module)
        if own is not None:
            return own
        return _eager
    return hf.attention_function(name)


def bridge_attention(module: nn.Module, query, key, value, attention_mask, **kwargs):
    """The registered attention function: eager with hooks for routed modules, else the original."""
    route = _route(module)
    if route is not None:
        query, key = _rotated(route, query, key)
    if route is None or not route.needs_eager:
        original = _original_function(module, _original_name(module))
        return original(module, query, key, value, attention_mask, **kwargs)
    return _eager(module, query, key, value, attention_mask, route=route, **kwargs)


def _rotated(route: AttentionRoute, query: torch.Tensor, key: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Run `hook_rot_q` / `hook_rot_k` on the current positions, shown `[b, pos, heads, d]`.

    Edits are written into the tensors themselves: the keys HF hands over are the KV cache's own
    storage, so an edit to the current keys persists into the cache, as in HookedTransformer.
    """
    q_len = query.shape[2]
    if route.on_rot_q is not None:
        shown = query.transpose(1, 2)
        new = route.on_rot_q(shown)
        if new is not shown:
            query = new.transpose(1, 2)
    if route.on_rot_k is not None:
        shown = key[:, :, key.shape[2] - q_len :].transpose(1, 2)
        new = route.on_rot_k(shown)
        if new is not shown:
            shown.copy_(new)
    return query, key


def bridge_mask(*args, config=None, **kwargs):
    """The registered mask function: the original implementation's, with all its arguments."""
    entry = _ORIGINALS.get(id(config)) if config is not None else None
    name = entry[0] if entry is not None else "eager"
    function = hf.mask_function(name) or hf.mask_function("eager")
    return function(*args, config=config, **kwargs)


def as_additive_mask(
    mask: torch.Tensor | None, module: nn.Module, q_len: int, k_len: int, dtype: torch.dtype, device
) -> torch.Tensor | None:
    """Whatever mask the original implementation's mask function produced, as an additive mask.

    `None` means what it means to sdpa: causal (top-left aligned) when the module is causal and
    there is more than one query, no mask otherwise.
    """
    if mask is None:
        if getattr(module, "is_causal", False) and q_len > 1:
            allowed = torch.ones(q_len, k_len, dtype=torch.bool, device=device).tril()
            return torch.where(allowed, 0.0, torch.finfo(dtype).min).to(dtype)[None, None]
        return None
    if mask.dtype == torch.bool:
        zero = torch.zeros((), dtype=dtype, device=mask.device)
        return torch.where(mask, zero, torch.finfo(dtype).min)
    return mask


def softmax_with_sinks(scores: torch.Tensor, sinks: torch.Tensor | None, dtype: torch.dtype | None) -> torch.Tensor:
    """softmax over the keys, with one extra logit per head (`sinks`, `[heads]`) in every row when given
    (GPT-OSS, Granite SWA): the probabilities of the real keys, which then sum to less than 1."""
    if sinks is None:
        return nn.functional.softmax(scores, dim=-1, dtype=dtype)
    sink = sinks.to(scores.dtype).reshape(1, -1, 1, 1).expand(*scores.shape[:-1], 1)
    combined = torch.cat([scores, sink], dim=-1)
    combined = combined - combined.max(dim=-1, keepdim=True).values  # as HF's eager: no overflow in exp
    return nn.functional.softmax(combined, dim=-1, dtype=dtype)[..., :-1]


def _eager(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    softcap: float | None = None,
    position_bias: torch.Tensor | None = None,
    route: AttentionRoute | None = None,
    s_aux: torch.Tensor | None = None,
    **_: Any,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Eager attention with the bridge's score and pattern hooks (same op order as HF's eager)."""
    groups = query.shape[1] // key.shape[1]
    if groups > 1:
        key = key.repeat_interleave(groups, dim=1)
        value = value.repeat_interleave(groups, dim=1)
    if scaling is None:
        scaling = query.shape[-1] ** -0.5
    scores = torch.matmul(query, key.transpose(-1, -2)) * scaling
    if softcap is not None:
        scores = torch.tanh(scores / softcap) * softcap
    if position_bias is not None:
        scores = scores + position_bias
    q_len, k_len = query.shape[2], key.shape[2]
    mask = as_additive_mask(attention_mask, module, q_len, k_len, scores.dtype, scores.device)
    if mask is not None:
        scores = scores + mask[:, :, :, :k_len]
    if route is not None and route.on_scores is not None:
        scores = route.on_scores(scores)
    float32 = route is not None and route.softmax_float32
    pattern = softmax_with_sinks(scores, s_aux, torch.float32 if float32 else None).to(value.dtype)
    if route is not None and route.on_pattern is not None:
        pattern = route.on_pattern(pattern)
    weights = nn.functional.dropout(pattern, p=dropout, training=module.training)
    output = torch.matmul(weights, value).transpose(1, 2).contiguous()
    return output, pattern


@contextmanager
def attention_routed(configs: list[Any], routes: list[AttentionRoute], owner: object) -> Iterator[None]:
    """Install `routes` in this context (replacing any of `owner`'s: a nested call of the same bridge) and,
    when there are routes, switch `configs` to the bridge's implementation, for the duration."""
    mine = {key: entry for key, entry in _ROUTES.get().items() if entry[0] is not owner}
    for route in routes:
        if id(route.module) in mine:
            raise RuntimeError(
                f"attention module {type(route.module).__name__} is already routed by another bridge's call "
                "in this thread (two bridges over one model, one called from a hook of the other)"
            )
        mine[id(route.module)] = (owner, route)
    token = _ROUTES.set(mine)
    switched: list[Any] = []
    try:
        if routes:
            _switch(configs, switched)
        yield
    finally:
        _unswitch(switched)
        _ROUTES.reset(token)


def _switch(configs: list[Any], switched: list[Any]) -> None:
    with _SWITCH_LOCK:  # threads share config objects: count the switches holding each
        for config in configs:
            entry = _ORIGINALS.get(id(config))
            if entry is None or entry[1] == 0:
                _ORIGINALS[id(config)] = [hf.attention_implementation(config), 1]
                hf.set_attention_implementation(config, IMPLEMENTATION_NAME)
            else:  # already switched by an enclosing call or another thread: share it
                entry[1] += 1
            switched.append(config)


def _unswitch(switched: list[Any]) -> None:
    with _SWITCH_LOCK:
        for config in switched:
            entry = _ORIGINALS[id(config)]
            entry[1] -= 1
            if entry[1] == 0:
                hf.set_attention_implementation(config, entry[0])


hf.register_implementation(IMPLEMENTATION_NAME, bridge_attention, bridge_mask)
