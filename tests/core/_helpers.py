"""Tiny random GPT-2s, token batches with padding, and model snapshots for the core tests.

Every reference here is independent of the bridge: the untouched HF model (a deep copy taken before
the bridge is built), plain PyTorch hooks on that copy, or arithmetic on raw HF parameters.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import GPT2Config, GPT2LMHeadModel

from bridge_core import Bridge

VOCAB = 97
N_POSITIONS = 40
BATCH = 3
SEQ = 9

# Tiny GPT-2 shapes that are NOT the spec's test_config: other head counts, d_head 8 and 16,
# n_inner None (d_mlp = 4 * d_model) and set, 1 and 3 layers.
TINY_SHAPES: dict[str, dict[str, Any]] = {
    "1L-h4-dh8-inner_none": dict(n_layer=1, n_embd=32, n_head=4, n_inner=None),
    "3L-h3-dh16-inner80": dict(n_layer=3, n_embd=48, n_head=3, n_inner=80),
    "2L-h8-dh8-inner_none": dict(n_layer=2, n_embd=64, n_head=8, n_inner=None),
    "2L-h2-dh16-inner48": dict(n_layer=2, n_embd=32, n_head=2, n_inner=48),
}
SHAPE_IDS = list(TINY_SHAPES)
IMPLEMENTATIONS = ["sdpa", "eager"]
PADDINGS = ["none", "left", "right"]


def tiny_gpt2(shape: str = "2L-h2-dh16-inner48", attn_implementation: str = "sdpa", seed: int = 0) -> GPT2LMHeadModel:
    """A random GPT-2 in eval mode, every parameter perturbed so that biases and norm weights are not 0/1."""
    config = GPT2Config(
        vocab_size=VOCAB,
        n_positions=N_POSITIONS,
        bos_token_id=VOCAB - 1,
        eos_token_id=VOCAB - 1,
        attn_implementation=attn_implementation,
        **TINY_SHAPES[shape],
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = GPT2LMHeadModel(config)
        with torch.no_grad():
            for param in model.parameters():
                param.add_(torch.randn_like(param) * 0.1)
    return model.eval()


def bridge_and_reference(
    shape: str = "2L-h2-dh16-inner48", attn_implementation: str = "sdpa", seed: int = 0
) -> tuple[Bridge, GPT2LMHeadModel]:
    """A bridge over a tiny GPT-2 and an untouched deep copy of that model, copied before the bridge exists.

    The spec is named, so these tests do not depend on other specs being registered (finding the spec
    from the model is tested in test_registry_and_plugins.py).
    """
    model = tiny_gpt2(shape, attn_implementation, seed)
    reference = copy.deepcopy(model)
    return Bridge.from_hf(model, spec="gpt2"), reference


def eager_copy(model: nn.Module) -> nn.Module:
    """An untouched deep copy running HF's own eager attention (for `output_attentions=True` on it only)."""
    clone = copy.deepcopy(model)
    clone.set_attn_implementation("eager")
    assert clone.config._attn_implementation == "eager"
    return clone


def tokens(batch: int = BATCH, seq: int = SEQ, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, VOCAB, (batch, seq), generator=torch.Generator().manual_seed(seed))


def padding_mask(kind: str, batch: int = BATCH, seq: int = SEQ) -> torch.Tensor | None:
    """None (no padding), or a 1/0 mask padding rows 0 and 1 on the left or on the right (row 2 is full)."""
    if kind == "none":
        return None
    mask = torch.ones(batch, seq, dtype=torch.long)
    if kind == "left":
        mask[0, :3] = 0
        mask[1, :1] = 0
    elif kind == "right":
        mask[0, -3:] = 0
        mask[1, -1:] = 0
    else:
        raise ValueError(kind)
    return mask


def real_positions(mask: torch.Tensor | None, batch: int = BATCH, seq: int = SEQ) -> torch.Tensor:
    """`[batch, seq]` bool: True at real (non-padded) token positions."""
    return torch.ones(batch, seq, dtype=torch.bool) if mask is None else mask.bool()


def hf_logits(model: nn.Module, toks: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=toks, attention_mask=mask).logits


def capture_outputs(model: nn.Module, toks: torch.Tensor, mask: torch.Tensor | None, paths: list[str]) -> dict:
    """Outputs (first element of a tuple) of HF modules by path, captured with plain forward hooks."""
    modules = dict(model.named_modules())
    captured: dict[str, torch.Tensor] = {}
    handles = []
    for path in paths:

        def save(module, args, output, path=path):
            captured[path] = (output[0] if isinstance(output, tuple) else output).detach().clone()

        handles.append(modules[path].register_forward_hook(save))
    try:
        with torch.no_grad():
            model(input_ids=toks, attention_mask=mask)
    finally:
        for handle in handles:
            handle.remove()
    return captured


def gelu_new(x: torch.Tensor) -> torch.Tensor:
    """GPT-2's activation written out by hand."""
    return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * torch.pow(x, 3.0))))


def assert_close_at(actual: torch.Tensor, expected: torch.Tensor, where: torch.Tensor, atol: float = 1e-5) -> None:
    """Compare `[batch, seq, ...]` tensors only where `where` (`[batch, seq]` bool) is True."""
    torch.testing.assert_close(actual[where], expected[where], rtol=0, atol=atol)


