"""Conformance: a catalogue of named checks that hold a spec to HF's own computation (docs/architecture.md#conformance).

`run(spec) -> Report`; `bridge-core conform`; the pytest plugin and `conformance_tests(spec)`.
New checks register with `@check(...)` in `bridge_core.conformance.checks`.
"""

from .catalogue import Check, Meter, Skip, catalogue, check
from .context import CheckContext
from .report import CheckResult, Report
from .runner import build_context, run, run_checks


def __getattr__(name: str):
    # `conformance_tests` lives with the pytest plugin; imported on use so the CLI never needs pytest.
    if name == "conformance_tests":
        from .pytest_plugin import conformance_tests

        return conformance_tests
    raise AttributeError(f"module 'bridge_core.conformance' has no attribute '{name}'")


__all__ = [
    "Check",
    "CheckContext",
    "CheckResult",
    "Meter",
    "Report",
    "Skip",
    "build_context",
    "catalogue",
    "check",
    "conformance_tests",
    "run",
    "run_checks",
]
