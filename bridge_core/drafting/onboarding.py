"""Automatic onboarding: a model no registered spec matches gets a spec drafted by observation, verified
by a fast subset of the conformance catalogue (`reach.FAST_CHECKS`) on a tiny twin of its own config
(never on the user's model), and used with a one-line warning; or a `DraftRefusedError` naming what
failed. `Bridge.from_hf(..., draft=False)` / `from_pretrained(..., draft=False)` turn this off.
"""

from __future__ import annotations

import warnings
from typing import Any

import transformers
from torch import nn

from ..spec.schema import Spec
from .errors import DraftingError, DraftRefusedError

DRAFTED_FILE = "<spec drafted by observation>"


class DraftedSpecWarning(UserWarning):
    """A bridge is using a spec drafted in memory (it passed the onboarding checks on a tiny twin)."""


def _class_for(config: Any, cls: type[nn.Module] | None) -> type[nn.Module]:
    if cls is not None and getattr(transformers, cls.__name__, None) is cls:
        return cls
    for name in getattr(config, "architectures", None) or []:
        found = getattr(transformers, name, None)
        if isinstance(found, type):
            return found
    from .build import model_class_for

    return model_class_for(config.model_type)


def onboard(config: Any, registry: Any, cls: type[nn.Module] | None = None) -> tuple[Spec, str]:
    """A drafted, verified spec for `config` (and the model class), or DraftRefusedError."""
    from ..conformance.runner import run
    from .drafter import draft_config
    from .emit import to_spec
    from .reach import FAST_CHECKS

    model_type = getattr(config, "model_type", "?")
    try:
        draft = draft_config(config, _class_for(config, cls))
        spec = to_spec(draft)
    except DraftingError as exc:
        raise DraftRefusedError(model_type, [f"drafting step '{exc.step}'"], exc.reason) from None
    report = run(spec, checks=FAST_CHECKS, registry=registry)
    failed = report.failed()
    if failed:
        gaps = f"; missing vocabulary: {', '.join(sorted({g.item for g in draft.gaps}))}" if draft.gaps else ""
        raise DraftRefusedError(model_type, [r.name for r in failed], f"{failed[0].explain()}{gaps}")
    warnings.warn(
        DraftedSpecWarning(
            f"No registered spec matches model_type {model_type!r}: using a spec drafted by observation that passed "
            f"{len(report.results)} conformance checks on a tiny twin of its config; save it with "
            "`bridge-core scaffold --model PATH > spec.yaml` (draft=False turns drafting off)."
        ),
        stacklevel=3,
    )
    return spec, DRAFTED_FILE
