"""Built-in norm kinds: `layernorm`, `rmsnorm`, and Gemma's `rmsnorm_offset` (`(1 + w)`)."""

from __future__ import annotations

from bridge_core.kinds import NormKind
from bridge_core.plugin_host import hookimpl


@hookimpl
def bridge_core_norm_kinds() -> list[NormKind]:
    return [
        NormKind("layernorm", centered=True),
        NormKind("rmsnorm", centered=False, upcast=True),
        NormKind("rmsnorm_offset", centered=False, weight_offset=1.0, upcast=True),
    ]
