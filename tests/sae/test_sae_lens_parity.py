"""Runs the SAELens parity tests (tests/sae/in_sae_venv) in `.venv-sae`, the venv where sae-lens and its
TransformerLens 3.9 live apart from this one (scripts/install_sae_reference.sh); skipped when it is absent."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SAE_PYTHON = REPO / ".venv-sae" / "bin" / "python"


@pytest.mark.skipif(not SAE_PYTHON.exists(), reason=f"{SAE_PYTHON} is missing: run scripts/install_sae_reference.sh")
def test_sae_bridge_equals_hooked_sae_transformer_in_the_sae_venv():
    result = subprocess.run(
        [str(SAE_PYTHON), "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/sae/in_sae_venv"],
        cwd=REPO, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    summary = result.stdout.strip().splitlines()[-1] if result.stdout.strip() else result.stderr[-2000:]
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
    passed = re.search(r"(\d+) passed", summary)
    assert passed and int(passed.group(1)) >= 20 and "skipped" not in summary, summary
