"""The registry (spec path, add_spec, extends, claims, lookup by HF config) and the plugin host
(in-process plugins adding kinds, entry points that fail to import, duplicate kinds, pluggy call order)."""

from __future__ import annotations

import copy
import importlib.metadata
import os
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from transformers import GPT2Config

from bridge_core import Bridge, PluginError, Registry, SpecError, hookimpl
from bridge_core.errors import SpecNotFoundError
from bridge_core.kinds import NormKind
from bridge_core.plugin_host import ENTRY_POINT_GROUP, PluginHost
from bridge_core.registry import SPEC_PATH_VARIABLE

from ._helpers import FAKE_DIST, gelu_new, hf_logits, tiny_gpt2, tokens, write_fake_distribution


@pytest.fixture(autouse=True)
def no_spec_path(monkeypatch):
    monkeypatch.delenv(SPEC_PATH_VARIABLE, raising=False)


def child(name: str, *, parent: str = "gpt2", arch: str | None = None, extra: str = "", override: bool = False) -> str:
    text = f"name: {name}\nextends: {parent}\nmatch:\n  architectures: [{arch or name.title() + 'LM'}]\n"
    if override:
        text += "override: true\n"
    return text + extra


def write(directory: Path, name: str, text: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{name}.yaml"
    path.write_text(text, encoding="utf-8")
    return path


# --------------------------------------------------------------------------- sources
def test_builtin_gpt2_spec_is_registered_with_origin_builtin():
    registry = Registry()
    assert "gpt2" in registry.names()
    assert registry.origin("gpt2") == "builtin"
    assert Path(registry.file("gpt2")).name == "gpt2.yaml"


def test_spec_path_directories_are_registered_with_their_origin(tmp_path, monkeypatch):
    first, second = tmp_path / "first", tmp_path / "second"
    write(first, "from_first", child("from_first"))
    write(second, "from_second", child("from_second"))
    monkeypatch.setenv(SPEC_PATH_VARIABLE, f"{first}{os.pathsep}{second}")
    registry = Registry()
    assert {"from_first", "from_second", "gpt2"} <= set(registry.names())
    assert registry.origin("from_first") == f"path:{first}"
    assert registry.origin("from_second") == f"path:{second}"
    assert registry.get("from_second").block.attn.qkv.path == "c_attn"


def test_a_spec_path_directory_that_does_not_exist_is_a_spec_error_naming_it(tmp_path, monkeypatch):
    missing = tmp_path / "missing"
    monkeypatch.setenv(SPEC_PATH_VARIABLE, str(missing))
    with pytest.raises(SpecError) as info:
        Registry()
    assert info.value.file == str(missing)


def test_add_spec_registers_one_file_with_origin_add_spec(tmp_path):
    registry = Registry()
    path = write(tmp_path, "added", child("added"))
    spec = registry.add_spec(path)
    assert spec.name == "added" and registry.get("added") is spec
    assert registry.origin("added") == "add_spec"
    assert registry.file("added") == str(path)


def test_a_spec_extending_gpt2_inherits_everything_but_its_claims_and_overrides_what_it_sets(tmp_path):
    registry = Registry()
    extra = "test_config:\n  n_layer: 1\nblock:\n  attn:\n    softmax_dtype: float32\n"
    spec = registry.add_spec(write(tmp_path, "gpt2_f32", child("gpt2_f32", arch="GPT2F32LM", extra=extra)))
    gpt2 = registry.get("gpt2")
    assert spec.block.attn.softmax_dtype == "float32"
    assert spec.block.attn.qkv == gpt2.block.attn.qkv and spec.block.mlp == gpt2.block.mlp
    assert spec.config == gpt2.config
    assert spec.test_config["n_layer"] == 1
    assert {k: v for k, v in spec.test_config.items() if k != "n_layer"} == {
        k: v for k, v in gpt2.test_config.items() if k != "n_layer"
    }
    assert spec.match.architectures == ["GPT2F32LM"] and spec.match.model_type == []
    assert gpt2.block.attn.softmax_dtype == "input", "the parent is unchanged"


@torch.no_grad()
def test_a_model_bridged_with_an_extending_spec_matches_the_untouched_model(tmp_path):
    registry = Registry()
    extra = "block:\n  attn:\n    softmax_dtype: float32\n"
    spec = registry.add_spec(write(tmp_path, "gpt2_f32", child("gpt2_f32", extra=extra)))
    model = tiny_gpt2("2L-h2-dh16-inner48")
    reference = copy.deepcopy(model)
    bridge = Bridge.from_hf(model, spec=spec, registry=registry)
    toks = tokens()
    assert torch.equal(bridge(toks), hf_logits(reference, toks, None))
    logits, cache = bridge.run_with_cache(toks)
    torch.testing.assert_close(logits, hf_logits(reference, toks, None), rtol=0, atol=1e-5)
    assert "blocks.1.attn.hook_pattern" in cache


# --------------------------------------------------------------------------- claims
def test_two_specs_claiming_the_same_architecture_is_a_spec_error_naming_both(tmp_path):
    registry = Registry()
    path = write(tmp_path, "claimer", child("claimer", arch="GPT2LMHeadModel"))
    with pytest.raises(SpecError) as info:
        registry.add_spec(path)
    message = str(info.value)
    assert str(path) in message and registry.file("gpt2") in message
    assert "override" in message
    assert "claimer" not in registry.names(), "a refused spec is not left registered"
    assert registry.resolve(GPT2Config(architectures=["GPT2LMHeadModel"])).name == "gpt2"


def test_two_specs_in_the_spec_path_claiming_one_architecture_is_an_error_naming_both(tmp_path, monkeypatch):
    a = write(tmp_path, "twin_a", child("twin_a", arch="TwinLM"))
    b = write(tmp_path, "twin_b", child("twin_b", arch="TwinLM"))
    monkeypatch.setenv(SPEC_PATH_VARIABLE, str(tmp_path))
    registry = Registry()
    with pytest.raises(SpecError) as info:
        registry.resolve(SimpleNamespace(architectures=["TwinLM"], model_type=None))
    assert str(a) in str(info.value) and str(b) in str(info.value)


def test_override_true_lets_a_spec_take_over_an_architecture(tmp_path):
    registry = Registry()
    registry.add_spec(write(tmp_path, "winner", child("winner", arch="GPT2LMHeadModel", override=True)))
    assert registry.resolve(GPT2Config(architectures=["GPT2LMHeadModel"])).name == "winner"
    assert registry.resolve(GPT2Config()).name == "gpt2", "model_type is still gpt2's"
    model = tiny_gpt2("1L-h4-dh8-inner_none")
    assert Bridge.from_hf(model, registry=registry).spec.name == "winner"


def test_a_second_spec_with_the_same_name_is_an_error_unless_it_overrides(tmp_path):
    registry = Registry()
    registry.add_spec(write(tmp_path / "a", "same", child("same", arch="SameA")))
    with pytest.raises(SpecError) as info:
        registry.add_spec(write(tmp_path / "b", "same", child("same", arch="SameB")))
    assert str(tmp_path / "a" / "same.yaml") in str(info.value)
    registry.add_spec(write(tmp_path / "c", "same", child("same", arch="SameC", override=True)))
    assert registry.get("same").match.architectures == ["SameC"]


# --------------------------------------------------------------------------- lookup
def test_resolve_tries_architectures_first_then_model_type(tmp_path):
    registry = Registry()
    registry.add_spec(write(tmp_path, "seqcls", child("seqcls", arch="GPT2ForSequenceClassification")))
    assert registry.resolve(GPT2Config(architectures=["GPT2ForSequenceClassification"])).name == "seqcls"
    assert registry.resolve(GPT2Config(architectures=["GPT2LMHeadModel"])).name == "gpt2"
    assert registry.resolve(GPT2Config(architectures=["SomethingElse"])).name == "gpt2"  # by model_type
    assert registry.resolve(GPT2Config()).name == "gpt2"


def test_resolve_failure_names_what_was_tried():
    with pytest.raises(SpecNotFoundError) as info:
        Registry().resolve(SimpleNamespace(architectures=["MysteryForCausalLM"], model_type="mystery"))
    assert isinstance(info.value, LookupError)
    assert "MysteryForCausalLM" in str(info.value) and "'mystery'" in str(info.value)


def test_get_of_an_unknown_name_suggests_close_names():
    with pytest.raises(SpecNotFoundError) as info:
        Registry().get("gtp2")
    assert "gpt2" in str(info.value)


@torch.no_grad()
def test_from_hf_finds_the_gpt2_spec_from_the_model_itself():
    model = tiny_gpt2("1L-h4-dh8-inner_none")
    assert model.config.architectures is None  # built from a config: only the class name says what it is
    bridge = Bridge.from_hf(model)
    assert bridge.spec.name == "gpt2"


# --------------------------------------------------------------------------- plugins
class ExtraNorm:
    """A plugin object registering a norm kind (LayerNorm under another name)."""

    @hookimpl
    def bridge_core_norm_kinds(self):
        return [NormKind("plugin_layernorm", centered=True)]


class ExtraActivation:
    @hookimpl
    def bridge_core_activation_functions(self):
        return {"plugin_gelu": gelu_new}


def test_a_plugin_registered_in_process_adds_a_norm_kind_and_an_activation():
    host = PluginHost(load_entry_points=False)
    host.register(ExtraNorm(), "tests:norm")
    host.register(ExtraActivation(), "tests:activation")
    kinds = host.kinds
    assert set(kinds.norms) == {"plugin_layernorm"}, "no entry points were loaded"
    assert kinds.activations == {"plugin_gelu": gelu_new}
    assert kinds.origins[("norm", "plugin_layernorm")] == "tests:norm"
    host.unregister("tests:norm")
    assert "plugin_layernorm" not in host.kinds.norms


@torch.no_grad()
def test_a_kind_added_by_a_plugin_is_usable_from_yaml_with_no_core_change(tmp_path):
    host = PluginHost(load_entry_points=False)
    host.load_entry_points()
    host.register(ExtraNorm(), "tests:norm")
    host.register(ExtraActivation(), "tests:activation")
    registry = Registry(plugins=host)
    extra = (
        "ln_final: {path: transformer.ln_f, kind: plugin_layernorm}\n"
        "block:\n  ln2: {path: ln_2, kind: plugin_layernorm}\n  mlp:\n    act_fn: plugin_gelu\n"
    )
    spec = registry.add_spec(write(tmp_path, "plugged", child("plugged", extra=extra)))
    model = tiny_gpt2("2L-h2-dh16-inner48")
    reference = copy.deepcopy(model)
    bridge = Bridge.from_hf(model, spec=spec, registry=registry)
    assert bridge.act_fn is gelu_new
    toks = tokens()
    logits, cache = bridge.run_with_cache(toks)
    torch.testing.assert_close(logits, hf_logits(reference, toks, None), rtol=0, atol=1e-5)
    x = cache["blocks.1.hook_resid_post"]
    centered = x - x.mean(-1, keepdim=True)
    by_hand = centered / (centered.pow(2).mean(-1, keepdim=True) + reference.transformer.ln_f.eps).sqrt()
    torch.testing.assert_close(cache["ln_final.hook_normalized"], by_hand, rtol=0, atol=1e-5)


def test_the_same_kind_name_from_two_plugins_is_the_later_plugins_failure_naming_both():
    host = PluginHost(load_entry_points=False)
    host.register(ExtraNorm(), "first-dist:norms")
    host.register(ExtraNorm(), "second-dist:norms")
    kinds = host.kinds
    keeper = kinds.origins[("norm", "plugin_layernorm")]
    (failure,) = [f for f in host.failures if "plugin_layernorm" in f.error]
    assert {keeper, f"{failure.distribution}:{failure.name}"} == {"first-dist:norms", "second-dist:norms"}
    assert "first-dist:norms" in failure.error and "second-dist:norms" in failure.error


def test_a_plugin_redefining_a_builtin_kind_is_its_failure_and_the_builtin_keeps_the_name():
    class Shadow:
        @hookimpl
        def bridge_core_norm_kinds(self):
            return [NormKind("layernorm", centered=False)]

    host = PluginHost()
    host.register(Shadow(), "shadow-dist:norms")
    assert host.kinds.norms["layernorm"].centered and host.kinds.origins[("norm", "layernorm")] == "bridge-core:norms"
    (failure,) = [f for f in host.failures if "layernorm" in f.error]
    assert (failure.distribution, failure.name) == ("shadow-dist", "norms")


def test_a_plugin_hook_that_raises_is_recorded_and_the_other_kinds_still_load():
    class Failing:
        @hookimpl
        def bridge_core_activation_functions(self):
            raise RuntimeError("plugin bug")

    host = PluginHost(load_entry_points=False)
    host.register(Failing(), "failing-dist:acts")
    kinds = host.kinds  # one broken plugin does not take the others down
    assert kinds.activations == {}
    (failure,) = host.failures
    assert failure.distribution == "failing-dist" and failure.name == "acts"
    assert "bridge_core_activation_functions" in failure.error and "plugin bug" in failure.error
    with pytest.raises(PluginError) as info:  # asked for directly, the hook's failure is a typed error
        host.results("bridge_core_activation_functions")
    assert info.value.hook == "bridge_core_activation_functions" and info.value.distribution == "failing-dist"


@pytest.fixture
def fake_distribution(tmp_path, monkeypatch):
    """A distribution on sys.path with two `bridge_core` entry points: one raises on import, one works."""
    root, modules = write_fake_distribution(tmp_path / "site", tmp_path.name)
    monkeypatch.syspath_prepend(str(root))
    yield root
    for name in modules:
        sys.modules.pop(name, None)


def test_the_fake_distribution_is_visible_to_importlib_metadata(fake_distribution):
    found = {(ep.dist.name, ep.name) for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)}
    assert {(FAKE_DIST, "broken"), (FAKE_DIST, "good")} <= found


