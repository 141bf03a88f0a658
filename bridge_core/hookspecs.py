"""The pluggy hook specifications: the whole contract between bridge-core and its plugins.

A plugin is a module or object with functions marked `@bridge_core.hookimpl` and named like the
stubs below, found through the `bridge_core` entry-point group (built-ins register the same way).
Every hook is called on every plugin and the results are collected (none is `firstresult`), so
plugins add to each other; a name registered twice is a `PluginError` naming both plugins.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    from torch import nn

    from .kinds import ActivationFunction, CrossAttentionKind, MaskFormat, NormKind, PositionKind, ScoreBiasKind
    from .spec.schema import Spec

hookspec = pluggy.HookspecMarker("bridge_core")


@hookspec
def bridge_core_spec_dirs() -> list[str | Path]:
    """Directories of YAML specs this plugin ships.

    Called once when the registry loads. Return a list of directories; every `*.yaml` file in them
    is registered, with this plugin's distribution recorded as its origin.
    """


@hookspec
def bridge_core_norm_kinds() -> list[NormKind]:
    """Norm kinds this plugin provides (`layernorm`, `rmsnorm`, `rmsnorm_offset`, ...).

    Called once when the kinds are first needed. Return a list of `NormKind`; a spec selects one
    with `kind: NAME` on any norm.
    """


@hookspec
def bridge_core_activation_functions() -> dict[str, ActivationFunction]:
    """Activation functions by name (`gelu_new`, `silu`, ...), used by `act_fn` in specs.

    Return a mapping from name to a function of one tensor. Conformance recomputes each MLP with the
    named function and compares with the model, so the name must mean exactly what the model does.
    """


@hookspec
def bridge_core_position_kinds() -> list[PositionKind]:
    """Position kinds (`learned`, `none`, later `rotary`): how positions enter the model."""


@hookspec
def bridge_core_mask_formats() -> list[MaskFormat]:
    """Mask formats (`2d`, `4d_additive`, `4d_bool`, `none`) used when the core calls a module alone."""


@hookspec
def bridge_core_score_bias_kinds() -> list[ScoreBiasKind]:
    """Score-bias kinds (`t5_buckets`, a plugin's `alibi`): additive attention-score biases.

    A spec selects one with `score_bias: {kind: NAME}` on a stack. Return a list of `ScoreBiasKind`.
    """


@hookspec
def bridge_core_cross_attention_kinds() -> list[CrossAttentionKind]:
    """Cross-attention kinds (`encoder_output`): where keys/values come from and how a decoder block
    is called with them. A spec selects one with `cross_attn: {kind: NAME}`."""


@hookspec
def bridge_core_adapt_config(spec: Spec, hf_config: Any) -> dict[str, Any] | None:
    """Extra normalized config fields that a spec's expressions cannot say.

    Called at bind time with the validated spec and the model's HF config. Return a mapping of field
    names to values (merged into `bridge.cfg`), or `None` to add nothing. Must not modify `hf_config`.
    """


@hookspec
def bridge_core_prepare_model(spec: Spec, model: nn.Module) -> None:
    """Called after a model is loaded by `Bridge.from_pretrained` / `from_spec`, before binding.

    For loading fix-ups a family needs (never for the user's own model passed to `from_hf`, which is
    never modified). Return nothing.
    """
