"""`bridge-core inspect --plot-attention` also writes, per layer, the patterns in the form circuitsvis's
`attention_patterns(tokens=..., attention=...)` takes (`layerNN.json`) and a page that draws them offline
(`layerNN.html`), checked against HF's own attention weights and rendered in a headless browser.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from bridge_core import Bridge
from bridge_core.inspection import inspect_bridge
from bridge_core.plots import PatternPanel, write_layer_page

pytest.importorskip("matplotlib")  # the PNGs beside the pages
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
needs_browser = pytest.mark.skipif(CHROMIUM is None, reason="no chromium on PATH (apt-get install -y chromium)")


def gpt2() -> GPT2LMHeadModel:
    torch.manual_seed(0)
    config = GPT2Config(n_layer=2, n_embd=32, n_head=4, vocab_size=97, n_positions=32, attn_implementation="eager")
    return GPT2LMHeadModel(config).eval()


def rendered(page: Path) -> str:
    result = subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--dump-dom", page.resolve().as_uri()],
        capture_output=True, text=True, timeout=120, check=True,
    )  # fmt: skip
    return result.stdout


def test_export_holds_hf_attention_weights_in_circuitsvis_form(tmp_path: Path):
    hf_model = gpt2()
    report = inspect_bridge(Bridge.from_hf(hf_model), plot_dir=tmp_path)
    tokens = torch.tensor([report["input"]["tokens"]])
    with torch.no_grad():
        attentions = hf_model(tokens, output_attentions=True).attentions
    for layer in range(2):
        export = json.loads((tmp_path / f"layer{layer:02d}.json").read_text())
        (view,) = export["views"]
        kwargs = view["circuitsvis"]
        assert set(kwargs) == {"tokens", "attention"}  # circuitsvis.attention.attention_patterns(tokens, attention)
        assert len(kwargs["tokens"]) == tokens.shape[1] and all(isinstance(t, str) for t in kwargs["tokens"])
        torch.testing.assert_close(torch.tensor(kwargs["attention"]), attentions[layer][0], atol=1e-6, rtol=1e-5)


def test_cross_attention_has_no_circuitsvis_view_but_keeps_both_token_lists(tmp_path: Path):
    report = inspect_bridge(Bridge.from_spec("t5", tiny=True), plot_dir=tmp_path)
    export = json.loads((tmp_path / "decoder_layer00.json").read_text())
    cross = next(v for v in export["views"] if v["title"] == "cross_attn")
    assert cross["circuitsvis"] is None
    assert len(cross["key_tokens"]) == len(report["input"]["tokens"])
    assert len(cross["query_tokens"]) == len(report["input"]["decoder_input_ids"])


@needs_browser
def test_page_renders_every_head_cell_with_the_exported_values_in_a_headless_browser(tmp_path: Path):
    inspect_bridge(Bridge.from_hf(gpt2()), plot_dir=tmp_path)
    export = json.loads((tmp_path / "layer01.json").read_text())
    pattern = torch.tensor(export["views"][0]["pattern"])
    dom = rendered(tmp_path / "layer01.html")
    assert f'data-rendered-cells="{pattern.numel()}"' in dom
    cells = re.findall(r'data-q="(\d+)" data-k="(\d+)" data-value="([^"]+)"', dom)
    assert len(cells) == pattern.numel()
    drawn = torch.tensor([float(v) for _, _, v in cells]).reshape(pattern.shape)
    torch.testing.assert_close(drawn, pattern)


@needs_browser
def test_a_token_that_spells_a_closing_script_tag_does_not_break_the_page(tmp_path: Path):
    labels = ["</script><p id=broken>", "b"]
    panel = PatternPanel("attn", torch.tensor([[[1.0, 0.0], [0.25, 0.75]]]), labels, labels)
    _, page = write_layer_page([panel], tmp_path, "layer00", "title </script>")
    dom = rendered(page)
    assert 'data-rendered-cells="4"' in dom and 'id="broken"' not in dom
