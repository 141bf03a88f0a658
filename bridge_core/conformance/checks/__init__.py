"""The built-in conformance checks; importing this package registers them in catalogue order.

Every check runs on decoder-only and encoder-decoder models alike (`CheckContext.layers` /
`.attentions` walk every stack). Later capabilities (generation, layer ranges, dtypes) add a module
here with `@check(...)` functions: one catalogue, one runner.
"""

from . import (
    alone,
    attention,
    components,
    config_fields,
    coverage,
    embedding,
    hygiene,
    interventions,
    moe,
    research,
    roles,
    score_bias,
    structure,
)

__all__ = [
    "alone",
    "attention",
    "components",
    "config_fields",
    "coverage",
    "embedding",
    "hygiene",
    "interventions",
    "moe",
    "research",
    "roles",
    "score_bias",
    "structure",
]
