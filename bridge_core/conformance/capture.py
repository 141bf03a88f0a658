"""Reference tensors from HF itself: attention calls captured at the AttentionInterface, and module
inputs/outputs recorded with plain torch hooks, always on the untouched eager deep copy.

The capture function is registered once under `CAPTURE_NAME`; it records what HF handed it, then
delegates to the calling module's own module-level `eager_attention_forward`.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import field
from typing import Any

import torch
from torch import nn

from .. import transformers_internals as hf
from ..records import record

CAPTURE_NAME = "bridge_core_conformance_capture"


@record
class AttentionCall:
    """One call HF made to the attention interface: `[b, heads, s, d]` q/k/v, mask, kwargs, results."""

    module_name: str
    query: torch.Tensor
    key: torch.Tensor
    value: torch.Tensor
    mask: torch.Tensor | None
    kwargs: dict[str, Any]
    output: torch.Tensor  # [b, s, heads, d], as eager returns it
    weights: torch.Tensor  # [b, heads, q, k] probabilities
    tensors: dict[str, torch.Tensor] = field(default_factory=dict)  # tensor kwargs (T5: position_bias)


@record
class Recording:
    """What one reference forward produced: attention calls and module inputs/outputs by name."""

    calls: dict[str, list[AttentionCall]] = field(default_factory=dict)
    inputs: dict[str, torch.Tensor] = field(default_factory=dict)
    outputs: dict[str, torch.Tensor] = field(default_factory=dict)
    # the last call of a module called more than once (a norm in two roles: its final call)
    last_inputs: dict[str, torch.Tensor] = field(default_factory=dict)
    last_outputs: dict[str, torch.Tensor] = field(default_factory=dict)
    logits: torch.Tensor | None = None

    def call(self, module_name: str) -> AttentionCall | None:
        found = self.calls.get(module_name)
        return found[0] if found else None


_ACTIVE: list[tuple[Recording, dict[int, str]]] = []


def _own_eager(module: nn.Module):
    own = hf.model_eager_function(module)
    if own is None:
        raise RuntimeError(f"{type(module).__module__} has no module-level eager_attention_forward")
    return own


def capture_attention(module: nn.Module, query, key, value, attention_mask, **kwargs):
    """Registered attention function: record HF's arguments, then run the module's own eager code."""
    output, weights = _own_eager(module)(module, query, key, value, attention_mask, **kwargs)
    if _ACTIVE:
        recording, names = _ACTIVE[-1]
        name = names.get(id(module), type(module).__name__)
        plain = {k: v for k, v in kwargs.items() if not isinstance(v, torch.Tensor)}
        tensors = {k: v.detach().clone() for k, v in kwargs.items() if isinstance(v, torch.Tensor)}
        call = AttentionCall(
            name, query.detach(), key.detach(), value.detach(), attention_mask, plain, output, weights, tensors
        )
        recording.calls.setdefault(name, []).append(call)
    return output, weights


def capture_mask(*args: Any, **kwargs: Any):
    """The eager mask function, so the captured eager attention sees the masks eager would."""
    return hf.mask_function("eager")(*args, **kwargs)


hf.register_implementation(CAPTURE_NAME, capture_attention, capture_mask)


def _first_tensor(args: tuple, kwargs: dict) -> torch.Tensor | None:
    if args and isinstance(args[0], torch.Tensor):
        return args[0]
    if isinstance(kwargs.get("hidden_states"), torch.Tensor):
        return kwargs["hidden_states"]
    return next((v for v in kwargs.values() if isinstance(v, torch.Tensor)), None)


def _main_output(output: Any) -> torch.Tensor:
    return output if isinstance(output, torch.Tensor) else output[0]


@contextmanager
def eager_capture(model: nn.Module) -> Iterator[None]:
    """Switch every config object of `model` (the deep copy only) to the capture function."""
    with hf.attention_implementation_switched(hf.config_objects(model), CAPTURE_NAME):
        yield


def record(
    model: nn.Module,
    modules: list[str],
    capture: bool = True,
    edits: list[tuple[str, str, Any]] = (),
    **forward_kwargs: Any,
) -> Recording:
    """Run `model(**forward_kwargs)` recording the first input and output of each named module, the
    attention interface calls (`capture`: eager through the capture function), with optional
    `edits`: (module name, "pre" | "post", function) plain torch hooks that change the forward."""
    recording = Recording()
    names = {id(m): n for n, m in model.named_modules()}
    with ExitStack() as stack:
        for name in modules:
            stack.callback(
                model.get_submodule(name).register_forward_hook(_recorder(recording, name), with_kwargs=True).remove
            )
        for name, where, fn in edits:
            module = model.get_submodule(name)
            if where == "pre":
                handle = module.register_forward_pre_hook(fn, with_kwargs=True)
            else:
                handle = module.register_forward_hook(fn)
            stack.callback(handle.remove)
        if capture:
            stack.enter_context(eager_capture(model))
        _ACTIVE.append((recording, names))
        stack.callback(_ACTIVE.pop)
        with torch.no_grad():
            recording.logits = model(**forward_kwargs).logits
    return recording


def _recorder(recording: Recording, name: str):
    def hook(module: nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
        first = name not in recording.outputs
        inputs, outputs = (
            (recording.inputs, recording.outputs) if first else (recording.last_inputs, recording.last_outputs)
        )
        x = _first_tensor(args, kwargs)
        if x is not None:
            inputs[name] = x.detach().clone()
        outputs[name] = _main_output(output).detach().clone()

    return hook
