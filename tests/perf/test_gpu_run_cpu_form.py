"""The GPU benchmark's reduced form (`--cpu --tiny`) runs end to end, so the script cannot rot between
GPU runs: every shape × workload row is written, with finite timings for HF and bridge-core."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_gpu_run_cpu_tiny_writes_every_row(tmp_path):
    command = [sys.executable, str(ROOT / "benchmarks" / "gpu_run.py"), "--cpu", "--tiny", "--repeats", "1"]
    subprocess.run([*command, "--out", str(tmp_path)], check=True, capture_output=True, cwd=ROOT)
    rows = json.loads((tmp_path / "gpu_run.json").read_text())
    assert {(r["shape"], r["workload"].split()[0]) for r in rows} == {
        (shape, workload)
        for shape in ("gpt2-tiny", "llama-tiny")
        for workload in ("forward", "cache", "generate", "patch")
    }
    assert all(math.isfinite(ms) and ms > 0 for r in rows for ms in r["median_ms"].values())
    assert "| llama-tiny | patch sweep resid_pre |" in (tmp_path / "gpu_run.md").read_text()
