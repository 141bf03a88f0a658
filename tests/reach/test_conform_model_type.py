"""`bridge-core conform --model-type`: a registered spec where one matches, else a drafted one; JSON out."""

from __future__ import annotations

import json

from bridge_core.cli import main


def test_conform_model_type_json(capsys):
    code = main(["conform", "--model-type", "qwen3", "--model-type", "mamba", "--check", "forward_parity", "--json"])
    out = json.loads(capsys.readouterr().out)
    by_type = {o["model_type"]: o for o in out["model_types"]}
    assert code == 0 and out["ok"]
    assert by_type["qwen3"]["status"] == "passing" and by_type["qwen3"]["reports"]
    assert all(r["ok"] for r in by_type["qwen3"]["reports"])
    assert by_type["mamba"]["status"] == "out_of_scope" and "no attention" in by_type["mamba"]["detail"]


def test_conform_model_type_uses_the_registered_spec_and_fails_with_exit_1(capsys):
    assert main(["conform", "--model-type", "diffllama", "--check", "bind"]) == 1
    out = capsys.readouterr().out
    assert "diffllama: failing; failing checks: bind" in out and "missing vocabulary: output projection" in out
    assert main(["conform", "--model-type", "gptj", "--check", "bind"]) == 0
    assert "gptj: builtin (spec gptj)" in capsys.readouterr().out
    assert main(["conform", "--model-type", "llama", "--check", "bind"]) == 0
    assert "llama: builtin (spec llama)" in capsys.readouterr().out
