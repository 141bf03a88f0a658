"""A built-in spec read from a warm cache reaches the binder as a plain attribute tree (bridge_core/spec/plain.py),
so a first bridge imports no pydantic; `bridge.spec` and every public getter still give the pydantic `Spec`."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

from bridge_core.registry import Registry
from bridge_core.spec import validated_cache

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