def test_an_entry_point_that_fails_to_import_is_recorded_with_its_distribution_while_the_others_load(
    fake_distribution,
):
    host = PluginHost()
    assert [(f.distribution, f.name) for f in host.failures] == [(FAKE_DIST, "broken")]
    assert "deliberately broken" in host.failures[0].error
    assert host.pm.has_plugin(f"{FAKE_DIST}:good")
    assert "fake_good_norm" in host.kinds.norms and "layernorm" in host.kinds.norms
    assert Registry(plugins=host).get("gpt2").name == "gpt2", "built-ins still load"


# --------------------------------------------------------------------------- results go through pluggy's hook calling
def _answering(name: str, **opts):
    class Plugin:
        @hookimpl(**opts)
        def bridge_core_activation_functions(self):
            return {name: gelu_new}

    return Plugin()


def test_results_follow_pluggys_call_order_tryfirst_and_trylast():
    host = PluginHost(load_entry_points=False)
    host.register(_answering("late", trylast=True), "d:late")
    host.register(_answering("plain1"), "d:plain1")
    host.register(_answering("early", tryfirst=True), "d:early")
    host.register(_answering("plain2"), "d:plain2")
    names = [plugin for plugin, _ in host.results("bridge_core_activation_functions")]
    assert names == ["d:early", "d:plain2", "d:plain1", "d:late"]  # pluggy: tryfirst, then LIFO, then trylast
    assert list(host.kinds.activations) == ["early", "plain2", "plain1", "late"]


