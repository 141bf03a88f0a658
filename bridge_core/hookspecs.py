"""The pluggy hook specifications: the whole contract between bridge-core and its plugins.

A plugin is a module or object with functions marked `@bridge_core.hookimpl` and named like the
stubs below, found through the `bridge_core` entry-point group (built-ins register the same way).
The plugin host (`bridge_core.plugin_host`) calls every hook on every plugin through pluggy and
collects the results (none is `firstresult`), so plugins add to each other; a name a plugin registers
that is already taken is that plugin's recorded failure (built-ins are collected first). What each
kind must compute is a Protocol in `bridge_core.kinds`.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    from torch import nn

    from .kinds import ActivationFunction, CrossAttentionKind, MaskFormat, Norm, Position, ScoreBiasKind
    from .spec.schema import Spec

hookspec = pluggy.HookspecMarker("bridge_core")


@hookspec
def bridge_core_spec_dirs() -> list[str | Path]:
    """Directories of YAML specs this plugin ships.

    :returns: Directories; every `*.yaml` file in them is registered, with this plugin's
        distribution recorded as its origin.

    Called once, when the registry loads. A plugin whose hook raises is recorded in
    `PluginHost.failures` and the other plugins' specs still load.
    """


@hookspec
def bridge_core_norm_kinds() -> list[Norm]:
    """Norm kinds this plugin provides (built-ins: `layernorm`, `rmsnorm`, `rmsnorm_offset`, ...).

    :returns: Objects fitting `bridge_core.kinds.Norm`, usually `NormKind` records. A spec selects
        one with `kind: NAME` on any norm.

    Called once, when the kinds are first needed. Each kind is checked against `Norm` then; one that
    does not fit, or a hook that raises, is recorded as this plugin's failure and left out.
    """


@hookspec
def bridge_core_activation_functions() -> dict[str, ActivationFunction]:
    """Activation functions by name (built-ins: transformers' `gelu_new`, `silu`, ...).

    :returns: A mapping from name to a function fitting `bridge_core.kinds.ActivationFunction` (one
        tensor in, one out). A spec selects one with `config.act_fn` or `block.mlp.act_fn`.

    Called once, when the kinds are first needed; each function is checked against the contract
    then. Conformance recomputes each MLP with the named function and compares with the model, so
    the name must mean exactly what the model does.
    """


@hookspec
def bridge_core_position_kinds() -> list[Position]:
    """Position kinds: how positions enter the model (built-ins: `learned`, `rotary`, `none`).

    :returns: Objects fitting `bridge_core.kinds.Position`, usually `PositionKind` records (a
        rotary kind gives `rotate`, fitting `Rotate`). A spec selects one with `pos_embed.kind`.

    Called once, when the kinds are first needed; each kind is checked against `Position` then.
    """


@hookspec
def bridge_core_mask_formats() -> list[MaskFormat]:
    """Mask formats: the attention mask a module takes when the core calls it on its own.

    :returns: `MaskFormat` records whose `build` fits `bridge_core.kinds.MaskBuilder` (built-ins:
        `2d`, `4d_additive`, `4d_bool`, `none`). A spec selects one with `call.mask_format`.

    Called once, when the kinds are first needed; each `build` is checked against `MaskBuilder` then.
    """


@hookspec
def bridge_core_score_bias_kinds() -> list[ScoreBiasKind]:
    """Score-bias kinds: additive attention-score biases (built-in `t5_buckets`, the example plugin's `alibi`).

    :returns: `ScoreBiasKind` records whose `compute` fits `bridge_core.kinds.ScoreBiasCompute` (and
        `hook_view` / `module_format`, when given, fit `BiasView` / `BiasFormat`). A spec selects one
        with `score_bias: {kind: NAME, params: {...}}` on a stack; `compute` receives the evaluated
        `params`.

    Called once, when the kinds are first needed; each record is checked against its contracts then.
    """


@hookspec
def bridge_core_cross_attention_kinds() -> list[CrossAttentionKind]:
    """Cross-attention kinds: where a decoder block's cross keys/values come from (built-in `encoder_output`).

    :returns: `CrossAttentionKind` records whose `block_kwargs` fits
        `bridge_core.kinds.CrossAttentionKwargs`. A spec selects one with `block.cross_attn.kind`.

    Called once, when the kinds are first needed; each record is checked against its contract then.
    """


@hookspec
def bridge_core_adapt_config(spec: Spec, hf_config: Any) -> dict[str, Any] | None:
    """Extra normalized config fields that a spec's expressions cannot say.

    :param spec: The validated spec being bound (pydantic's `Spec`, as `bridge.spec` gives it; a first
        bridge builds it for this hook only when some plugin implements the hook, since the binder
        itself may read a built-in spec as a plain tree: docs/decisions/0027-cold-start.md).
    :param hf_config: The model's HF config. Must not be modified.
    :returns: A mapping of field names to values, merged into `bridge.cfg.extra`, or None to add nothing.

    Called at bind time, once per bridge. A plugin that raises is skipped with a `PluginWarning` while
    another plugin's spec is built; for its own spec the build fails with a `PluginError` naming it.
    """


@hookspec
def bridge_core_prepare_model(spec: Spec, model: nn.Module) -> None:
    """Loading fix-ups a family needs.

    :param spec: The spec the model is loaded for (pydantic's validated `Spec`).
    :param model: The freshly loaded HF model; may be modified in place.

    Called after `Bridge.from_pretrained` / `Bridge.from_spec` (and conformance) load a model,
    before binding; never for a user's own model passed to `Bridge.from_hf`, which is never
    modified. A plugin that raises is skipped with a `PluginWarning` while another plugin's spec is
    built; for its own spec the build fails with a `PluginError` naming it.
    """
