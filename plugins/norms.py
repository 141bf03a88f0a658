"""Built-in norm kinds: `layernorm`, `rmsnorm`, Gemma's `rmsnorm_offset` (`(1 + w)`) and `rmsnorm_cast_last`.

Each computes as its HF module does in half precision: float32 throughout, cast last (F.layer_norm,
Gemma, OLMo 2), or cast before the weight multiplies (LlamaRMSNorm; T5LayerNorm with a half-precision weight).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from bridge_core.plugin_host import hookimpl

if TYPE_CHECKING:
    from bridge_core.kinds import NormKind


@hookimpl
def bridge_core_norm_kinds() -> list[NormKind]:
    from bridge_core.kinds import NormKind  # here: loading the plugin must not import torch

    return [
        NormKind("layernorm", centered=True, upcast=True),
        NormKind("rmsnorm", centered=False, upcast=True, cast_first=True),
        NormKind("rmsnorm_offset", centered=False, weight_offset=1.0, upcast=True),
        # RMSNorm whose weight multiplies in float32 before the cast back (OLMo 2's Olmo2RMSNorm)
        NormKind("rmsnorm_cast_last", centered=False, upcast=True),
    ]
