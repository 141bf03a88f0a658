"""Drafting specs by observing a tiny model (docs/decisions/0018-drafting-by-observation.md).

`draft_model_type` / `draft_config` -> `Draft`; `to_yaml` / `to_spec` render it; `reach` runs conformance
on a model type (registered spec or draft); `onboarding` drafts and verifies a spec for a model no
registered spec matches.
"""

from __future__ import annotations

from .draft import Draft, Gap
from .drafter import draft_config, draft_model_type
from .emit import to_spec, to_yaml
from .errors import DraftingError, DraftRefusedError, OutOfScopeError

__all__ = [
    "Draft",
    "DraftRefusedError",
    "DraftingError",
    "Gap",
    "OutOfScopeError",
    "draft_config",
    "draft_model_type",
    "to_spec",
    "to_yaml",
]
