"""The generated reference pages match the code, and the docs site builds with --strict."""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys

import pytest

from .conftest import ROOT


def _generator():
    spec = importlib.util.spec_from_file_location("gen_reference", ROOT / "docs" / "gen_reference.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_generated_reference_is_up_to_date(tmp_path):
    for path in _generator().generate(tmp_path):
        committed = ROOT / "docs" / "reference" / path.name
        assert committed.exists(), f"{committed} is missing: run python docs/gen_reference.py"
        assert path.read_text() == committed.read_text(), (
            f"docs/reference/{path.name} is out of date with the code: run python docs/gen_reference.py"
        )


def test_docs_build_strict(tmp_path):
    if importlib.util.find_spec("mkdocs") is None:
        pytest.skip("mkdocs is not installed (the `docs` extra)")
    mkdocs = shutil.which("mkdocs") or sys.executable
    command = [mkdocs] if mkdocs != sys.executable else [sys.executable, "-m", "mkdocs"]
    result = subprocess.run(
        [*command, "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
