"""`bridge-core conform`: JSON on stdout and exit codes through a real subprocess, and the matrix,
`-q`, `--model PATH` and `--all` in-process."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from bridge_core.bridge import loading
from bridge_core.cli import main
from bridge_core.conformance import catalogue
from bridge_core.registry import default_registry


def _conform(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "bridge_core", "conform", *args], capture_output=True, text=True, timeout=300
    )


def test_subprocess_json_exits_1_on_a_broken_spec_and_names_the_check(broken_dir):
    done = _conform("gpt2", str(broken_dir / "wrong_eps.yaml"), "--json", "--variant", "base")
    assert done.returncode == 1, done.stderr
    data = json.loads(done.stdout)
    assert data["ok"] is False
    gpt2, broken = data["reports"]
    assert gpt2["ok"] is True and gpt2["architecture"] == "gpt2"
    assert [c["name"] for c in gpt2["checks"]] == [c.name for c in catalogue()]
    failed = [c for c in broken["checks"] if c["status"] == "fail"]
    assert [c["name"] for c in failed] == ["config_fields", "norms"]
    assert [c["field"] for c in failed] == ["config.eps", "config.eps"]


def test_json_for_builtin_spec_exits_0(capsys):
    assert main(["conform", "gpt2", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["ok"] is True and data["reports"][0]["architecture"] == "gpt2"


def test_matrix_lists_every_check_and_failure_details(capsys, broken_dir):
    code = main(["conform", "gpt2", str(broken_dir / "relu_activation.yaml"), "--check", "bind", "--check", "mlp"])
    out = capsys.readouterr().out
    assert code == 1
    assert "broken_relu_activation" in out and "gpt2" in out
    assert "FAIL broken_relu_activation" in out and "config.act_fn" in out


def test_quiet_prints_only_the_summary_with_skips_counted(capsys):
    assert main(["conform", "gpt2", "-q", "--check", "bind", "--check", "rel_pos_bias"]) == 0
    out = capsys.readouterr().out
    assert "1 spec(s), 4 test model(s), 2 checks each: 4 passed, 4 skipped, 0 failed" in out and "┃" not in out


def test_each_variant_is_a_column(capsys):
    assert main(["conform", "opt", "--check", "bind"]) == 0
    out = capsys.readouterr().out
    for label in ("opt[post_norm]", "opt[project]", "opt[opt_350m]", "opt[eager]"):
        assert label in out


def test_model_path_runs_on_a_saved_checkpoint(capsys, tmp_path: Path):
    loading.random_model(default_registry().get("gpt2"), seed=1).save_pretrained(tmp_path)
    code = main(["conform", "--model", str(tmp_path), "--json", "--check", "bind", "--check", "forward_parity"])
    data = json.loads(capsys.readouterr().out)
    assert code == 0
    assert data["reports"][0]["architecture"] == "gpt2"
    assert str(tmp_path) in data["reports"][0]["model"]


def test_all_covers_every_registered_spec(capsys):
    main(["conform", "--all", "--json", "--check", "bind"])
    data = json.loads(capsys.readouterr().out)
    names = [r["architecture"] for r in data["reports"]]
    assert [n for n in names if "[" not in n] == default_registry().names()
    registry = default_registry()
    assert sum(len(registry.get(n).variants) for n in registry.names()) > 0
    for name in registry.names():
        assert all(f"{name}[{v}]" in names for v in registry.get(name).variants)


def test_nothing_to_check_is_a_usage_error():
    with pytest.raises(SystemExit):
        main(["conform"])
