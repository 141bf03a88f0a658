"""The draft being written (spec fields, notes, vocabulary gaps) and what observers read (`DraftContext`)."""

from __future__ import annotations

from dataclasses import field
from typing import Any

from torch import nn

from ..records import record
from .probe import Observation
from .shrink import plain_fields


@record
class Gap:
    """Something the model does that the spec vocabulary of this worktree cannot say."""

    item: str  # the missing vocabulary item, short ("interleaved rotary")
    detail: str

    def __str__(self) -> str:
        return f"{self.item}: {self.detail}"


@record
class Draft:
    """A drafted spec: its fields (schema order), `# NOTE:` lines for every guess, and gaps."""

    fields: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    gaps: list[Gap] = field(default_factory=list)

    def note(self, text: str) -> None:
        if text not in self.notes:
            self.notes.append(text)

    def gap(self, item: str, detail: str) -> None:
        self.gaps.append(Gap(item, detail))


@record
class DraftContext:
    """What every observer reads: the tiny model's observed forward, its config and the class."""

    cls: type[nn.Module]
    config: Any  # the tiny config the model was built from
    obs: Observation
    test_config: dict[str, Any]
    draft: Draft
    blocks: str = ""  # filled by the layout observer
    block: str = ""  # path of block 0
    found: dict[str, Any] = field(default_factory=dict)  # what observers found for later ones (module paths...)

    @property
    def model(self) -> nn.Module:
        return self.obs.model

    def attr(self, value: Any, prefer: tuple[str, ...] = (), keyword: tuple[str, ...] = ()) -> str | None:
        """The config attribute holding `value`: a preferred name first, then any whose name has a keyword."""
        fields = plain_fields(self.config)

        def equal(v: Any) -> bool:
            if isinstance(v, bool) or isinstance(value, bool):
                return v is value
            if isinstance(v, (int, float)) and isinstance(value, (int, float)):
                return abs(float(v) - float(value)) <= 1e-6 * max(1.0, abs(float(value)))
            return False

        for name in prefer:
            if name in fields and equal(fields[name]):
                return name
        for name, v in fields.items():
            if any(k in name for k in keyword) and equal(v):
                return name
        return None

    def relative(self, path: str, root: str) -> str:
        return path[len(root) + 1 :] if root and path.startswith(root + ".") else path
