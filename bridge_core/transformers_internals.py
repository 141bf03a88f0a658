"""Every place bridge_core touches transformers internals, in one module (decision 0010).

What it holds: reading, switching and restoring the attention implementation a config object holds;
looking up the attention and mask functions transformers registered under a name; registering a
function under a name with `AttentionInterface` / `AttentionMaskInterface`; and finding every config
object a model holds (`config_objects`); the tensor-parallel plan and process group a model loaded with
`tp_plan` records (`tensor_parallel_plan`).

Who calls it: `bridge.attention` (eager attention on demand), `bridge.bridge` and
`bridge.processing` (config objects), `conformance.capture` (the capturing reference forward) and
`conformance.snapshot` (the left-as-found snapshot). No other module of bridge_core or plugins names a
private transformers attribute; tests/core/test_transformers_internals.py enforces that.

Written for transformers 5.x as `pyproject.toml` declares it (`transformers>=5.20,<6`, decision 0002),
read against the 5.24 source. The private attributes used here are `PreTrainedConfig`'s
`_attn_implementation_internal` and `PreTrainedModel`'s `_tp_plan` and `_device_mesh`; everything else is
public API. When a transformers release moves one
of them, this module is the only one to change, and the test above names what went missing.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any

from torch import nn
from transformers import AttentionInterface, PreTrainedConfig
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

# The attribute behind `config._attn_implementation`, written directly (see `set_attention_implementation`).
IMPLEMENTATION_ATTRIBUTE = "_attn_implementation_internal"

# The module-level function a transformers modeling file defines for eager attention; models pass it
# to `AttentionInterface` as the default when their config names "eager".
MODEL_EAGER_FUNCTION = "eager_attention_forward"


# ------------------------------------------------------------------ attention implementation of a config


def attention_implementation(config: Any) -> str | None:
    """The attention implementation `config` holds now ("sdpa", "eager", a registered name, or None)."""
    return getattr(config, IMPLEMENTATION_ATTRIBUTE)


def set_attention_implementation(config: Any, name: str | None) -> None:
    """Make `config` (and only it) name `name`, with no validation: restorable to any earlier value.

    Not the `_attn_implementation` setter: it also overwrites every sub-config, so restoring a parent
    after its sub-configs would clobber theirs. Not `PreTrainedModel.set_attn_implementation`: it works
    on a model, checks the name (kernels, hub look-ups) and logs warnings for some models.
    """
    setattr(config, IMPLEMENTATION_ATTRIBUTE, name)


@contextmanager
def attention_implementation_switched(configs: Iterable[Any], name: str) -> Iterator[None]:
    """Every config in `configs` names `name` for the duration; each gets back what it held, in `finally`."""
    before: list[tuple[Any, str | None]] = []
    try:
        for config in configs:
            before.append((config, attention_implementation(config)))
            set_attention_implementation(config, name)
        yield
    finally:
        for config, held in reversed(before):
            set_attention_implementation(config, held)


# ------------------------------------------------------------------ registered functions


def attention_function(name: str) -> Callable[..., Any]:
    """The attention function registered under `name` (KeyError when none is); "eager" is never
    registered: see `model_eager_function`."""
    return ALL_ATTENTION_FUNCTIONS[name]


def model_eager_function(module: nn.Module) -> Callable[..., Any] | None:
    """The eager attention function of the modeling file that defines `module`'s class, the one the
    model itself calls for "eager" (None when the file defines none)."""
    return getattr(sys.modules.get(type(module).__module__), MODEL_EAGER_FUNCTION, None)


def mask_function(name: str | None) -> Callable[..., Any] | None:
    """The mask function transformers builds masks with for implementation `name`, None when none is
    registered under it (transformers then builds no mask)."""
    # The mapping lookup transformers' own mask builders use (`ALL_MASK_ATTENTION_FUNCTIONS[name]`).
    return ALL_MASK_ATTENTION_FUNCTIONS.get(name) if name is not None else None


def register_implementation(name: str, attention: Callable[..., Any], mask: Callable[..., Any]) -> None:
    """Register `attention` and `mask` under `name`, for every model whose config names it."""
    AttentionInterface.register(name, attention)
    AttentionMaskInterface.register(name, mask)


@contextmanager
def temporary_implementation(
    name: str, attention: Callable[..., Any], mask: Callable[..., Any] | None = None
) -> Iterator[None]:
    """`attention` (and `mask`, the mask builder transformers uses for `name`) registered under `name` while
    the block runs, then removed again (the drafter's probe: bridge_core/drafting/probe.py), so the process's
    attention registries are left as found."""
    AttentionInterface.register(name, attention)
    if mask is not None:
        AttentionMaskInterface.register(name, mask)
    try:
        yield
    finally:
        # transformers has no public way to unregister; its registries are these class-level mappings
        AttentionInterface._global_mapping.pop(name, None)
        if mask is not None:
            AttentionMaskInterface._global_mapping.pop(name, None)


# ------------------------------------------------------------------ config objects of a model


def config_objects(model: nn.Module) -> list[PreTrainedConfig]:
    """Every config object of `model`, once each, in a fixed order: the model's, then the ones its
    modules hold (T5's stacks hold their own copies), each followed by its sub-configs at any depth
    (a composite config's text/vision configs, whether or not a module holds them)."""
    found: dict[int, PreTrainedConfig] = {}

    def add(config: Any) -> None:
        if not isinstance(config, PreTrainedConfig) or id(config) in found:
            return
        found[id(config)] = config
        for key in config.sub_configs:
            add(getattr(config, key, None))
        # Sub-configs a config holds without declaring them in `sub_configs` (older composite models).
        for value in vars(config).values():
            for item in value if isinstance(value, list | tuple) else (value,):
                add(item)

    add(getattr(model, "config", None))
    for module in model.modules():
        add(getattr(module, "config", None))
    return list(found.values())


# ------------------------------------------------------------------ tensor parallelism (`tp_plan`)


def tensor_parallel_plan(model: nn.Module) -> tuple[dict[str, str], Any] | None:
    """`(plan, group)` of a model loaded with `tp_plan`: module-path patterns (`*` for a layer number)
    to style names ("colwise", "rowwise", ...), and the process group of its "tp" mesh dimension; None
    for a model that is not tensor-parallel (or runs on a single rank)."""
    # `_tp_plan` and `_device_mesh` are what `from_pretrained(tp_plan=...)` records on the model (5.24).
    plan = getattr(model, "_tp_plan", None)
    mesh = getattr(model, "_device_mesh", None)
    if not plan or mesh is None:
        return None
    tp_mesh = mesh["tp"] if "tp" in (mesh.mesh_dim_names or ()) else mesh
    if tp_mesh.size() == 1:
        return None
    return dict(plan), tp_mesh.get_group()
