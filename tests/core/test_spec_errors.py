"""Malformed specs give typed errors that say which file, which line and which field (docs/architecture.md#errors).

Each case writes a bad YAML file to tmp_path, made from a GPT-2 spec kept in this file (so that the
tests do not depend on edits to the built-in spec), and checks the error's type, `.file`, `.line`
(the line of the offending field) and `.field`.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from bridge_core import BindError, Bridge, Registry, SpecError
from bridge_core.errors import UnknownKindError
from bridge_core.registry import SPEC_PATH_VARIABLE
from bridge_core.spec.loader import load_spec

BASE_SPEC = """\
# A GPT-2 spec for error tests (a copy of the built-in one's shape).
name: probe_gpt2
description: GPT-2 under another name, for the spec error tests.
match:
  architectures: [ProbeGPT2LMHeadModel]
hf_class: GPT2LMHeadModel

config:
  n_layers: n_layer
  d_model: n_embd
  n_heads: n_head
  d_head: n_embd // n_head
  d_mlp: n_inner or 4 * n_embd
  d_vocab: vocab_size
  n_ctx: n_positions
  eps: layer_norm_epsilon
  act_fn: activation_function

test_config:
  n_layer: 2
  n_embd: 32
  n_head: 2
  vocab_size: 61
  n_positions: 16
  bos_token_id: 60
  eos_token_id: 60

embed:
  path: transformer.wte
pos_embed:
  kind: learned
  path: transformer.wpe
blocks: transformer.h
block:
  kind: sequential
  ln1: {path: ln_1, kind: layernorm}
  attn:
    path: attn
    layout: conv1d
    qkv: {kind: fused, path: c_attn, order: qkv}
    o: c_proj
  ln2: {path: ln_2, kind: layernorm}
  mlp:
    path: mlp
    kind: plain
    layout: conv1d
    in: c_fc
    out: c_proj
ln_final: {path: transformer.ln_f, kind: layernorm}
unembed:
  path: [lm_head, embed_out]
