"""Combinations of `call:` fields that would otherwise be silently ignored or overridden.

Read at bind time (binding.py); each is a `SpecError` at the field that causes it, so `bridge-core
validate` lists it with file and line.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..errors import SpecError
from ..spec.config import spec_error

if TYPE_CHECKING:
    from ..spec.schema import Spec


def call_conflicts(spec: Spec, spec_file: str | None) -> list[SpecError]:
    """Every `call:` field of `spec` that nothing would read, or that another field overrides."""
    c = spec.call
    problems: list[SpecError] = []
    has_bias = spec.score_bias is not None or (spec.encoder is not None and spec.encoder.score_bias is not None)
    if c.position_bias_kwarg and not has_bias:
        problems.append(
            spec_error(
                f"call.position_bias_kwarg '{c.position_bias_kwarg}' is given but the spec has no score_bias to "
                "pass there (it would be silently ignored): declare score_bias, or drop the keyword",
                spec,
                spec_file,
                "call.position_bias_kwarg",
            )
        )
    if c.rotary_args and not c.position_embeddings_kwarg:
        problems.append(
            spec_error(
                "call.rotary_args is given but nothing calls the rotary module (no call.position_embeddings_kwarg), "
                "so it would be silently ignored",
                spec,
                spec_file,
                "call.rotary_args",
            )
        )
    filled = {c.mask_kwarg, c.attention_mask_kwarg, c.position_embeddings_kwarg, c.position_ids_kwarg}
    filled |= {c.position_bias_kwarg, spec.block.hidden_states_kwarg}
    for key in c.extra_kwargs:
        if key in filled:
            problems.append(
                spec_error(
                    f"call.extra_kwargs.{key} names a keyword another field already fills (it would override it)",
                    spec,
                    spec_file,
                    f"call.extra_kwargs.{key}",
                )
            )
    return problems
