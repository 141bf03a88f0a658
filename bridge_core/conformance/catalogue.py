"""The catalogue of conformance checks: the `@check` decorator, `Meter` and `Skip`.

Check modules register themselves here by decoration (import order is catalogue order); the runner
reads `catalogue()`. A check receives a `CheckContext` and a `Meter` and records comparisons on it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import field
from typing import TYPE_CHECKING

import torch

from ..records import record

if TYPE_CHECKING:
    from .context import CheckContext

CheckFunction = Callable[["CheckContext", "Meter"], None]


class Skip(Exception):
    """Raised by a check that cannot apply to this architecture; the message is the reason."""


@record(frozen=True)
class Check:
    """One named check: what it proves, its family, its tolerance and the function that runs it."""

    name: str
    statement: str
    family: str
    tolerance: float | None
    figure: str
    function: CheckFunction
    needs_bridge: bool = True
    final: bool = False
    encoder_decoder: bool = True  # whether the check knows how to feed an encoder-decoder model
    rtol: float = 0.0  # the tolerance of a comparison is tolerance + rtol * max|reference|
    why: str = ""  # why the tolerance suffices (the generated reference states it)


_CATALOGUE: dict[str, Check] = {}

DEFAULT_RTOL = 1e-6
"""Relative part of a nonzero tolerance: float32 carries ~7 digits, so a reimplementation that rounds
differently from HF's kernels differs by a few 1e-7 of the largest value compared."""

FAMILIES = (
    "binding",
    "config",
    "parity",
    "hooks",
    "attention",
    "norms",
    "residual",
    "mlp",
    "embedding",
    "interventions",
    "components",
    "hygiene",
)
"""Running order of the families; a family not listed runs after these, in registration order."""


def _order(item: Check) -> tuple[bool, int]:
    rank = FAMILIES.index(item.family) if item.family in FAMILIES else len(FAMILIES)
    return item.final, rank


def check(
    name: str,
    *,
    statement: str,
    family: str,
    tolerance: float | None = None,
    figure: str = "max abs diff",
    needs_bridge: bool = True,
    final: bool = False,
    encoder_decoder: bool = True,
    rtol: float | None = None,
    why: str = "",
) -> Callable[[CheckFunction], CheckFunction]:
    """Register a check under `name`. `final` checks run after all others (e.g. model left as found).

    A comparison passes when max|actual - reference| <= tolerance + rtol * max|reference|; `rtol` defaults to
    `DEFAULT_RTOL` for checks with a nonzero tolerance (float32 rounding grows with the values) and 0 otherwise.
    """
    relative = (DEFAULT_RTOL if tolerance else 0.0) if rtol is None else rtol

    def register(function: CheckFunction) -> CheckFunction:
        if name in _CATALOGUE and _CATALOGUE[name].function is not function:
            raise ValueError(f"conformance check '{name}' is already registered")
        _CATALOGUE[name] = Check(
            name, statement, family, tolerance, figure, function, needs_bridge, final, encoder_decoder, relative, why
        )
        return function

    return register


def catalogue(names: Sequence[str] | None = None) -> list[Check]:
    """Registered checks in running order (by family, final ones last), optionally only `names`."""
    from . import checks  # noqa: F401  (importing registers the built-in checks)

    ordered = sorted(_CATALOGUE.values(), key=_order)
    if names is None:
        return ordered
    unknown = [n for n in names if n not in _CATALOGUE]
    if unknown:
        raise KeyError(f"unknown conformance check(s): {', '.join(unknown)}; known: {', '.join(_CATALOGUE)}")
    return [c for c in ordered if c.name in names]


@record
class Failure:
    """The first comparison of a check that went wrong, and the spec field most likely at fault."""

    message: str
    field: str | None


@record
class Meter:
    """Collects one check's comparisons: the largest figure seen and the first failure."""

    tolerance: float | None
    rtol: float = 0.0
    figure: float | None = None
    failures: list[Failure] = field(default_factory=list)
    compared: int = 0

    def _record(self, value: float) -> None:
        self.compared += 1
        if self.figure is None or not value <= self.figure:  # NaN/inf win
            self.figure = value

    def measure(self, value: float) -> None:
        """Record a figure that is not itself a comparison (e.g. how many hook points bound)."""
        self._record(float(value))

    def fail(self, message: str, field: str | None = None) -> None:
        self.failures.append(Failure(message, field))

    def count(self, value: float, what: str, field: str | None = None, limit: float = 0) -> None:
        """Record a count (e.g. hooks left attached); more than `limit` fails."""
        self._record(float(value))
        if value > limit:
            self.fail(f"{what}: {value:g} (allowed {limit:g})", field)

    def compare(
        self,
        what: str,
        actual: torch.Tensor,
        expected: torch.Tensor,
        field: str | None = None,
        tolerance: float | None = None,
        sides: tuple[str, str] = ("the bridge", "HF"),
    ) -> float:
        """Max abs difference of two tensors of the same shape; above tolerance + rtol·max|expected| (or a
        shape mismatch) records a failure naming `what` and the spec `field` most likely wrong. `sides`
        names what `actual` and `expected` are (two bridge paths are not "HF")."""
        tol = self.tolerance if tolerance is None else tolerance
        actual, expected = actual.detach(), expected.detach()
        if tuple(actual.shape) != tuple(expected.shape):
            self._record(math.inf)
            self.fail(
                f"{what}: {sides[0]} gives shape {tuple(actual.shape)} where {sides[1]} gives {tuple(expected.shape)}",
                field,
            )
            return math.inf
        diff = 0.0 if actual.numel() == 0 else (actual.double() - expected.double()).abs().max().item()
        if math.isnan(diff):
            diff = math.inf
        self._record(diff)
        if tol is not None and tol > 0 and self.rtol and expected.numel():
            reference = expected.double().abs().max().item()
            tol = tol + self.rtol * reference if math.isfinite(reference) else tol
        if tol is not None and not diff <= tol:
            self.fail(f"{what}: max abs diff {diff:.3g} exceeds {tol:.3g}", field)
        return diff

    def require(self, condition: bool, message: str, field: str | None = None) -> None:
        """A yes/no comparison (e.g. an exception was propagated); failing it records `message`."""
        self.compared += 1
        if not condition:
            self.fail(message, field)