"""


def edited(old: str, new: str, text: str = BASE_SPEC) -> str:
    assert text.count(old) == 1, f"{old!r} must occur exactly once in the base spec"
    return text.replace(old, new)


def line_of(text: str, needle: str) -> int:
    """1-based number of the one line that contains `needle`."""
    hits = [i for i, line in enumerate(text.splitlines(), start=1) if needle in line]
    assert len(hits) == 1, f"{needle!r} is on lines {hits}"
    return hits[0]


def write(tmp_path: Path, text: str, name: str = "probe_gpt2.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_the_base_spec_is_valid_and_binds(tmp_path):
    path = write(tmp_path, BASE_SPEC)
    assert load_spec(path).name == "probe_gpt2"
    bridge = Bridge.from_spec(path)
    assert bridge.cfg.n_layers == 2 and bridge.cfg.d_head == 16


# --------------------------------------------------------------------------- loading and validation
@pytest.mark.parametrize(
    "old,new,needle,field",
    [
        ("  d_head: n_embd // n_head", "  d_head: n_embd // n_head: 2", "d_head: n_embd", None),
        ("  o: c_proj\n", "  o: c_proj\n    o: c_proj\n  bad: [\n", "bad: [", None),
    ],
    ids=["mapping_value_in_scalar", "unclosed_flow_sequence"],
)
def test_yaml_syntax_error_is_a_spec_error_at_its_line(tmp_path, old, new, needle, field):
    text = edited(old, new)
    path = write(tmp_path, text)
    with pytest.raises(SpecError) as info:
        load_spec(path)
    assert info.value.file == str(path)
    if needle == "bad: [":
        assert info.value.line is not None and info.value.line >= line_of(text, needle) - 1
    else:
        assert info.value.line == line_of(text, needle)


@pytest.mark.parametrize(
    "old,new,needle,field",
    [
        ("    o: c_proj\n", "    o: c_proj\n    colour: red\n", "colour: red", "block.attn.colour"),
        (
            "hf_class: GPT2LMHeadModel\n",
            "hf_class: GPT2LMHeadModel\nunembedd: {path: lm_head}\n",
            "unembedd",
            "unembedd",
        ),
        ("  kind: learned\n", "  kind: learned\n  ofset: 2\n", "ofset", "pos_embed.ofset"),
    ],
    ids=["nested", "top_level", "misspelt"],
)
def test_unknown_field_names_its_file_line_and_field(tmp_path, old, new, needle, field):
    text = edited(old, new)
    path = write(tmp_path, text)
    with pytest.raises(SpecError) as info:
        load_spec(path)
    assert (info.value.file, info.value.line, info.value.field) == (str(path), line_of(text, needle), field)
    assert "unknown field" in str(info.value)


@pytest.mark.parametrize(
    "old,new,needle,field",
    [
        ("  path: transformer.wpe\n", "  path: transformer.wpe\n  offset: [1]\n", "offset: [1]", "pos_embed.offset"),
        ("    layout: conv1d\n    qkv", "    layout: sideways\n    qkv", "layout: sideways", "block.attn.layout"),
        ("  kind: sequential", "  kind: {a: 1}", "kind: {a: 1}", "block.kind"),
        ("blocks: transformer.h", "blocks: 12", "blocks: 12", "blocks"),
    ],
    ids=["offset_list", "layout_literal", "kind_mapping", "blocks_int"],
)
def test_wrong_type_names_its_file_line_and_field(tmp_path, old, new, needle, field):
    text = edited(old, new)
    path = write(tmp_path, text)
    with pytest.raises(SpecError) as info:
        load_spec(path)
    assert (info.value.file, info.value.line, info.value.field) == (str(path), line_of(text, needle), field)


@pytest.mark.parametrize(
    "old,parent_needle,field",
    [
        ("    o: c_proj\n", "  attn:", "block.attn.o"),
        ("    out: c_proj\n", "  mlp:", "block.mlp.out"),
    ],
    ids=["attn_o", "mlp_out"],
)
def test_missing_nested_field_points_at_the_line_of_its_parent(tmp_path, old, parent_needle, field):
    text = edited(old, "")
    path = write(tmp_path, text)
    with pytest.raises(SpecError) as info:
        load_spec(path)
    assert (info.value.file, info.value.line, info.value.field) == (str(path), line_of(text, parent_needle), field)
    assert "missing" in str(info.value)


def test_missing_top_level_field_is_named(tmp_path):
    path = write(tmp_path, edited("hf_class: GPT2LMHeadModel\n", ""))
    with pytest.raises(SpecError) as info:
        load_spec(path)
    assert (info.value.file, info.value.field) == (str(path), "hf_class")


def test_missing_required_config_field_is_named(tmp_path):
    text = edited("  d_vocab: vocab_size\n", "")
    path = write(tmp_path, text)
    with pytest.raises(SpecError) as info:
        load_spec(path)
    assert info.value.field == "config"
    assert info.value.line == text.splitlines().index("config:") + 1
    assert "d_vocab" in str(info.value)


def test_python_object_tags_are_refused_and_never_run(tmp_path):
    sentinel = tmp_path / "ran"
    text = edited(
        "description: GPT-2 under another name, for the spec error tests.",
        f'description: !!python/object/apply:os.system ["touch {sentinel}"]',
    )
    path = write(tmp_path, text)
    with pytest.raises(SpecError) as info:
        load_spec(path)
    assert not sentinel.exists()
    assert (info.value.file, info.value.line) == (str(path), line_of(text, "python/object"))


def test_a_file_that_is_not_a_mapping_is_a_spec_error(tmp_path):
    for name, text in (("list.yaml", "- a\n- b\n"), ("empty.yaml", "")):
        path = write(tmp_path, text, name)
        with pytest.raises(SpecError) as info:
            load_spec(path)
        assert info.value.file == str(path)


def test_a_missing_file_is_a_spec_error_naming_it(tmp_path):
    with pytest.raises(SpecError) as info:
        load_spec(tmp_path / "nowhere.yaml")
    assert info.value.file == str(tmp_path / "nowhere.yaml")


# --------------------------------------------------------------------------- expressions
@pytest.mark.parametrize(
    "expression",
    ["__import__('os')", "n_embd.real", "open('x')", "n_embd // n_head if (lambda: 1)() else 1", "no_such_field"],
    ids=["dunder_import", "attribute", "call", "lambda", "unknown_name"],
)
def test_a_bad_config_expression_is_a_spec_error_naming_file_line_and_field(tmp_path, expression):
    text = edited("  d_head: n_embd // n_head", f'  d_head: "{expression}"')
    path = write(tmp_path, text)
    with pytest.raises(SpecError) as info:
        Bridge.from_spec(path)
    assert (info.value.file, info.value.field) == (str(path), "config.d_head")
    assert expression in str(info.value)


@pytest.mark.parametrize("expression", ["__import__('os')", "n_embd.real"])
def test_a_bad_config_expression_error_carries_the_line_of_the_field(tmp_path, expression):
    text = edited("  d_head: n_embd // n_head", f'  d_head: "{expression}"')
    path = write(tmp_path, text)
    with pytest.raises(SpecError) as info:
        Bridge.from_spec(path)
    assert info.value.line == line_of(text, "d_head:")


# --------------------------------------------------------------------------- kinds
@pytest.mark.parametrize(
    "old,new,needle,field",
    [
        ("  ln1: {path: ln_1, kind: layernorm}", "  ln1: {path: ln_1, kind: batchnorm}", "ln1:", "block.ln1.kind"),
        (
            "ln_final: {path: transformer.ln_f, kind: layernorm}",
            "ln_final:\n  path: transformer.ln_f\n  kind: layernorn",
            "kind: layernorn",
            "ln_final.kind",
        ),
        ("  kind: learned", "  kind: fourier", "kind: fourier", "pos_embed.kind"),  # not sinusoidal: registered
    ],
    ids=["ln1_flow", "ln_final_block", "position"],
)
def test_unknown_kind_is_an_unknown_kind_error_with_line_and_field(tmp_path, old, new, needle, field):
    text = edited(old, new)
    path = write(tmp_path, text)
    with pytest.raises(UnknownKindError) as info:
        Bridge.from_spec(path)
    assert isinstance(info.value, SpecError)
    assert (info.value.file, info.value.line, info.value.field) == (str(path), line_of(text, needle), field)
    if "layernorn" in new:
        assert "layernorm" in str(info.value)  # did you mean


def test_unknown_activation_is_an_unknown_kind_error(tmp_path):
    text = edited("    kind: plain\n", "    kind: plain\n    act_fn: gelu_newest\n")
    path = write(tmp_path, text)
    with pytest.raises(UnknownKindError) as info:
        Bridge.from_spec(path)
    assert (info.value.file, info.value.field) == (str(path), "block.mlp.act_fn")
    assert info.value.line == line_of(text, "act_fn: gelu_newest")


# --------------------------------------------------------------------------- extends
def child_spec(name: str, parent: str, arch: str) -> str:
    return f"# child\nname: {name}\nextends: {parent}\nmatch:\n  architectures: [{arch}]\n"


def test_an_extends_cycle_is_a_spec_error_at_the_extends_line(tmp_path, monkeypatch):
    write(tmp_path, child_spec("cycle_a", "cycle_b", "CycleA"), "cycle_a.yaml")
    write(tmp_path, child_spec("cycle_b", "cycle_a", "CycleB"), "cycle_b.yaml")
    monkeypatch.setenv(SPEC_PATH_VARIABLE, str(tmp_path))
    registry = Registry()
    with pytest.raises(SpecError) as info:
        registry.get("cycle_a")
    assert info.value.field == "extends"
    assert Path(info.value.file).name in {"cycle_a.yaml", "cycle_b.yaml"}
    assert info.value.line == line_of(child_spec("x", "y", "Z"), "extends:")
    assert "cycle" in str(info.value)


def test_a_spec_extending_itself_is_a_cycle(tmp_path):
    path = write(tmp_path, child_spec("selfish", "selfish", "Selfish"), "selfish.yaml")
    with pytest.raises(SpecError) as info:
        Registry().add_spec(path)
    assert (info.value.file, info.value.field, info.value.line) == (str(path), "extends", 3)


def test_extending_a_missing_spec_is_a_spec_error_at_the_extends_line(tmp_path):
    path = write(tmp_path, child_spec("orphan", "no_such_parent", "Orphan"), "orphan.yaml")
    with pytest.raises(SpecError) as info:
        Registry().add_spec(path)
    assert (info.value.file, info.value.line, info.value.field) == (str(path), 3, "extends")
    assert "no_such_parent" in str(info.value)


def test_an_error_in_an_inherited_field_points_at_the_child_line_that_overrides_it(tmp_path):
    text = child_spec("child_bad", "gpt2", "ChildBad") + "block:\n  attn:\n    layout: sideways\n"
    path = write(tmp_path, text, "child_bad.yaml")
    with pytest.raises(SpecError) as info:
        Registry().add_spec(path)
    assert (info.value.file, info.value.line, info.value.field) == (
        str(path),
        line_of(text, "layout: sideways"),
        "block.attn.layout",
    )


# --------------------------------------------------------------------------- binding
@pytest.mark.parametrize(
    "old,new,spec_field,expected_suggestion",
    [
        ("    path: attn\n", "    path: atn\n", "block.attn.path", "transformer.h.0.attn"),
        (
            "ln_final: {path: transformer.ln_f, kind: layernorm}",
            "ln_final: {path: transformer.ln_final, kind: layernorm}",
            "ln_final.path",
            "transformer.ln_f",
        ),
        ("    in: c_fc", "    in: c_fcc", "block.mlp.in", "transformer.h.0.mlp.c_fc"),
        ("  path: transformer.wte", "  path: transformer.embed_tokens", "embed.path", None),
    ],
    ids=["attn", "ln_final", "mlp_in", "embed"],
)
def test_a_wrong_module_path_is_a_bind_error_with_suggestions(tmp_path, old, new, spec_field, expected_suggestion):
    path = write(tmp_path, edited(old, new))
    with pytest.raises(BindError) as info:
        Bridge.from_spec(path)
    assert info.value.spec_path == spec_field
    assert isinstance(info.value, LookupError)
    if expected_suggestion is not None:
        assert expected_suggestion in info.value.suggestions
        assert expected_suggestion in str(info.value)


@pytest.mark.parametrize(
    "old,new,spec_field",
    [
        ("  n_heads: n_head\n", "  n_heads: 2 * n_head\n", "config.n_heads / config.d_head"),
        ("  d_head: n_embd // n_head", "  d_head: n_embd // n_head // 2", "config.n_heads / config.d_head"),
        ("  n_layers: n_layer", "  n_layers: n_layer + 1", "config.n_layers"),
        ("  d_mlp: n_inner or 4 * n_embd", "  d_mlp: 3 * n_embd", "config.d_mlp"),
        ("    layout: conv1d\n    qkv", "    layout: linear\n    qkv", "block.attn.layout"),
    ],
    ids=["n_heads", "d_head", "n_layers", "d_mlp", "layout"],
)
def test_sizes_that_disagree_with_the_weights_are_a_bind_error(tmp_path, old, new, spec_field):
    path = write(tmp_path, edited(old, new))
    with pytest.raises(BindError) as info:
        Bridge.from_spec(path)
    assert info.value.spec_path == spec_field


def test_a_non_positive_size_is_a_spec_error(tmp_path):
    path = write(tmp_path, edited("  d_head: n_embd // n_head", "  d_head: n_head - n_head"))
    with pytest.raises(SpecError) as info:
        Bridge.from_spec(path)
    assert info.value.field == "config.d_head"
