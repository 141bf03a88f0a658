"""`bridge-core validate` reports every missing module path at once; `bridge-core scaffold` drafts specs
that bind to the real model classes (checked against the HF modules, not against the draft itself)."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
import yaml

from bridge_core import Bridge
from bridge_core.bridge import loading
from bridge_core.cli import main
from bridge_core.registry import default_registry
from bridge_core.scaffold import meta_model, scaffold, to_yaml
from bridge_core.spec.loader import read_raw_spec, validate_spec
from bridge_core.validation import spec_problems

GPT2 = Path(__file__).resolve().parents[2] / "adapter_specs" / "gpt2.yaml"


def typo_spec(tmp_path: Path) -> Path:
    text = GPT2.read_text()
    for old, new in (("path: transformer.wpe", "path: transformer.wpee"), ("{path: ln_2,", "{path: ln_22,"),
                     ("in: c_fc", "in: c_fcc"), ("name: gpt2", "name: gpt2_typos"),
                     ("[GPT2LMHeadModel]", "[GPT2Typos]"), ("[gpt2]", "[gpt2_typos]")):  # fmt: skip
        assert old in text, old
        text = text.replace(old, new)
    path = tmp_path / "gpt2_typos.yaml"
    path.write_text(text)
    return path


def test_validate_reports_every_missing_module_path_with_file_line_and_suggestions(tmp_path, capsys):
    path = typo_spec(tmp_path)
    spec = validate_spec(read_raw_spec(path))
    problems = spec_problems(spec, loading.random_model(spec), default_registry().plugins.kinds, str(path))
    by_field = {p.field: p for p in problems}
    assert set(by_field) == {"pos_embed.path", "block.ln2.path", "block.mlp.in"}
    lines = path.read_text().splitlines()
    for field, real in (("pos_embed.path", "transformer.wpe"), ("block.ln2.path", "ln_2"), ("block.mlp.in", "c_fc")):
        problem = by_field[field]
        assert problem.file == str(path)
        assert real.split(".")[-1] in lines[problem.line - 1].replace("wpee", "wpe").replace("ln_22", "ln_2").replace(
            "c_fcc", "c_fc"
        )
        assert any(s.endswith(real) for s in problem.error.suggestions), problem.error.suggestions
    assert main(["validate", str(path)]) == 1
    out = capsys.readouterr().out
    assert "3 problem(s)" in out and "c_fcc" in out


def test_validate_accepts_every_built_in_spec(capsys):
    for name in ("gpt2", "gpt_neox", "opt", "gemma2", "t5", "llama"):
        assert main(["validate", default_registry().file(name)]) == 0
    assert capsys.readouterr().out.count("binds to a tiny") == 6


@pytest.mark.parametrize("model_type", ["llama", "mistral", "qwen2", "gemma", "gpt2", "opt", "mixtral", "qwen2_moe"])
def test_scaffold_draft_binds_and_matches_the_model(model_type, tmp_path):
    model, config = meta_model(model_type=model_type)
    path = tmp_path / f"{model_type}.yaml"
    path.write_text(to_yaml(scaffold(model, config)))
    draft = yaml.safe_load(path.read_text())
    draft["name"] = f"{model_type}_draft"
    draft["match"] = {"architectures": [f"Draft{model_type}"]}
    path.write_text(yaml.safe_dump(draft))
    bridge = Bridge.from_spec(str(path))
    reference = copy.deepcopy(bridge.model)
    tokens = torch.randint(0, bridge.cfg.d_vocab, (2, 6))
    fires: dict[str, int] = {}

    def count(tensor, hook):
        fires[hook.name] = fires.get(hook.name, 0) + 1

    with torch.no_grad():
        assert torch.equal(bridge(tokens), reference(tokens).logits)
        bridge.run_with_hooks(tokens, fwd_hooks=[(lambda n: True, count)])
    assert fires == dict.fromkeys(bridge.hook_names(), 1)


def test_scaffold_of_a_default_llama_never_allocates_its_weights():
    model, _ = meta_model(model_type="llama")  # a default Llama config is ~27 GB in fp32
    assert {p.device.type for p in model.parameters()} == {"meta"}
