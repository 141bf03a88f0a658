"""Loading a saved checkpoint with `Bridge.from_pretrained`, and the `bridge-core` command line
(`hooks`, `list`, `validate`), run as a user runs it: `python -m bridge_core ...` in a subprocess."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from bridge_core import Bridge
from bridge_core.cli import main
from bridge_core.registry import SPEC_PATH_VARIABLE

from ._helpers import FAKE_DIST, hf_logits, tiny_gpt2, tokens


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A tiny GPT-2 saved with save_pretrained (weights and config, no tokenizer)."""
    directory = tmp_path_factory.mktemp("tiny_gpt2")
    model = tiny_gpt2("3L-h3-dh16-inner80")
    model.save_pretrained(directory)
    return directory, model


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv(SPEC_PATH_VARIABLE, raising=False)


# --------------------------------------------------------------------------- from_pretrained
@torch.no_grad()
def test_from_pretrained_loads_a_saved_checkpoint_and_matches_it(saved):
    directory, model = saved
    bridge = Bridge.from_pretrained(directory)
    assert bridge.spec.name == "gpt2"
    assert bridge.model is not model and not bridge.model.training
    toks = tokens()
    assert torch.equal(bridge(toks), hf_logits(model, toks, None))
    logits, cache = bridge.run_with_cache(toks)
    torch.testing.assert_close(logits, hf_logits(model, toks, None), rtol=0, atol=1e-5)
    assert set(cache) == set(bridge.hook_names())


def test_from_pretrained_of_a_checkpoint_without_tokenizer_has_no_tokenizer(saved):
    directory, _ = saved
    assert not any(p.name.startswith(("tokenizer", "vocab", "merges")) for p in directory.iterdir())
    assert Bridge.from_pretrained(directory).tokenizer is None


@torch.no_grad()
def test_from_pretrained_passes_hf_keyword_arguments_through(saved):
    directory, model = saved
    bridge = Bridge.from_pretrained(directory, spec="gpt2", attn_implementation="eager")
    assert bridge.model.config._attn_implementation == "eager"
    toks = tokens()
    torch.testing.assert_close(bridge(toks), hf_logits(model, toks, None), rtol=0, atol=1e-5)


def test_from_spec_builds_the_tiny_test_model_of_the_spec():
    bridge = Bridge.from_spec("gpt2", seed=3)
    spec = bridge.spec
    assert bridge.cfg.n_layers == spec.test_config["n_layer"]
    assert bridge.cfg.d_model == spec.test_config["n_embd"]
    again = Bridge.from_spec("gpt2", seed=3)
    assert torch.equal(bridge.W_E, again.W_E), "seeded"


# --------------------------------------------------------------------------- CLI in a subprocess
@pytest.fixture(scope="module")
def cli_runs(cli_processes):
    """Exit code, stdout and stderr of each command started by conftest.py's `cli_processes`."""
    results = {}
    for name, process in cli_processes.items():
        out, err = process.communicate(timeout=300)
        results[name] = (process.returncode, out, err)
    return results


def test_cli_hooks_lists_every_hook_firing_exactly_once(cli_runs):
    code, out, err = cli_runs["hooks"]
    assert code == 0, err
    report = json.loads(out)
    bridge = Bridge.from_spec("gpt2")
    assert report["architecture"] == "gpt2"
    assert [row["name"] for row in report["hooks"]] == bridge.hook_names()
    assert all(row["fires"] == 1 for row in report["hooks"]), [r for r in report["hooks"] if r["fires"] != 1]
    shapes = {row["name"]: row["shape"] for row in report["hooks"]}
    assert shapes["blocks.0.attn.hook_pattern"] == [2, bridge.cfg.n_heads, 8, 8]


def test_cli_list_shows_gpt2_as_builtin_and_a_failing_plugin_by_its_distribution(cli_runs):
    code, out, err = cli_runs["list"]
    assert code == 0, err
    listing = json.loads(out)
    gpt2 = next(spec for spec in listing["specs"] if spec["name"] == "gpt2")
    assert gpt2["origin"] == "builtin"
    assert "GPT2LMHeadModel" in gpt2["architectures"] and "gpt2" in gpt2["model_type"]
    assert [(f["distribution"], f["name"]) for f in listing["failed_plugins"]] == [(FAKE_DIST, "broken")]
    assert f"{FAKE_DIST}:good" in listing["plugins"]
    assert any(name.startswith("bridge-core:") for name in listing["plugins"])


# --------------------------------------------------------------------------- CLI in process (cheap checks)
def test_cli_hooks_on_a_saved_checkpoint(saved, capsys):
    directory, _ = saved
    assert main(["hooks", "gpt2", "--model", str(directory), "--json", "--seq", "5"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert len(report["hooks"]) == len(Bridge.from_pretrained(directory).hook_names())
    assert {row["fires"] for row in report["hooks"]} == {1}


def test_cli_validate_accepts_a_good_spec_and_reports_a_bad_one_with_its_line(tmp_path, capsys):
    good = Path(tmp_path / "ok.yaml")
    good.write_text("name: ok_spec\nextends: gpt2\nmatch:\n  architectures: [OkLM]\n")
    assert main(["validate", str(good)]) == 0
    bad = Path(tmp_path / "bad.yaml")
    bad.write_text("name: bad_spec\nextends: gpt2\nmatch:\n  architectures: [BadLM]\nblock:\n  attn:\n    lay_out: x\n")
    assert main(["validate", str(bad)]) == 2
    printed = capsys.readouterr().err  # errors go to stderr, on one line
    assert f"{bad}:7" in printed and "block.attn.lay_out" in printed


def test_cli_schema_prints_a_json_schema(capsys):
    assert main(["schema"]) == 0
    schema = json.loads(capsys.readouterr().out)
    assert "block" in schema["properties"] and "hf_class" in schema["required"]
