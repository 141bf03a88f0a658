"""A snapshot of everything a bridge promises to leave as found (docs/architecture.md#invariants): parameters and
buffers bitwise, the module tree, every config object, and every hook dictionary.

Taken by the runner before the bridge is built; `differences()` lists what changed since.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..records import record
from ..transformers_internals import attention_implementation, config_objects

_HOOK_DICTS = (
    "_forward_hooks",
    "_forward_pre_hooks",
    "_backward_hooks",
    "_backward_pre_hooks",
    "_forward_hooks_with_kwargs",
    "_forward_pre_hooks_with_kwargs",
    "_forward_hooks_always_called",
    "_state_dict_hooks",
    "_state_dict_pre_hooks",
    "_load_state_dict_pre_hooks",
    "_load_state_dict_post_hooks",
)


def hook_state(model: nn.Module) -> dict[str, tuple]:
    """Every hook registered on the model's modules and parameters, and torch's global module hooks."""
    state: dict[str, tuple] = {}
    for name, module in model.named_modules():
        for attr in _HOOK_DICTS:
            hooks = getattr(module, attr, None)
            if hooks:
                state[f"{name or '<root>'}.{attr}"] = tuple((k, id(v)) for k, v in hooks.items())
    for name, param in model.named_parameters():
        if getattr(param, "_backward_hooks", None):
            state[f"{name}._backward_hooks"] = tuple(param._backward_hooks)
    from torch.nn.modules import module as torch_module

    for attr in ("_global_forward_hooks", "_global_forward_pre_hooks", "_global_backward_hooks"):
        hooks = getattr(torch_module, attr, None)
        if hooks:
            state[f"torch.{attr}"] = tuple(hooks)
    return state


def config_state(model: nn.Module) -> list[dict[str, Any]]:
    """`to_dict()` of every config object, with the attention implementation it holds."""
    return [
        {**config.to_dict(), "attn_implementation": attention_implementation(config)}
        for config in config_objects(model)
    ]


@record
class ModelSnapshot:
    tensors: dict[str, tuple[int, torch.Tensor, bool]]  # name -> (id, copy, requires_grad)
    tree: list[tuple[str, str, int, bool]]  # name, class, id, training
    configs: list[dict[str, Any]]
    hooks: dict[str, tuple]

    @classmethod
    def take(cls, model: nn.Module) -> ModelSnapshot:
        tensors = {
            f"{kind}:{name}": (id(t), t.detach().clone(), t.requires_grad)
            for kind, items in (("param", model.named_parameters()), ("buffer", model.named_buffers()))
            for name, t in items
        }
        tree = [(n, type(m).__qualname__, id(m), m.training) for n, m in model.named_modules()]
        return cls(tensors, tree, config_state(model), hook_state(model))

    def differences(self, model: nn.Module) -> list[str]:
        """What differs now from the snapshot, one line each (empty: left as found)."""
        now = ModelSnapshot.take(model)
        out: list[str] = []
        for name in sorted(set(self.tensors) | set(now.tensors)):
            before, after = self.tensors.get(name), now.tensors.get(name)
            if before is None or after is None:
                out.append(f"{name} {'appeared' if before is None else 'disappeared'}")
            elif before[0] != after[0]:
                out.append(f"{name} was replaced by another tensor object")
            elif before[1].dtype != after[1].dtype or not torch.equal(before[1], after[1]):
                out.append(f"{name} changed value or dtype")
            elif before[2] != after[2]:
                out.append(f"{name} requires_grad changed")
        if self.tree != now.tree:
            changed = set(self.tree) ^ set(now.tree)
            out.append(f"module tree changed ({len(changed)} entries differ, e.g. {sorted(changed)[0][0]!r})")
        if self.configs != now.configs:
            for before, after in zip(self.configs, now.configs, strict=False):
                keys = sorted(k for k in set(before) | set(after) if before.get(k) != after.get(k))
                if keys:
                    out.append(f"config changed: {', '.join(keys[:5])}")
            if len(self.configs) != len(now.configs):
                out.append("the number of config objects changed")
        for key in sorted(set(self.hooks) | set(now.hooks)):
            if self.hooks.get(key) != now.hooks.get(key):
                out.append(f"hooks changed on {key}")
        return out
