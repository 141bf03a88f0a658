"""`bridge-core inspect`: the command (subprocess) and `inspect_bridge` (in process)."""

from __future__ import annotations

import argparse
import json
import sys

import pytest

from bridge_core import Bridge
from bridge_core.errors import TokenizerError
from bridge_core.inspection import inspect_bridge, register

from .conftest import EXAMPLES


def test_inspect_json_reports_every_hook_firing_once(background):
    result = background.result("inspect gpt2 --json")
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout)
    assert report["architecture"] == "gpt2"
    assert report["spec"]["origin"] == "builtin" and report["spec"]["file"].endswith("gpt2.yaml")
    assert report["config"]["n_layers"] == 2
    assert report["hooks"] and all(row["fires"] == 1 for row in report["hooks"])
    weights = {row["name"]: row["shape"] for row in report["weights"]}
    assert weights["blocks.0.attn.W_Q"] == [4, 64, 16]
    assert weights["W_pos"] == [48, 64]


def test_inspect_plots_every_t5_layer(background, plot_dir):
    result = background.result("inspect t5 --plot-attention -q")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "all fired once" in result.stdout
    names = sorted(p.name for p in plot_dir.glob("*.png"))
    assert names == [f"decoder_layer{i:02d}.png" for i in range(3)] + [f"encoder_layer{i:02d}.png" for i in range(2)]


def test_register_adds_the_inspect_command():
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    args = parser.parse_args(["inspect", "gpt2", "--json", "--plot-attention", "out", "-q"])
    assert (args.arch, args.json, args.plot_attention, args.quiet) == ("gpt2", True, "out", True)


@pytest.mark.parametrize("arch", ["gpt2", "llama", "t5"])
def test_hook_table_fires_every_point_once(arch):
    report = inspect_bridge(Bridge.from_spec(arch, tiny=True))
    assert report["ok"]
    assert [row["name"] for row in report["hooks"]] == Bridge.from_spec(arch, tiny=True).hook_names()
    assert all(row["fires"] == 1 and row["shape"] for row in report["hooks"])
    json.dumps(report)  # JSON-ready


def test_t5_gets_decoder_start_token_and_cross_attention_views():
    report = inspect_bridge(Bridge.from_spec("t5", tiny=True))
    assert report["input"]["decoder_input_ids"][0] == 0  # decoder_start_token_id of the tiny T5
    names = {row["name"] for row in report["weights"]}
    assert {"encoder.0.attn.W_Q", "decoder.2.cross_attn.W_O", "decoder.0.ln3.w"} <= names


def test_plot_attention_writes_one_png_per_layer(tmp_path):
    pytest.importorskip("matplotlib")
    report = inspect_bridge(Bridge.from_spec("gpt2", tiny=True), plot_dir=tmp_path)
    assert sorted(p.name for p in tmp_path.glob("*.png")) == ["layer00.png", "layer01.png"]
    assert len(report["plots"]) == 2


def test_prompt_with_tokenizer_shows_top_tokens_as_text(tmp_path):
    sys.path.insert(0, str(EXAMPLES))
    try:
        import toy_model
    finally:
        sys.path.remove(str(EXAMPLES))
    toy = toy_model.trained_bridge()
    toy.model.save_pretrained(tmp_path)
    toy.tokenizer.save_pretrained(tmp_path)
    bridge = Bridge.from_pretrained(tmp_path)
    report = inspect_bridge(bridge, "alice lives in", plot_dir=tmp_path / "plots", model=str(tmp_path))
    assert report["input"]["str_tokens"] == ["<bos>", "alice", "lives", "in"]
    assert report["top_tokens"][0]["token"] == "paris"
    assert len(report["plots"]) == bridge.cfg.n_layers


def test_prompt_without_tokenizer_raises_in_process():
    with pytest.raises(TokenizerError, match="--prompt needs a tokenizer"):
        inspect_bridge(Bridge.from_spec("gpt2", tiny=True), "hello")
