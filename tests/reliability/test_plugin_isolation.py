"""Plugin isolation (docs/architecture.md): a third-party entry point that fails to import, and one whose hook raises,
are reported with their distribution while the other plugins and the built-ins keep working.

The plugins are a real distribution: a `*.dist-info` directory with an `entry_points.txt` in group
`bridge_core`, put on sys.path for the test only.
"""

from __future__ import annotations

import sys

import pytest
import torch

from bridge_core import Bridge
from bridge_core.errors import PluginError
from bridge_core.plugin_host import PluginHost
from bridge_core.registry import Registry

DIST = "reliability-bad-plugins"


@pytest.fixture
def bad_distribution(tmp_path, monkeypatch):
    suffix = tmp_path.name.replace("-", "_")
    modules = {
        "import_fails": f"rel_import_fails_{suffix}",
        "norms_raise": f"rel_norms_raise_{suffix}",
        "good": f"rel_good_{suffix}",
    }
    info = tmp_path / "reliability_bad_plugins-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {DIST}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(
        "[bridge_core]\n" + "".join(f"{name} = {module}\n" for name, module in modules.items())
    )
    (tmp_path / f"{modules['import_fails']}.py").write_text("import a_module_that_does_not_exist_anywhere\n")
    (tmp_path / f"{modules['norms_raise']}.py").write_text(
        "from bridge_core.plugin_host import hookimpl\n\n\n"
        "@hookimpl\n"
        "def bridge_core_norm_kinds():\n"
        '    raise RuntimeError("norm kinds exploded")\n'
    )
    (tmp_path / f"{modules['good']}.py").write_text(
        "from bridge_core.kinds import NormKind\n"
        "from bridge_core.plugin_host import hookimpl\n\n\n"
        "@hookimpl\n"
        "def bridge_core_norm_kinds():\n"
        '    return [NormKind("reliability_norm", centered=False)]\n'
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    yield modules
    for module in modules.values():
        sys.modules.pop(module, None)


def test_an_entry_point_that_fails_to_import_is_recorded_with_its_distribution(bad_distribution):
    host = PluginHost()
    failures = [(f.distribution, f.name) for f in host.failures]
    assert failures == [(DIST, "import_fails")]
    assert (
        "ModuleNotFoundError" in host.failures[0].error
        and "a_module_that_does_not_exist_anywhere" in host.failures[0].error
    )
    assert host.pm.has_plugin(f"{DIST}:good") and host.pm.has_plugin(f"{DIST}:norms_raise")
    assert any(name.startswith("bridge-core:") for name, _ in host.pm.list_name_plugin()), "built-ins loaded"


def test_a_hook_that_raises_is_recorded_with_its_distribution_and_hook(bad_distribution):
    host = PluginHost()
    _ = host.kinds
    failure = next(f for f in host.failures if f.name == "norms_raise")
    assert failure.distribution == DIST
    assert "bridge_core_norm_kinds" in failure.error and "norm kinds exploded" in failure.error


def test_outside_kind_collection_a_raising_hook_is_a_plugin_error_naming_its_distribution(bad_distribution):
    host = PluginHost()
    with pytest.raises(PluginError) as info:
        host.results("bridge_core_norm_kinds")
    assert info.value.distribution == DIST
    assert info.value.hook == "bridge_core_norm_kinds"
    assert "norm kinds exploded" in str(info.value)
    assert isinstance(info.value.__cause__, RuntimeError)


def test_the_builtins_and_the_other_plugins_still_work_beside_a_plugin_whose_hook_raises(bad_distribution):
    host = PluginHost()
    kinds = host.kinds
    assert "layernorm" in kinds.norms and "reliability_norm" in kinds.norms
    assert any(f.distribution == DIST and "norms_raise" in f.name for f in host.failures)
    registry = Registry(plugins=host, use_spec_path=False)
    bridge = Bridge.from_spec("gpt2", registry=registry)
    with torch.no_grad():
        assert bridge(torch.tensor([[1, 2, 3]])).shape[-1] == bridge.cfg.d_vocab


def test_with_the_raising_plugin_unregistered_the_builtins_and_the_good_plugin_work(bad_distribution):
    host = PluginHost()
    host.unregister(f"{DIST}:norms_raise")
    assert "reliability_norm" in host.kinds.norms and "layernorm" in host.kinds.norms
    bridge = Bridge.from_spec("gpt2", registry=Registry(plugins=host, use_spec_path=False))
    with torch.no_grad():
        assert bridge(torch.tensor([[1, 2, 3]])).shape[-1] == bridge.cfg.d_vocab
