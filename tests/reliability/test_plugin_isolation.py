"""Plugin isolation (docs/architecture.md): a third-party entry point that fails to import, one whose hook raises,
and one that conflicts with the built-ins (a taken kind or spec name, a bad spec file, a missing spec directory,
a claim on a built-in's class) are reported with their distribution while the other plugins and the built-ins
keep working.

The plugins are a real distribution: a `*.dist-info` directory with an `entry_points.txt` in group
`bridge_core`, put on sys.path for the test only.
"""

from __future__ import annotations

import json
import sys

import pytest
import torch

from bridge_core import Bridge
from bridge_core.cli import main
from bridge_core.errors import PluginError, SpecError
from bridge_core.plugin_host import PluginHost, PluginWarning
from bridge_core.registry import Registry, default_registry

DIST = "reliability-bad-plugins"
pytestmark = pytest.mark.filterwarnings("ignore::bridge_core.plugin_host.PluginWarning")  # asserted where they matter


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


# --------------------------------------------------------------------------- conflicting and broken plugins
CONFLICTS = "reliability-conflicting-plugins"
BAD_SPEC = "name: broken_plugin_spec\nmatch: [this is not a mapping\n"
UNKNOWN_KIND = (
    "name: plugin_unknown_kind\nextends: gpt2\nmatch:\n  architectures: [UnknownKindLM]\n"
    "ln_final: {path: transformer.ln_f, kind: no_such_norm_anywhere}\n"
)
HOOKS_RAISE = """
from bridge_core.plugin_host import hookimpl


@hookimpl
def bridge_core_adapt_config(spec, hf_config):
    raise RuntimeError("adapt_config exploded")


@hookimpl
def bridge_core_prepare_model(spec, model):
    raise RuntimeError("prepare_model exploded")
"""


def write_distribution(root, dist: str, modules: dict[str, str]) -> None:
    """A `*.dist-info` with one `bridge_core` entry point per module, each module's source beside it."""
    info = root / f"{dist.replace('-', '_')}-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[bridge_core]\n" + "".join(f"{m} = {m}\n" for m in modules))
    for module, source in modules.items():
        (root / f"{module}.py").write_text(source)


def spec_dirs_module(*dirs) -> str:
    listed = ", ".join(repr(str(d)) for d in dirs)
    head = "from bridge_core.plugin_host import hookimpl\n\n\n@hookimpl\n"
    return f"{head}def bridge_core_spec_dirs():\n    return [{listed}]\n"


@pytest.fixture
def conflicting_distribution(tmp_path, monkeypatch):
    """One third-party distribution doing everything the issue lists, plus one good kind and one good spec."""
    suffix = tmp_path.name.replace("-", "_")
    specs = tmp_path / "specs"
    specs.mkdir()
    (specs / "a_gpt2_again.yaml").write_text("name: gpt2\nextends: llama\n")  # a taken name, no override
    (specs / "broken.yaml").write_text(BAD_SPEC)
    (specs / "claims_gpt2.yaml").write_text(
        "name: plugin_gpt2_claim\nextends: gpt2\nmatch:\n  architectures: [GPT2LMHeadModel]\n"
    )
    (specs / "claims_llama.yaml").write_text(
        "name: plugin_llama_override\nextends: llama\noverride: true\nmatch:\n  architectures: [LlamaForCausalLM]\n"
    )
    (specs / "own.yaml").write_text("name: plugin_own\nextends: gpt2\nmatch:\n  architectures: [PluginOwnLM]\n")
    (specs / "unknown_kind.yaml").write_text(UNKNOWN_KIND)
    modules = {
        f"rel_dup_kind_{suffix}": (
            "from bridge_core.kinds import NormKind\nfrom bridge_core.plugin_host import hookimpl\n\n\n"
            "@hookimpl\ndef bridge_core_norm_kinds():\n"
            '    return [NormKind("layernorm", centered=False), NormKind("conflict_ok_norm", centered=False)]\n'
        ),
        f"rel_specs_{suffix}": spec_dirs_module(specs, tmp_path / "no_such_directory"),
        f"rel_hooks_raise_{suffix}": HOOKS_RAISE,
    }
    write_distribution(tmp_path, CONFLICTS, modules)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delenv("BRIDGE_CORE_SPEC_PATH", raising=False)
    yield modules
    for module in modules:
        sys.modules.pop(module, None)


def conflict_failures(host: PluginHost) -> list[str]:
    return [f"{f.name}: {f.error}" for f in host.failures if f.distribution == CONFLICTS]


def quiet_registry() -> Registry:
    with pytest.warns(PluginWarning):  # the claim conflict warns once, when claims are first indexed
        registry = Registry(plugins=PluginHost(), use_spec_path=False)
        registry.claims()
    return registry


