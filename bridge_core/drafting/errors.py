"""Errors of drafting and automatic onboarding."""

from __future__ import annotations

from collections.abc import Sequence

from ..errors import BridgeCoreError, SpecNotFoundError


class DraftingError(BridgeCoreError, ValueError):
    """A drafting step failed (`step`: model class, config, shrink, build, forward, observe, spec); `gaps`
    ("item: detail") name the missing vocabulary that stopped it, when that is known."""

    def __init__(self, step: str, message: str, gaps: Sequence[str] = ()) -> None:
        self.step = step
        self.reason = message
        self.gaps = list(gaps)
        super().__init__(f"drafting ({step}): {message}")


class OutOfScopeError(DraftingError):
    """The model is not a text transformer the spec vocabulary describes (SSM, multimodal wrapper, audio...)."""

    def __init__(self, reason: str) -> None:
        super().__init__("scope", reason)


class DraftRefusedError(SpecNotFoundError):
    """No registered spec matches a model and the drafted spec failed its checks on a tiny twin."""

    def __init__(self, model_type: str, failing: Sequence[str], detail: str) -> None:
        self.model_type = model_type
        self.failing = list(failing)
        super().__init__(
            f"No registered spec matches model_type {model_type!r}, and the spec drafted for it failed "
            f"{', '.join(self.failing)} on a tiny twin of its config ({detail}). Write a spec: "
            f"`bridge-core scaffold --model PATH > spec.yaml`, edit it until `bridge-core conform spec.yaml` "
            f"passes, then add it with `registry.add_spec(path)`; or pass `draft=False` to skip drafting."
        )
