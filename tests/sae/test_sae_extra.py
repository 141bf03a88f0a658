"""The SAE integration is an optional extra: `bridge-core[sae]` declares sae-lens, the core does not, and
without sae-lens the integration raises a typed error naming the extra."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import tomllib

import bridge_core.sae as sae_module
from bridge_core import Bridge
from bridge_core.errors import BridgeCoreError
from bridge_core.sae import SAEBridge, SAEDependencyError

PYPROJECT = Path(__file__).resolve().parents[2] / "pyproject.toml"


def test_sae_lens_is_an_optional_extra_and_never_a_core_dependency():
    project = tomllib.loads(PYPROJECT.read_text())["project"]
    assert project["optional-dependencies"]["sae"] == ["sae-lens>=6,<7"]
    assert not any(dep.startswith("sae-lens") for dep in project["dependencies"])


def test_without_sae_lens_the_integration_raises_a_typed_error_naming_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "sae_lens", None)  # what an absent package looks like to `import`
    with pytest.raises(SAEDependencyError, match=r"bridge-core\[sae\]") as caught:
        SAEBridge.from_bridge(Bridge.from_spec("gpt2", tiny=True))
    assert isinstance(caught.value, BridgeCoreError) and isinstance(caught.value, ImportError)


def test_the_module_imports_without_sae_lens():
    if importlib.util.find_spec("sae_lens") is not None:
        pytest.skip("sae-lens is installed in this venv")
    assert sae_module.SAE_EXTRA.startswith('pip install "bridge-core[sae]"')
