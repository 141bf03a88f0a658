"""`bridge-core validate`: every problem of a spec at once, not only the first.

Schema errors come from loading (file:line:field). Then the spec is bound to a tiny model built from
its `test_config` by the same walk that builds a bridge (binding.py), in the mode that records every
problem (missing modules, unknown kinds, bad expressions) and carries on, so one typo does not hide
the next.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from torch import nn

from .bridge.binding import collect_problems
from .errors import BindError, BridgeCoreError, SpecError
from .plugin_host import Kinds
from .records import record
from .spec.config import normalize_config

if TYPE_CHECKING:
    from .spec.schema import Spec


@record(frozen=True)
class Problem:
    """One problem of a spec, at the field (and file and line) that causes it."""

    field: str
    file: str | None
    line: int | None
    error: BridgeCoreError

    def __str__(self) -> str:
        where = f"{self.file or '<spec>'}{f':{self.line}' if self.line else ''}"
        message = self.error.reason if isinstance(self.error, SpecError) else str(self.error)
        return f"{where}: {message}"


def spec_problems(spec: Spec, model: nn.Module, kinds: Kinds, spec_file: str | None = None) -> list[Problem]:
    """Every problem binding `spec` to `model` meets, each with its field, file and line."""
    try:
        cfg = normalize_config(spec, model.config, spec_file)
        errors: list[BridgeCoreError] = []
    except SpecError as error:
        cfg, errors = None, [error]
    errors += collect_problems(model, spec, cfg, kinds, spec_file)
    problems: dict[str, Problem] = {}
    for error in errors:
        field = error.spec_path if isinstance(error, BindError) else getattr(error, "field", None) or ""
        if field in problems:
            continue  # a block field wrong in every block is one problem, shown for the first block
        file, line = spec.where(field)
        if isinstance(error, SpecError):
            file, line = error.file or file, error.line or line
        problems[field] = Problem(field, file or spec_file, line, error)
    return list(problems.values())