def test_a_plugin_reusing_a_builtin_kind_name_is_its_own_failure_and_its_other_kinds_load(conflicting_distribution):
    host = PluginHost()
    kinds = host.kinds
    assert kinds.origins[("norm", "layernorm")] == "bridge-core:norms" and kinds.norms["layernorm"].centered
    assert "conflict_ok_norm" in kinds.norms
    failure = next(f for f in host.failures if "layernorm" in f.error)
    assert failure.distribution == CONFLICTS and failure.name.startswith("rel_dup_kind_")
    assert not any(f.distribution == "bridge-core" for f in host.failures)


def test_a_plugins_taken_spec_name_bad_spec_file_and_missing_directory_are_its_failures(conflicting_distribution):
    registry = quiet_registry()
    failures = conflict_failures(registry.plugins)
    assert any(f.startswith("a_gpt2_again.yaml") and "'gpt2' is already registered" in f for f in failures)
    assert any(f.startswith("broken.yaml") for f in failures)
    assert any(f.startswith("spec_dirs") and "no_such_directory" in f for f in failures)
    assert registry.origin("gpt2") == "builtin", "the built-in keeps its name"
    assert {"plugin_own", "plugin_llama_override"} <= set(registry.names()), "the plugin's good specs load"
    with torch.no_grad():
        bridge = Bridge.from_spec("gpt2", registry=registry)
        assert bridge(torch.tensor([[1, 2, 3]])).shape[-1] == bridge.cfg.d_vocab


def test_a_plugin_spec_claiming_a_builtin_class_without_override_warns_and_the_builtin_keeps_it(
    conflicting_distribution,
):
    registry = Registry(plugins=PluginHost(), use_spec_path=False)
    gpt2 = Bridge.from_spec("gpt2", registry=registry).model
    with pytest.warns(PluginWarning, match="plugin_gpt2_claim.*GPT2LMHeadModel.*override: true"):
        assert registry.resolve_for_model(gpt2).name == "gpt2"
    assert Bridge.from_hf(gpt2, registry=registry).spec.name == "gpt2"
    assert any(f.startswith("claims_gpt2.yaml: match:") for f in conflict_failures(registry.plugins))
    assert registry.resolve_for_model(Bridge.from_spec("opt", registry=registry).model).name == "opt"


def test_a_plugin_spec_with_override_true_takes_the_builtins_class(conflicting_distribution):
    registry = quiet_registry()
    llama = Bridge.from_spec("llama", registry=registry).model
    assert registry.resolve_for_model(llama).name == "plugin_llama_override"
    assert not any(f.startswith("claims_llama.yaml") for f in conflict_failures(registry.plugins))


def test_a_plugin_spec_that_does_not_validate_is_its_failure_and_other_models_resolve(conflicting_distribution):
    registry = quiet_registry()
    assert any(
        f.startswith("unknown_kind.yaml") and "no_such_norm_anywhere" in f for f in conflict_failures(registry.plugins)
    )
    assert registry.resolve_for_model(Bridge.from_spec("qwen2", registry=registry).model).name == "qwen2"
    with pytest.raises(SpecError, match="no_such_norm_anywhere"):  # asked for by name, it still says why
        registry.get("plugin_unknown_kind")


def test_a_plugin_whose_build_hooks_raise_is_skipped_with_a_warning_for_other_specs(conflicting_distribution):
    registry = quiet_registry()
    with pytest.warns(PluginWarning, match="prepare_model exploded"):
        model = Bridge.from_spec("llama", registry=registry).model
    with pytest.warns(PluginWarning, match="adapt_config exploded"):
        bridge = Bridge.from_hf(model, spec="llama", registry=registry)
    with torch.no_grad():
        assert bridge(torch.tensor([[1, 2, 3]])).shape[-1] == bridge.cfg.d_vocab
    hooks = {f.error.split(":")[0] for f in registry.plugins.failures if f.distribution == CONFLICTS}
    assert {"bridge_core_adapt_config", "bridge_core_prepare_model"} <= hooks


def test_a_raising_build_hook_fails_the_build_of_its_own_plugins_spec_naming_the_distribution(
    conflicting_distribution,
):
    registry = quiet_registry()
    with pytest.raises(PluginError, match="prepare_model exploded") as info:
        Bridge.from_spec("plugin_own", registry=registry)
    assert info.value.distribution == CONFLICTS and info.value.hook == "bridge_core_prepare_model"


def test_bridge_core_list_shows_each_broken_plugin_with_its_error(conflicting_distribution, capsys):
    default_registry.cache_clear()
    try:
        assert main(["list", "--json"]) == 0
    finally:
        default_registry.cache_clear()
    listing = json.loads(capsys.readouterr().out)
    names = {row["name"] for row in listing["specs"]}
    assert {"gpt2", "llama", "plugin_own"} <= names and "plugin_unknown_kind" not in names
    mine = [f"{f['name']}: {f['error']}" for f in listing["failed_plugins"] if f["distribution"] == CONFLICTS]
    for item in ("a_gpt2_again.yaml", "broken.yaml", "spec_dirs", "claims_gpt2.yaml", "unknown_kind.yaml"):
        assert any(line.startswith(item) for line in mine), item
    assert any("layernorm" in line for line in mine)
