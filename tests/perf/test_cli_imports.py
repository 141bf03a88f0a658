"""`bridge-core --help` must not import torch, transformers or the conformance checks: the property
behind a help screen in well under a second, checked on `sys.modules` in a fresh interpreter."""

from __future__ import annotations

import json
import subprocess
import sys

HEAVY = ("torch", "transformers", "bridge_core.conformance")


def _modules_after(code: str) -> set[str]:
    """The heavy modules a fresh interpreter holds after running `code` (its stdout is discarded)."""
    probe = (
        "import contextlib, io, json, sys\n"
        f"with contextlib.redirect_stdout(io.StringIO()):\n"
        f"    {code}\n"
        f"print(json.dumps(sorted(m for m in {HEAVY!r} if m in sys.modules)))\n"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    return set(json.loads(done.stdout.strip().splitlines()[-1]))


def test_help_parses_without_importing_torch_transformers_or_conformance():
    loaded = _modules_after(
        "from bridge_core.cli import main\n    try:\n        main(['--help'])\n    except SystemExit:\n        pass"
    )
    assert loaded == set()


def test_import_bridge_core_is_light_until_a_public_name_is_used():
    assert _modules_after("import bridge_core") == set()
    assert "torch" in _modules_after("from bridge_core import Bridge")


def test_conform_help_is_still_the_real_parsers_help():
    done = subprocess.run(
        [sys.executable, "-m", "bridge_core", "conform", "--help"], capture_output=True, text=True, check=True
    )
    assert "--check NAME" in done.stdout and "--all" in done.stdout


def test_conform_usage_errors_come_from_the_real_parser():
    done = subprocess.run([sys.executable, "-m", "bridge_core", "conform"], capture_output=True, text=True)
    assert done.returncode == 2
    assert "name an architecture or a spec file" in done.stderr
