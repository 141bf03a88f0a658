"""The pytest plugin (entry point `pytest11`): one test per conformance check per spec and tiny test model
(`test_config` and each of the spec's `variants`), for any repo.

Either `test_my_arch = conformance_tests("my_arch.yaml")` in a test module, or a test taking the
`conformance_result` fixture with `conformance_specs = [...]` in its module (or the ini option of the
same name). Each spec is run once per session; a failing test names the check, the figure and the
spec field most likely wrong. Heavy imports (torch, transformers) wait until a test needs them.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

_REPORTS: dict[tuple[str, str, tuple[str, ...] | None, str | None], Any] = {}


def _resolve(spec: Any, base: Path | None) -> Any:
    """A relative YAML path is taken relative to `base` (the test module's folder) when it exists there."""
    text = str(spec)
    if base is not None and text.endswith((".yaml", ".yml")) and not Path(text).is_absolute():
        candidate = base / text
        if candidate.exists():
            return str(candidate)
    return spec


def _report(spec: Any, model: Any, checks: Sequence[str] | None, variant: str | None = None):
    key = (
        str(spec),
        str(model) if isinstance(model, (str, Path)) or model is None else f"id:{id(model)}",
        tuple(checks) if checks else None,
        variant,
    )
    if key not in _REPORTS:
        from .runner import run

        _REPORTS[key] = run(spec, model, checks=checks, variant=variant)
    return _REPORTS[key]


def _variants(spec: Any, model: Any) -> list[str | None]:
    """The tiny test models of a spec (None: `test_config` itself); one when a model is given."""
    if model is not None:
        return [None]
    from .runner import variant_names

    return variant_names(spec)


def _names(checks: Sequence[str] | None) -> list[str]:
    from .catalogue import catalogue

    return [c.name for c in catalogue(checks)]


def outcome(spec: Any, name: str, model: Any = None, checks: Sequence[str] | None = None, variant: str | None = None):
    """The result of check `name` on `spec` (its test model `variant`): skips the test on a skip, raises
    AssertionError on a failure."""
    report = _report(spec, model, checks, variant)
    result = report.result(name)
    if result.status == "skip":
        pytest.skip(f"{report.architecture}: {result.explain()}")
    if result.status == "fail":
        raise AssertionError(
            f"conformance check '{name}' failed for spec '{report.architecture}' ({report.spec_file}, "
            f"{report.model}): {result.explain()}"
        )
    return result


def conformance_tests(spec: Any, model: Any = None, *, checks: Sequence[str] | None = None):
    """A test function parametrized over the spec's tiny test models and the catalogue:
    `test_my_arch = conformance_tests("my_arch.yaml")`.

    `spec`: a registered name, a Spec, or a YAML path (relative to the calling test module if it
    exists there); `model`: an HF model or a checkpoint path (default: tiny, from `test_config` and
    each of the spec's `variants`, ids `base`, `VARIANT`).
    """
    frame = inspect.currentframe()
    caller = frame.f_back.f_code.co_filename if frame is not None and frame.f_back is not None else None
    spec = _resolve(spec, Path(caller).parent if caller else None)

    loads = _variants(spec, model)

    @pytest.mark.parametrize("check_name", _names(checks))
    @pytest.mark.parametrize("variant", loads, ids=[v or "base" for v in loads])
    def test_conformance(variant: str | None, check_name: str) -> None:
        outcome(spec, check_name, model, checks, variant)

    return test_conformance


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addini(
        "conformance_specs",
        type="linelist",
        help="bridge-core specs (names or YAML paths relative to the rootdir) that the `conformance_result` "
        "fixture runs every conformance check on",
    )


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "conformance_result" not in metafunc.fixturenames:
        return
    specs = getattr(metafunc.module, "conformance_specs", None)
    base = Path(str(metafunc.module.__file__)).parent
    if specs is None:
        specs, base = metafunc.config.getini("conformance_specs"), metafunc.config.rootpath
    if not specs:
        raise pytest.UsageError(
            f"{metafunc.function.__name__} uses `conformance_result` but no specs are named: set "
            "`conformance_specs = [...]` in its module or the `conformance_specs` ini option"
        )
    resolved = [_resolve(spec, base) for spec in specs]
    params = [(spec, variant, name) for spec in resolved for variant in _variants(spec, None) for name in _names(None)]
    ids = [f"{Path(str(spec)).stem}{f'[{variant}]' if variant else ''}-{name}" for spec, variant, name in params]
    metafunc.parametrize("conformance_result", params, ids=ids, indirect=True)


@pytest.fixture
def conformance_result(request: pytest.FixtureRequest):
    """The `CheckResult` of one check on one spec (skips the test when the check does not apply)."""
    spec, variant, name = request.param
    report = _report(spec, None, None, variant)
    result = report.result(name)
    if result.status == "skip":
        pytest.skip(f"{report.architecture}: {result.explain()}")
    return result
