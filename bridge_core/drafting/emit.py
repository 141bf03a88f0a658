"""A draft as commented YAML, and as a validated in-memory Spec."""

from __future__ import annotations

import yaml

from ..spec.schema import Spec
from .draft import Draft
from .errors import DraftingError


def to_yaml(draft: Draft) -> str:
    header = [
        "# Draft spec written by `bridge-core scaffold` (drafted by observing a tiny model's forward).",
        "# Check every note below, then run",
        "#   bridge-core validate THIS.yaml && bridge-core conform THIS.yaml",
    ]
    header += [_comment(f"NOTE: {note}") for note in draft.notes]
    header += [_comment(f"NOTE: MISSING VOCABULARY ({gap.item}): {gap.detail}") for gap in draft.gaps]
    body = yaml.safe_dump(draft.fields, sort_keys=False, default_flow_style=None, width=110)
    return "\n".join(header) + "\n" + body


def _comment(text: str) -> str:
    """One YAML comment, however many lines the text has (a note may quote a multi-line HF error)."""
    return "\n".join(f"# {line}" if i == 0 else f"#   {line}" for i, line in enumerate(text.splitlines() or [""]))


def to_spec(draft: Draft) -> Spec:
    """The draft validated against the schema (a DraftingError at step `spec` when it does not)."""
    try:
        return Spec.model_validate(draft.fields)
    except Exception as exc:
        raise DraftingError("spec", f"the draft does not validate: {exc}") from None
