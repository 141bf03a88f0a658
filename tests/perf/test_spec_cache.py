"""The validated form of a built-in spec kept as plain JSON (bridge_core/spec/validated_cache.py): it
rebuilds the very object pydantic validation makes, binds to the same bound model, and is never used
for a spec whose YAML (or the schema) changed. A first bridge with a warm cache builds no validator."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
import torch

from bridge_core import Bridge
from bridge_core import registry as registry_module
from bridge_core.bridge.loading import random_model
from bridge_core.errors import SpecError
from bridge_core.registry import Registry, SpecEntry
from bridge_core.spec import parsed_cache, validated_cache
from bridge_core.spec.loader import read_raw_spec, resolve_extends, validate_spec
from bridge_core.spec.plain import PlainSpec, decode_plain

_REGISTRY = Registry(use_spec_path=False)
BUILTIN_NAMES = [name for name in _REGISTRY.names() if _REGISTRY.origin(name) == "builtin"]
BUILTIN_FILES = sorted({_REGISTRY.file(name) for name in BUILTIN_NAMES})


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    directory = tmp_path / "cache"
    monkeypatch.setenv(validated_cache.CACHE_VARIABLE, str(directory))
    return directory


@pytest.fixture
def count_validations(monkeypatch) -> list[str]:
    validated: list[str] = []
    real = registry_module.validate_spec

    def counting(raw):
        validated.append(raw.name)
        return real(raw)

    monkeypatch.setattr(registry_module, "validate_spec", counting)
    return validated


def _same_bound(a: Any, b: Any) -> bool:
    """Bound models field by field: the model's own modules and tensors by identity or value, the rest by ==."""
    if dataclasses.is_dataclass(a) and not isinstance(a, type):
        return type(a) is type(b) and all(
            _same_bound(getattr(a, f.name), getattr(b, f.name)) for f in dataclasses.fields(a)
        )
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return type(a) is type(b) and a.shape == b.shape and bool(torch.equal(a, b))
    if isinstance(a, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(map(_same_bound, a, b))
    if isinstance(a, dict):
        return type(a) is type(b) and a.keys() == b.keys() and all(_same_bound(a[k], b[k]) for k in a)
    if a is b:
        return True
    if type(a).__eq__ is object.__eq__ and not isinstance(a, torch.nn.Module):
        # a per-bind object made fresh by each bind (a view's thread-local shape cell): its type and fields
        return type(a) is type(b) and _same_bound(getattr(a, "__dict__", {}), getattr(b, "__dict__", {}))
    return type(a) is type(b) and a == b


@pytest.mark.parametrize("name", BUILTIN_NAMES)
def test_the_fast_form_is_the_validated_spec_and_binds_the_same(cache, count_validations, name):
    Registry(use_spec_path=False).get(name)  # validates and stores
    assert count_validations == [name] and any(cache.iterdir())
    registry = Registry(use_spec_path=False)
    fast = registry.get(name)
    assert count_validations == [name]  # the second registry read the stored form
    validated = validate_spec(resolve_extends(registry.entry(name).raw, registry.raw_spec))
    assert validated_cache.same_model(fast, validated) and fast == validated
    assert fast.where("config") == validated.where("config") and fast.where("config")[1] is not None
    model = random_model(validated)
    reference = Bridge.from_hf(model, validated)._bound
    assert _same_bound(Bridge.from_hf(model, fast)._bound, reference)
    # the plain tree a first bridge binds from (spec/plain.py) binds to the same bound model, and turns
    # into the validated spec
    tree = Registry(use_spec_path=False).for_binding(name)
    assert isinstance(tree, PlainSpec) and count_validations == [name]
    assert tree.where("config") == validated.where("config")
    assert _same_bound(Bridge(model, tree, spec_file=registry.file(name))._bound, reference)
    assert validated_cache.same_model(tree.to_spec(), validated) and tree.to_spec().where("config")[1] is not None


def test_the_bound_comparison_sees_a_different_spec(cache):
    # the equality above is not vacuous: a spec that differs in one field binds differently
    spec = Registry(use_spec_path=False).get("gpt2")
    model = random_model(spec)
    changed = spec.model_copy(update={"block": spec.block.model_copy(update={"attn_out_at": "attn.c_proj"})})
    assert _same_bound(Bridge.from_hf(model, spec)._bound, Bridge.from_hf(model, spec)._bound)
    assert not _same_bound(Bridge.from_hf(model, spec)._bound, Bridge.from_hf(model, changed)._bound)


def test_the_bound_comparison_sees_a_tree_that_differs_in_one_field(cache):
    registry = Registry(use_spec_path=False)
    spec = registry.get("gpt2")  # stored
    tree = Registry(use_spec_path=False).for_binding("gpt2")
    form = json.loads(json.dumps(validated_cache.encode(spec)))
    form["fields"]["block"]["fields"]["attn_out_at"] = "attn.c_proj"
    changed = decode_plain(form, tree._source)
    model = random_model(spec)
    assert _same_bound(Bridge(model, tree)._bound, Bridge.from_hf(model, spec)._bound)
    assert not _same_bound(Bridge(model, changed)._bound, Bridge.from_hf(model, spec)._bound)


def _builtin_entry(registry: Registry, path: Path) -> None:
    raw = read_raw_spec(path)
    registry._entries[raw.name] = SpecEntry(name=raw.name, raw=raw, origin="builtin")
    registry._specs.clear()


def test_an_edited_spec_file_is_validated_again(cache, count_validations, tmp_path):
    source = Path(Registry(use_spec_path=False).file("gpt2"))
    Registry(use_spec_path=False).get("gpt2")
    edited = tmp_path / "gpt2.yaml"
    edited.write_text(source.read_text().replace("description:", "description: edited", 1))
    registry = Registry(use_spec_path=False)
    _builtin_entry(registry, edited)
    spec = registry.get("gpt2")
    assert count_validations == ["gpt2", "gpt2"] and spec.description.startswith("edited")
    assert spec.where("config")[0] == str(edited)
    # an edit that breaks the spec gets validation's typed error, with file and field
    edited.write_text(source.read_text().replace("hf_class:", "hf_clas:", 1))
    _builtin_entry(registry, edited)
    with pytest.raises(SpecError) as caught:
        registry.get("gpt2")
    assert caught.value.file == str(edited) and caught.value.field == "hf_class"  # missing (first of two)


def test_a_changed_schema_or_a_damaged_entry_means_full_validation(cache, count_validations, monkeypatch):
    first = Registry(use_spec_path=False).get("gpt2")
    monkeypatch.setattr(validated_cache, "_schema_hash", "another schema")
    assert Registry(use_spec_path=False).get("gpt2") == first and count_validations == ["gpt2", "gpt2"]
    for entry in cache.iterdir():
        entry.write_text(json.dumps({"$model": "NotASchemaClass", "set": [], "fields": {}}))
    assert Registry(use_spec_path=False).get("gpt2") == first and count_validations == ["gpt2", "gpt2", "gpt2"]


def test_values_json_cannot_state_exactly_are_not_stored(cache):
    spec = Registry(use_spec_path=False).get("gpt2")
    odd = spec.model_copy(update={"test_config": {**spec.test_config, "rope": {1: 2}}})
    before = set(cache.iterdir())
    validated_cache.store("odd", odd)
    assert set(cache.iterdir()) == before
    assert validated_cache.cache_key("odd", {"when": __import__("datetime").date(2020, 1, 1)}) is None


def test_an_empty_cache_variable_turns_the_cache_off(monkeypatch, count_validations):
    monkeypatch.setenv(validated_cache.CACHE_VARIABLE, "")
    Registry(use_spec_path=False).get("gpt2")
    Registry(use_spec_path=False).get("gpt2")
    assert count_validations == ["gpt2", "gpt2"]


def test_a_first_bridge_with_a_warm_cache_parses_no_yaml_and_builds_no_validator(cache, tmp_path):
    probe = textwrap.dedent(
        """
        import json, torch
        from transformers import GPT2Config, GPT2LMHeadModel
        model = GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=64, n_head=4, vocab_size=100)).eval()
        from bridge_core.spec import loader, schema
        parsed, parse = [], loader.parse_raw_spec
        loader.parse_raw_spec = lambda text, file: parsed.append(file) or parse(text, file)
        from bridge_core import Bridge
        bridge = Bridge.from_hf(model)
        assert bridge.cfg.n_layers == 2
        built = [n for n in dir(schema) if getattr(getattr(schema, n), "__pydantic_complete__", False)]
        seen = {"built": built, "parsed": list(parsed)}
        from bridge_core.spec import parsed_cache
        parsed_cache.read_raw(UNSTORED)  # a file with no stored parse: the probe must see it parsed
        print(json.dumps({**seen, "unstored": parsed[len(seen["parsed"]):]}))
        """
    )
    Registry(use_spec_path=False).get("gpt2")  # validated and parsed here, stored for the fresh process
    assert [path.name.split("-")[0] for path in cache.glob("*.json") if not path.name.startswith("parsed-")] == ["gpt2"]
    unstored = tmp_path / "unstored.yaml"
    unstored.write_text(Path(_REGISTRY.file("gpt2")).read_text())
    probe = probe.replace("UNSTORED", repr(str(unstored)))
    run = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    seen = json.loads(run.stdout.strip().splitlines()[-1])
    assert seen["built"] == []  # no schema class built its validator
    assert seen["parsed"] == []  # no YAML parsed, plugins' spec files (the example plugin's, in CI) included
    assert seen["unstored"] == [str(unstored)]  # the probe does see a parse where one happens


def test_a_spec_directory_outside_the_package_keeps_its_parse(cache, tmp_path, monkeypatch):
    """Plugins' spec directories and BRIDGE_CORE_SPEC_PATH are read through the stored parse: the
    second registry parses nothing, and a same-size edit is parsed again (this failed when only
    built-in files were stored)."""
    directory = tmp_path / "specs"
    directory.mkdir()
    spec_file = directory / "mine.yaml"
    text = Path(_REGISTRY.file("gpt2")).read_text().replace("name: gpt2\n", "name: mine\n", 1)
    assert "name: mine\n" in text
    spec_file.write_text(text)
    monkeypatch.setenv(registry_module.SPEC_PATH_VARIABLE, str(directory))
    parsed: list[str] = []
    real = parsed_cache.parse_raw_spec
    monkeypatch.setattr(parsed_cache, "parse_raw_spec", lambda text, file: parsed.append(file) or real(text, file))
    first = Registry()
    assert str(spec_file) in parsed and first.file("mine") == str(spec_file)
    parsed.clear()
    second = Registry()
    assert parsed == []  # the stored parses, not the YAML
    assert second.raw_spec("mine").data == first.raw_spec("mine").data
    assert second.raw_spec("mine").lines == first.raw_spec("mine").lines
    spec_file.write_text(text.replace("name: mine\n", "name: mime\n", 1))  # same size, other bytes
    assert "mime" in Registry().names() and parsed == [str(spec_file)]


def test_an_edited_file_keeps_one_stored_parse(cache, tmp_path):
    """Each edit of a spec file replaces its stored parse rather than adding one (a spec on
    BRIDGE_CORE_SPEC_PATH is edited often); another file's entry is left alone."""
    source = Path(_REGISTRY.file("gpt2")).read_text()
    mine, other = tmp_path / "mine.yaml", tmp_path / "other" / "mine.yaml"  # the same stem
    other.parent.mkdir()
    other.write_text(source)
    parsed_cache.read_raw(other)
    for n in range(3):
        mine.write_text(source.replace("description:", f"description: edit {n}", 1))
        assert parsed_cache.read_raw(mine).data["description"].startswith(f"edit {n}")
    assert len(list(cache.glob("parsed-mine-*.json"))) == 2  # one for each file
    assert parsed_cache.read_raw(other).data == read_raw_spec(other).data


def test_a_stored_parse_is_what_the_yaml_parser_makes_of_every_builtin_file(cache):
    for file in BUILTIN_FILES:
        parsed_cache.read_raw(file)  # parses and stores
    stored = sorted(cache.glob("parsed-*.json"))
    assert len(stored) == len(BUILTIN_FILES)
    for file in BUILTIN_FILES:
        fast, parsed = parsed_cache.read_raw(file), read_raw_spec(file)
        assert validated_cache.same_model(fast.data, parsed.data) and fast.lines == parsed.lines
        assert fast.file == parsed.file and fast.lines  # lines give file:line errors as before
    # the fast reads came from the stored entries: a damaged entry is parsed again, not trusted
    for entry in stored:
        entry.write_text('{"data": {"name": "damaged"}}')
    assert parsed_cache.read_raw(BUILTIN_FILES[0]).data == read_raw_spec(BUILTIN_FILES[0]).data


def test_an_edited_file_is_parsed_again_with_the_parsers_errors(cache, tmp_path):
    source = Path(_REGISTRY.file("gpt2"))
    edited = tmp_path / "gpt2.yaml"
    edited.write_text(source.read_text())
    assert parsed_cache.read_raw(edited).data == read_raw_spec(source).data
    edited.write_text(source.read_text().replace("description:", "description: edited", 1))
    assert parsed_cache.read_raw(edited).data["description"].startswith("edited")
    edited.write_text(source.read_text() + "\nname: again\n")  # a duplicate key: the parser's typed error
    with pytest.raises(SpecError) as caught:
        parsed_cache.read_raw(edited)
    assert caught.value.file == str(edited) and caught.value.field == "name" and "duplicate key" in str(caught.value)


def _builtin_copy(tmp_path: Path) -> list[Path]:
    """The built-in spec files copied into a directory of their own (to edit one)."""
    directory = tmp_path / "specs"
    directory.mkdir()
    for file in BUILTIN_FILES:
        (directory / Path(file).name).write_bytes(Path(file).read_bytes())
    return sorted(directory.glob("*.yaml"))


def test_the_directory_entry_gives_what_the_parser_makes_of_every_builtin_file(cache, monkeypatch):
    paths = [Path(file) for file in BUILTIN_FILES]
    list(parsed_cache.read_builtin_files(paths))  # parses (or reads each file's entry) and stores
    assert len(list(cache.glob("parsed-builtins-*.json"))) == 1
    parses: list[str] = []
    monkeypatch.setattr(parsed_cache, "parse_raw_spec", lambda text, file: parses.append(file))
    monkeypatch.setattr(parsed_cache, "read_raw", lambda path: parses.append(str(path)))
    fast = list(parsed_cache.read_builtin_files(paths))
    assert parses == []  # every spec came from the one entry
    for raw, file in zip(fast, BUILTIN_FILES, strict=True):
        parsed = read_raw_spec(file)
        assert (raw.name, raw.top("match"), raw.top("override")) == (
            parsed.name,
            *map(parsed.data.get, ("match", "override")),
        )
        assert validated_cache.same_model(raw.data, parsed.data) and raw.lines == parsed.lines and raw.file == file
        assert raw == parsed and parsed == raw


def test_an_edited_builtin_file_is_read_again_from_the_directory(cache, tmp_path):
    paths = _builtin_copy(tmp_path)
    gpt2 = next(path for path in paths if path.name == "gpt2.yaml")
    source = gpt2.read_text()
    list(parsed_cache.read_builtin_files(paths))  # stored
    gpt2.write_text(source.replace("OpenAI", "OPENAI", 1))  # same size: seen through the bytes
    raws = {raw.name: raw for raw in parsed_cache.read_builtin_files(paths)}
    assert raws["gpt2"].data["description"].startswith("OPENAI")
    gpt2.write_text(source + "\nname: again\n")  # a duplicate key: the parser's typed error
    with pytest.raises(SpecError) as caught:
        list(parsed_cache.read_builtin_files(paths))
    assert caught.value.file == str(gpt2) and caught.value.field == "name" and "duplicate key" in str(caught.value)


def test_a_damaged_directory_entry_is_not_trusted(cache):
    paths = [Path(file) for file in BUILTIN_FILES]
    list(parsed_cache.read_builtin_files(paths))
    (entry,) = cache.glob("parsed-builtins-*.json")
    stored = json.loads(entry.read_text())
    entry.write_text(json.dumps([[head, "not json"] for head, _ in stored]))
    assert [raw.data for raw in parsed_cache.read_builtin_files(paths)] == [read_raw_spec(p).data for p in paths]
    entry.write_text("[]")  # not one record per file
    assert [raw.data for raw in parsed_cache.read_builtin_files(paths)] == [read_raw_spec(p).data for p in paths]


def test_a_registry_from_the_directory_entry_decodes_only_the_spec_it_binds(cache, monkeypatch):
    Registry(use_spec_path=False).get("gpt2")  # stores the directory and gpt2's validated form
    decoded: list[str] = []
    decode = parsed_cache._decode

    def counting(text: str, file: str) -> Any:
        decoded.append(Path(file).name)
        return decode(text, file)

    monkeypatch.setattr(parsed_cache, "_decode", counting)
    registry = Registry(use_spec_path=False)
    assert isinstance(registry.for_binding("gpt2"), PlainSpec)
    builtin_files = {Path(file).name for file in BUILTIN_FILES}  # plugins' files have entries of their own

    def builtin_decoded() -> list[str]:
        return [name for name in decoded if name in builtin_files]

    assert builtin_decoded() == ["gpt2.yaml"]
    # every built-in spec is still there in full, each decoded once when first read
    assert [name for name in registry.names() if registry.origin(name) == "builtin"] == BUILTIN_NAMES
    assert registry.claims()[("architectures", "GPT2LMHeadModel")] == "gpt2"
    assert sorted(builtin_decoded()) == sorted(builtin_files)