def test_a_wrapper_plugin_sees_and_changes_every_plugins_answer():
    class HideExperimental:
        @hookimpl(wrapper=True)
        def bridge_core_activation_functions(self):
            answers = yield
            return [{k: v for k, v in answer.items() if not k.startswith("experimental_")} for answer in answers]

    host = PluginHost(load_entry_points=False)
    host.register(_answering("experimental_gelu"), "d:experimental")
    host.register(_answering("kept"), "d:kept")
    host.register(HideExperimental(), "d:wrapper")
    assert host.kinds.activations == {"kept": gelu_new}
    assert ("d:kept", {"kept": gelu_new}) in host.results("bridge_core_activation_functions")


def test_a_firstresult_hook_stops_at_the_first_answer_as_in_pluggy():
    from bridge_core.hookspecs import hookspec

    class Specs:
        @hookspec(firstresult=True)
        def bridge_core_test_first(self): ...

    def answering(value):
        class Plugin:
            @hookimpl
            def bridge_core_test_first(self):
                return value

        return Plugin()

    host = PluginHost(load_entry_points=False)
    host.pm.add_hookspecs(Specs)
    host.register(answering("second"), "d:second")
    host.register(answering("first"), "d:first")
    host.register(answering(None), "d:none")  # called first, answers nothing
    assert host.results("bridge_core_test_first") == [("d:first", "first")]
    assert host.pm.hook.bridge_core_test_first() == "first", "what pluggy itself answers"
