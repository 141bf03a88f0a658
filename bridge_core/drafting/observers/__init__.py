"""Observers: each reads the observed forward (`DraftContext`) and writes one part of the draft.

Order matters only through `ctx.found` (what an observer found for later ones). To teach the drafter a
new piece of spec vocabulary, add an observer (or extend one) that recognizes it in the data flow and
writes the field, instead of recording a gap.
"""

from __future__ import annotations

from .attention import observe_attention, observe_rotation_per_layer
from .block import observe_mlp, observe_norms_and_kind
from .calls import observe_call, observe_scale, observe_window
from .config_fields import observe_config
from .extent import observe_extent, observe_routed_attention
from .latent import observe_latent_config
from .layout import observe_blocks, observe_embedding, observe_final, observe_positions
from .selection import observe_key_selection

OBSERVERS = (
    observe_blocks,
    observe_attention,
    observe_embedding,
    observe_positions,
    observe_rotation_per_layer,
    observe_mlp,
    observe_norms_and_kind,
    observe_final,
    observe_call,
    observe_scale,
    observe_window,
    observe_key_selection,
    observe_config,
    observe_latent_config,
    observe_extent,
    observe_routed_attention,
)
