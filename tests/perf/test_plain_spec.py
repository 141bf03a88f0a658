"""A built-in spec read from a warm cache reaches the binder as a plain attribute tree (bridge_core/spec/plain.py),
so a first bridge imports no pydantic; `bridge.spec` and every public getter still give the pydantic `Spec`."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from typing import Any

import pytest

from bridge_core import Bridge, hookimpl
from bridge_core.registry import Registry
from bridge_core.spec import validated_cache
from bridge_core.spec.loader import resolve_extends, validate_spec
from bridge_core.spec.plain import PlainSpec, decode_plain
from bridge_core.spec.schema import Spec

_PROBE = textwrap.dedent(
    """
    import json, sys
    from transformers import GPT2Config, GPT2LMHeadModel
    model = GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=64, n_head=4, vocab_size=100)).eval()
    before = set(sys.modules)
    from bridge_core import Bridge
    bridge = Bridge.from_hf(model)
    assert bridge.cfg.n_layers == 2 and len(bridge.blocks) == 2
    first = sorted(m for m in ("pydantic", "pydantic_core", "yaml") if m in sys.modules and m not in before)
    spec = bridge.spec  # the public spec: pydantic's, built on this first access
    print(json.dumps({"first": first, "after": "pydantic" in sys.modules, "type": type(spec).__module__}))
    """
)


def test_a_first_bridge_with_a_warm_cache_imports_no_pydantic(tmp_path, monkeypatch):
    monkeypatch.setenv(validated_cache.CACHE_VARIABLE, str(tmp_path / "cache"))
    Registry(use_spec_path=False).get("gpt2")  # validated here and stored for the fresh process
    run = subprocess.run([sys.executable, "-c", _PROBE], capture_output=True, text=True, check=True)
    seen = json.loads(run.stdout.strip().splitlines()[-1])
    # transformers itself imports yaml (GPT-2's modelling code); bridge-core adds neither yaml nor pydantic
    assert seen["first"] == []
    # and the public spec is still pydantic's, which the probe sees imported once it asks for it
    assert seen["after"] is True and seen["type"] == "bridge_core.spec.schema"


def test_bridge_spec_is_the_validated_spec_and_the_registrys(tmp_path, monkeypatch):
    monkeypatch.setenv(validated_cache.CACHE_VARIABLE, str(tmp_path / "cache"))
    Registry(use_spec_path=False).get("gpt2")  # stored
    registry = Registry(use_spec_path=False)
    bridge = Bridge.from_hf(_tiny_gpt2(), registry=registry)
    assert isinstance(bridge._spec, PlainSpec)  # the binder read the tree
    validated = validate_spec(resolve_extends(registry.entry("gpt2").raw, registry.raw_spec))
    assert type(bridge.spec) is Spec and validated_cache.same_model(bridge.spec, validated)
    assert bridge.spec == validated and bridge.spec.where("config") == validated.where("config")
    assert registry.get("gpt2") is bridge.spec  # one Spec per registry, whichever asked first


def test_a_plugin_hook_gets_the_pydantic_spec(tmp_path, monkeypatch):
    monkeypatch.setenv(validated_cache.CACHE_VARIABLE, str(tmp_path / "cache"))
    Registry(use_spec_path=False).get("gpt2")  # stored
    seen: list[Any] = []

    class Recorder:
        @hookimpl
        def bridge_core_adapt_config(self, spec, hf_config):
            seen.append(spec)
            return {"recorded": True}

    registry = Registry(use_spec_path=False)
    registry.plugins.register(Recorder(), "recorder")
    bridge = Bridge.from_hf(_tiny_gpt2(), registry=registry)
    assert [type(spec) for spec in seen] == [Spec] and seen[0] is bridge.spec
    assert bridge.cfg.extra["recorded"] is True


def test_a_damaged_tree_gives_validations_spec(tmp_path, monkeypatch):
    # a stored form whose nested class is not a schema class: the binder's tree reads it, but the public
    # Spec is validation's (never a half-built object)
    monkeypatch.setenv(validated_cache.CACHE_VARIABLE, str(tmp_path / "cache"))
    registry = Registry(use_spec_path=False)
    spec = registry.get("gpt2")
    form = validated_cache.encode(spec)
    form["fields"]["block"]["$model"] = "NotASchemaClass"
    raw = resolve_extends(registry.entry("gpt2").raw, registry.raw_spec)
    with pytest.raises(AttributeError):
        validated_cache.decode(form)  # the broken input does break the direct decode
    rebuilt = decode_plain(form, raw).to_spec()
    assert type(rebuilt) is Spec and validated_cache.same_model(rebuilt, spec)


def _tiny_gpt2():
    from transformers import GPT2Config, GPT2LMHeadModel

    return GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=64, n_head=4, vocab_size=100)).eval()
