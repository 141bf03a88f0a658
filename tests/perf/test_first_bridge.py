"""The first bridge in a fresh process pays only for what it uses (#19: a first bridge within 30 ms of
importing torch and transformers): it imports none of the tools a bridge does not need to be built
(conformance, drafting, analysis, processing, patching, SAEs, plots, rich), and it validates only the
spec it uses; the other specs' claims are read from their `match:` as written."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from bridge_core import registry as registry_module
from bridge_core.errors import SpecError
from bridge_core.plugin_host import PluginHost, hookimpl
from bridge_core.registry import Registry

NOT_FOR_A_FIRST_BRIDGE = (
    "bridge_core.conformance",
    "bridge_core.drafting",
    "bridge_core.bridge.analysis",
    "bridge_core.bridge.processing",
    "bridge_core.patching",
    "bridge_core.sae",
    "bridge_core.plots",
    "bridge_core.inspection",
    "bridge_core.scaffold",
    "rich",
    "matplotlib",
)


def _tiny_gpt2() -> GPT2LMHeadModel:
    torch.manual_seed(0)
    config = GPT2Config(n_layer=2, n_embd=64, n_head=4, vocab_size=100, n_positions=32, bos_token_id=0, eos_token_id=0)
    return GPT2LMHeadModel(config).eval()


def test_a_first_bridge_imports_none_of_the_tools_it_does_not_use():
    probe = textwrap.dedent(
        f"""
        import json, sys, torch
        from transformers import GPT2Config, GPT2LMHeadModel
        model = GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=64, n_head=4, vocab_size=100)).eval()
        from bridge_core import Bridge
        bridge = Bridge.from_hf(model)
        assert bridge.cfg.n_layers == 2
        print(json.dumps(sorted(m for m in {NOT_FOR_A_FIRST_BRIDGE!r} if m in sys.modules)))
        """
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert json.loads(done.stdout.strip().splitlines()[-1]) == []


def test_resolving_a_model_validates_only_the_spec_it_uses(monkeypatch):
    monkeypatch.setenv("BRIDGE_CORE_CACHE_DIR", "")  # no stored validated forms: count real validations
    validated: list[str] = []
    real = registry_module.validate_spec

    def counting(raw):
        validated.append(raw.name)
        return real(raw)

    monkeypatch.setattr(registry_module, "validate_spec", counting)
    registry = Registry(use_spec_path=False)
    assert len(registry.names()) > 10
    spec = registry.resolve_for_model(_tiny_gpt2())
    assert spec.name == "gpt2" and validated == ["gpt2"]
    # claims() still validates every spec (`bridge-core list` shows a plugin's broken spec as its failure),
    # and its index agrees with the one read from the raw `match:` fields
    raw_index = dict(registry._index_claims())
    assert registry.claims() == raw_index and sorted(set(validated)) == registry.names()


class _SpecDirPlugin:
    def __init__(self, directory: Path) -> None:
        self.directory = directory

    @hookimpl
    def bridge_core_spec_dirs(self):
        return [str(self.directory)]


def _registry_with_plugin_spec(tmp_path: Path, text: str) -> Registry:
    directory = tmp_path / "specs"
    directory.mkdir()
    (directory / "takeover.yaml").write_text(text)
    host = PluginHost()
    host.register(_SpecDirPlugin(directory), "perf-takeover-plugin")
    return Registry(plugins=host, use_spec_path=False)


def test_a_plugins_spec_that_claims_a_model_but_does_not_validate_is_its_failure_at_resolve(tmp_path):
    # a well-formed claim with `override: true`, but no `hf_class` or `config`: indexing from the raw
    # `match:` gives it GPT-2; resolving validates it, records the failure and falls back to the built-in
    registry = _registry_with_plugin_spec(
        tmp_path, "name: takeover\noverride: true\nmatch:\n  architectures: [GPT2LMHeadModel]\n"
    )
    assert registry._index_claims()[("architectures", "GPT2LMHeadModel")] == "takeover"
    assert registry.resolve_for_model(_tiny_gpt2()).name == "gpt2"
    failures = [f for f in registry.plugins.failures if f.distribution == "perf-takeover-plugin"]
    assert len(failures) == 1 and "takeover.yaml" in failures[0].name and "hf_class" in failures[0].error
    assert ("architectures", "GPT2LMHeadModel") in registry.claims()
    assert registry.claims()[("architectures", "GPT2LMHeadModel")] == "gpt2"


@pytest.mark.parametrize(
    "match",
    ["match: GPT2LMHeadModel\n", "match:\n  architectures: GPT2LMHeadModel\n", "match:\n  architecture: [X]\n"],
)
def test_a_malformed_match_still_gets_its_typed_error_with_file_and_field(tmp_path, match):
    path = tmp_path / "bad_match.yaml"
    path.write_text(f"name: bad_match\nhf_class: GPT2LMHeadModel\nconfig: {{}}\n{match}")
    registry = Registry(use_spec_path=False)
    registry._add_raw(registry_module.read_raw_spec(path), "add_spec")
    with pytest.raises(SpecError) as caught:
        registry.resolve_for_model(_tiny_gpt2())
    assert caught.value.file == str(path) and (caught.value.field or "").startswith("match")
