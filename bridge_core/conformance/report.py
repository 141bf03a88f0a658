"""Results of a conformance run: one `CheckResult` per check, gathered in a `Report`.

Produced by `conformance.run`; read by the CLI matrix, `--json`, and the pytest plugin.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import asdict
from typing import Any, Literal

from ..records import record

Status = Literal["pass", "fail", "skip"]


@record
class CheckResult:
    """The outcome of one check on one spec."""

    name: str
    family: str
    statement: str
    status: Status
    figure: float | None = None
    figure_label: str = "max abs diff"
    tolerance: float | None = None
    message: str = ""
    field: str | None = None
    seconds: float = 0.0
    details: list[str] = dataclasses.field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.status != "fail"

    def short(self) -> str:
        """A matrix cell: the status and the measured figure."""
        if self.status == "skip":
            return "skip"
        mark = "ok" if self.status == "pass" else "FAIL"
        return mark if self.figure is None else f"{mark} {format_figure(self.figure)}"

    def explain(self) -> str:
        """A sentence for a person: what failed, by how much, and which spec field to look at."""
        if self.status == "skip":
            return f"{self.name}: skipped: {self.message}"
        head = f"{self.name} ({self.statement}): {self.status}"
        if self.figure is not None:
            head += f", {self.figure_label} {format_figure(self.figure)}"
            if self.tolerance is not None:
                head += f" (tolerance {self.tolerance:g})"
        if self.status == "fail":
            head += f". {self.message.rstrip('.')}."
            if self.field:
                head += f" Most likely wrong: spec field '{self.field}'."
        return head

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        if out["figure"] is not None and not math.isfinite(out["figure"]):
            out["figure"] = str(out["figure"])  # JSON has no inf/nan
        return out


def format_figure(value: float) -> str:
    if value == 0:
        return "0"
    if not math.isfinite(value):
        return str(value)
    if float(value).is_integer() and abs(value) < 1e6:
        return str(int(value))
    return f"{value:.1e}"


@record
class Report:
    """Every check's result for one spec (and model)."""

    architecture: str
    spec_file: str
    model: str
    results: list[CheckResult] = dataclasses.field(default_factory=list)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return all(r.ok for r in self.results)

    def result(self, name: str) -> CheckResult:
        for r in self.results:
            if r.name == name:
                return r
        raise KeyError(f"no result for check '{name}' (have: {', '.join(r.name for r in self.results)})")

    def __getitem__(self, name: str) -> CheckResult:
        return self.result(name)

    def failed(self) -> list[CheckResult]:
        return [r for r in self.results if r.status == "fail"]

    def to_dict(self) -> dict[str, Any]:
        return {
            "architecture": self.architecture,
            "spec_file": self.spec_file,
            "model": self.model,
            "ok": self.ok,
            "seconds": round(self.seconds, 3),
            "checks": [r.to_dict() for r in self.results],
        }

    def to_json(self, **kwargs: Any) -> str:
        return json.dumps(self.to_dict(), **{"indent": 2, **kwargs})

    def __str__(self) -> str:
        lines = [f"{self.architecture} ({self.model}): {'ok' if self.ok else 'FAILED'}"]
        lines += [f"  {r.explain()}" for r in self.results]
        return "\n".join(lines)