# --------------------------------------------------------------------------- left as found
HOOK_DICTS = (
    "_forward_hooks",
    "_forward_hooks_with_kwargs",
    "_forward_hooks_always_called",
    "_forward_pre_hooks",
    "_forward_pre_hooks_with_kwargs",
    "_backward_hooks",
    "_backward_pre_hooks",
    "_state_dict_hooks",
    "_state_dict_pre_hooks",
    "_load_state_dict_pre_hooks",
    "_load_state_dict_post_hooks",
)
GLOBAL_HOOK_DICTS = (
    "_global_forward_hooks",
    "_global_forward_pre_hooks",
    "_global_backward_hooks",
    "_global_backward_pre_hooks",
    "_global_forward_hooks_always_called",
)


@dataclass
class ModelSnapshot:
    """What "left as found" compares (docs/architecture.md#invariants)."""

    tensors: dict[str, torch.Tensor]
    tensor_objects: dict[str, int]
    requires_grad: dict[str, bool]
    tensor_hooks: dict[str, Any]
    modules: list[tuple[str, type, int, bool]]
    hooks: dict[tuple[str, str], list]
    global_hooks: dict[str, list]
    config: dict[str, Any]
    attn_implementation: str
    config_objects: list[tuple[str, str]]


def snapshot(model: nn.Module) -> ModelSnapshot:
    tensors, objects, grads, tensor_hooks = {}, {}, {}, {}
    for name, tensor in [*model.named_parameters(), *model.named_buffers()]:
        tensors[name] = tensor.detach().clone()
        objects[name] = id(tensor)
        grads[name] = tensor.requires_grad
        tensor_hooks[name] = dict(getattr(tensor, "_backward_hooks", None) or {})
    modules = [(name, type(m), id(m), m.training) for name, m in model.named_modules()]
    hooks = {
        (name, attr): list(getattr(m, attr, {}).items())
        for name, m in model.named_modules()
        for attr in HOOK_DICTS
        if hasattr(m, attr)
    }
    global_hooks = {attr: list(getattr(nn.modules.module, attr).items()) for attr in GLOBAL_HOOK_DICTS}
    configs = [(name, m.config._attn_implementation) for name, m in model.named_modules() if hasattr(m, "config")]
    return ModelSnapshot(
        tensors=tensors,
        tensor_objects=objects,
        requires_grad=grads,
        tensor_hooks=tensor_hooks,
        modules=modules,
        hooks=hooks,
        global_hooks=global_hooks,
        config=copy.deepcopy(model.config.to_dict()),
        attn_implementation=model.config._attn_implementation,
        config_objects=configs,
    )


def assert_as_found(model: nn.Module, before: ModelSnapshot) -> None:
    """Parameters bitwise, module tree, config and every hook dictionary exactly as in `before`."""
    after = snapshot(model)
    assert after.modules == before.modules, "module tree changed"
    assert after.tensor_objects == before.tensor_objects, "a parameter or buffer was replaced"
    for name, value in before.tensors.items():
        assert torch.equal(after.tensors[name], value), f"{name} changed"
    assert after.requires_grad == before.requires_grad
    assert after.tensor_hooks == before.tensor_hooks, "a tensor hook is left on a parameter"
    leftover = {key: value for key, value in after.hooks.items() if value != before.hooks.get(key)}
    assert not leftover, f"hooks left attached: {leftover}"
    assert after.global_hooks == before.global_hooks, "a global module hook is left attached"
    assert after.attn_implementation == before.attn_implementation
    assert after.config_objects == before.config_objects
    assert after.config == before.config


def fired_counts(bridge: Bridge, toks: torch.Tensor, mask: torch.Tensor | None = None) -> dict[str, int]:
    counts: dict[str, int] = {}

    def count(tensor, hook):
        counts[hook.name] = counts.get(hook.name, 0) + 1

    with torch.no_grad():
        bridge.run_with_hooks(toks, fwd_hooks=[(lambda name: True, count)], attention_mask=mask)
    return counts


# --------------------------------------------------------------------------- a third-party plugin distribution
FAKE_DIST = "fake-bridge-plugins"


def write_fake_distribution(root: Path, suffix: str) -> tuple[Path, list[str]]:
    """A distribution in `root` (put it on sys.path) with two `bridge_core` entry points: `broken` raises
    ImportError on import, `good` registers the norm kind `fake_good_norm`. Returns root and module names."""
    suffix = "".join(ch if ch.isalnum() else "_" for ch in suffix)
    broken, good = f"fake_broken_plugin_{suffix}", f"fake_good_plugin_{suffix}"
    info = root / "fake_bridge_plugins-1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {FAKE_DIST}\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(f"[bridge_core]\nbroken = {broken}\ngood = {good}\n")
    (root / f"{broken}.py").write_text('raise ImportError("this plugin is deliberately broken")\n')
    (root / f"{good}.py").write_text(
        "from bridge_core.kinds import NormKind\n"
        "from bridge_core.plugin_host import hookimpl\n\n\n"
        "@hookimpl\n"
        "def bridge_core_norm_kinds():\n"
        '    return [NormKind("fake_good_norm", centered=False)]\n'
    )
    return root, [broken, good]
