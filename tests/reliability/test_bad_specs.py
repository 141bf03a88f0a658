"""The bad spec corpus: every malformed or wrong spec in `bad_specs/` gets its typed error (docs/architecture.md).

`CASES` is the table: file, the first stage that must catch it (`load`: YAML and schema, `kinds`: plugin
kinds at registration, `bind`: building a bridge on the tiny model), the error type, the field (the spec
field path of a `BindError`), the line where the file defines it, and a piece of the message. Each file
is loaded through every real entry point from its stage on: `load_spec(path)`, `Registry().add_spec(path)`
and `Bridge.from_spec(path)`. None may raise a bare KeyError/AttributeError/TypeError or a torch error.
Multi-file cases (extends cycles, two claims on one architecture) live in `bad_specs/registries/` and are
read through `BRIDGE_CORE_SPEC_PATH` by a fresh `Registry()`.
"""

from __future__ import annotations

import contextlib
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import pytest

import adapter_specs
from bridge_core import Bridge
from bridge_core.errors import BindError, SpecError, UnknownKindError
from bridge_core.plugin_host import PluginHost
from bridge_core.registry import SPEC_PATH_VARIABLE, Registry
from bridge_core.spec import load_spec
from bridge_core.spec.loader import parse_raw_spec

BAD_SPECS = Path(__file__).parent / "bad_specs"
REGISTRIES = BAD_SPECS / "registries"
STAGES = ("load", "kinds", "bind")


@dataclass(frozen=True)
class Case:
    stem: str
    stage: str  # the first stage that must refuse the file
    error: type[Exception]
    field: str | None  # SpecError.field, or BindError.spec_path
    line: int | None  # SpecError.line (None: the error has no line to give, e.g. bytes that are not text)
    message: str  # a piece of the message a newcomer acts on
    bug: str | None = None

    @property
    def path(self) -> Path:
        return BAD_SPECS / f"{self.stem}.yaml"


NEVER = "YAML tags that build Python objects are never allowed"
SCHEMA = "`bridge-core schema` lists every field"
CASES = [
    # ------------------------------------------------------------------ not a spec at all
    Case("a_directory", "load", SpecError, None, None, "is a directory, not a spec file"),
    Case("a_list_not_a_mapping", "load", SpecError, None, 1, "must be a YAML mapping of fields, this file is a list"),
    Case("a_scalar_not_a_mapping", "load", SpecError, None, 1, "must be a YAML mapping of fields, this file is a str"),
    Case("empty_file", "load", SpecError, None, 1, "must be a YAML mapping of fields, this file is empty"),
    Case("only_comments", "load", SpecError, None, 1, "this file is empty"),
    Case("not_utf8", "load", SpecError, None, None, "spec file is not UTF-8 text"),
    # ------------------------------------------------------------------ YAML syntax and tags
    # libyaml (CSafeLoader) and the pure-Python loader word these differently; the line is what matters.
    Case("yaml_bad_indentation", "load", SpecError, None, 54, "invalid YAML:"),
    Case("yaml_tab_indentation", "load", SpecError, None, 54, "invalid YAML: found"),
    Case("yaml_two_documents", "load", SpecError, None, 42, "invalid YAML: but found another document"),
    Case("yaml_unclosed_flow_mapping", "load", SpecError, None, 46, "expected ',' or '}'"),
    # PyYAML reports where the runaway string ends (the next '"', line 19), not where it starts (line 3).
    Case("yaml_unclosed_quote", "load", SpecError, None, 19, "invalid YAML"),
    Case("yaml_undefined_alias", "load", SpecError, None, 10, "found undefined alias"),
    Case("yaml_local_tag", "load", SpecError, None, 42, "could not determine a constructor for the tag '!include'"),
    Case("yaml_duplicate_top_level_key", "load", SpecError, "hf_class", 8, "duplicate key 'hf_class': on line 7 and"),
    Case("yaml_duplicate_config_key", "load", SpecError, "config.n_layers", 20, "on line 10 and again on line 20"),
    Case("yaml_duplicate_key_in_flow_mapping", "load", SpecError, "block.attn.qkv.kind", 49, "duplicate key 'kind'"),
    Case("yaml_python_module", "load", SpecError, None, 7, NEVER),
    Case("yaml_python_name", "load", SpecError, None, 7, NEVER),
    Case("yaml_python_object_apply", "load", SpecError, None, 3, NEVER),
    Case("yaml_python_object_new", "load", SpecError, None, 7, NEVER),
    # ------------------------------------------------------------------ wrong types, missing and unknown fields
    Case("type_architectures_is_a_string", "load", SpecError, "match.architectures", 5, "valid list"),
    Case("type_blocks_is_a_mapping", "load", SpecError, "blocks", 42, "valid string"),
    Case("type_config_field_is_a_list", "load", SpecError, "config.n_layers", 10, "valid string"),
    Case("type_config_field_is_a_mapping", "load", SpecError, "config.d_vocab", 15, "valid string"),
    Case("type_gated_mlp_without_gate", "load", SpecError, "block.mlp", 55, "'gate' is required for kind 'gated'"),
    Case("type_layout_not_a_choice", "load", SpecError, "block.attn.layout", 48, "'conv1d' or 'linear'"),
    Case("type_match_is_empty", "load", SpecError, "match", 4, "must claim at least one HF architecture"),
    Case("type_name_is_a_list", "load", SpecError, "name", 2, "valid string"),
    Case("type_offset_is_a_word", "load", SpecError, "pos_embed.offset", 41, "valid integer"),
    Case("type_offset_is_negative", "load", SpecError, "pos_embed.offset", 41, "greater than or equal to 0"),
    Case("type_output_index_is_a_word", "load", SpecError, "block.attn.output_index", 53, "valid integer"),
    Case("type_override_not_a_bool", "load", SpecError, "override", 7, "valid boolean"),
    Case("type_qkv_fused_without_path", "load", SpecError, "block.attn.qkv", 49, "'fused' needs 'path'"),
    Case("type_qkv_kind_not_a_choice", "load", SpecError, "block.attn.qkv.kind", 49, "'fused', 'separate' or 'latent'"),
    Case("type_qkv_separate_missing_k", "load", SpecError, "block.attn.qkv", 49, "'separate' needs k"),
    Case("type_softmax_dtype_not_a_choice", "load", SpecError, "block.attn.softmax_dtype", 52, "'input' or 'float32'"),
    Case("type_test_config_is_a_list", "load", SpecError, "test_config", 23, "valid dictionary"),
    Case("missing_attention_o", "load", SpecError, "block.attn.o", 46, "required field is missing"),
    Case("missing_config_d_vocab", "load", SpecError, "config", 9, "missing normalized field(s): d_vocab"),
    Case("missing_hf_class", "load", SpecError, "hf_class", 2, "required field is missing"),
    Case("unknown_attention_field", "load", SpecError, "block.attn.implmentation", 51, SCHEMA),
    Case("unknown_norm_field", "load", SpecError, "block.ln1.epsilon", 45, SCHEMA),
    Case("unknown_top_level_field", "load", SpecError, "blockz", 43, SCHEMA),
    # ------------------------------------------------------------------ extends (single file)
    Case("extends_itself", "load", SpecError, "extends", 3, "makes a cycle: bad_extends_itself -> bad_extends_itself"),
    Case("extends_missing_spec", "load", SpecError, "extends", 3, "names 'gpt9', which is not a registered spec"),
    Case("extends_not_a_name", "load", SpecError, "extends", 3, "must be the name of another spec"),
    # ------------------------------------------------------------------ unknown kinds
    Case("kind_unknown_norm", "kinds", UnknownKindError, "block.ln2.kind", 54, "Did you mean: layernorm,"),
    Case("kind_unknown_final_norm", "kinds", UnknownKindError, "ln_final.kind", 62, "unknown norm kind 'batchnorm'"),
    Case("kind_unknown_position", "kinds", UnknownKindError, "pos_embed.kind", 39, "Did you mean: learned?"),
    Case("kind_unknown_activation", "kinds", UnknownKindError, "block.mlp.act_fn", 61, "Did you mean: gelu_new"),
    Case("kind_unknown_mask_format", "kinds", UnknownKindError, "call.mask_format", 64, "Did you mean: 4d_additive?"),
    Case(
        "kind_unknown_score_bias", "kinds", UnknownKindError, "score_bias.kind", 64, "unknown score bias kind 'alibii'"
    ),
    Case(
        "kind_unknown_activation_from_config",
        "bind",
        UnknownKindError,
        "config.act_fn",
        18,
        "unknown activation kind 'swishy'",
    ),
    Case("kind_block_kind_expression", "bind", SpecError, "block.kind", 44, "expected one of sequential, parallel"),
    Case(
        "kind_mlp_kind_expression",
        "bind",
        SpecError,
        "block.mlp.kind",
        57,
        "expected one of plain, gated",
    ),
    # ------------------------------------------------------------------ expressions (evaluated on the HF config)
    Case("expr_import", "bind", SpecError, "config.d_model", 11, "attribute access ('.') is not allowed"),
    Case("expr_attribute", "bind", SpecError, "config.d_model", 11, "attribute access ('.') is not allowed"),
    Case("expr_class_escape", "bind", SpecError, "config.d_model", 11, "attribute access ('.') is not allowed"),
    Case("expr_lambda", "bind", SpecError, "config.d_model", 11, "may be called"),
    Case("expr_call_of_open", "bind", SpecError, "config.d_model", 11, "may be called"),
    Case("expr_comprehension", "bind", SpecError, "config.d_model", 11, "'ListComp' is not allowed"),
    Case("expr_walrus", "bind", SpecError, "config.d_model", 11, "'NamedExpr' is not allowed"),
    Case("expr_fstring", "bind", SpecError, "config.d_model", 11, "'JoinedStr' is not allowed"),
    Case("expr_huge_exponent", "bind", SpecError, "config.d_model", 11, "exponent 100000000 is too large"),
    Case("expr_division_by_zero", "bind", SpecError, "config.d_head", 13, "ZeroDivisionError"),
    Case("expr_unknown_name", "bind", SpecError, "config.d_model", 11, "the config has no field 'n_embdd'"),
    Case("expr_private_name", "bind", SpecError, "config.d_model", 11, "private names are not allowed"),
    Case("expr_syntax_error", "bind", SpecError, "config.d_model", 11, "not valid syntax"),
    Case(
        "expr_string_result", "bind", SpecError, "config.d_model", 11, "must evaluate to a positive integer, got 'big'"
    ),
    Case("expr_zero_heads", "bind", SpecError, "config.n_heads", 12, "must evaluate to a positive integer, got 0"),
    Case("expr_float_layers", "bind", SpecError, "config.n_layers", 10, "must evaluate to a positive integer"),
    Case(
        "expr_private_name_in_unembed_scale",
        "bind",
        SpecError,
        "unembed.pre_scale",
        65,
        "private names are not allowed",
    ),
    # ------------------------------------------------------------------ normalized config values out of range
    Case("config_attn_scale_zero", "bind", SpecError, "config.attn_scale", 19, "must be > 0"),
    Case("config_attn_scale_not_a_number", "bind", SpecError, "config.attn_scale", 19, "finite number, got 'eight'"),
    Case("config_eps_negative", "bind", SpecError, "config.eps", 17, "must be >= 0 (a norm's epsilon), got -1.0"),
    Case("config_eps_nan", "bind", SpecError, "config.eps", 17, "must evaluate to a finite number, got nan"),
    Case("config_embed_scale_zero", "bind", SpecError, "config.embed_scale", 20, "must be non-zero"),
    Case("config_embed_scale_infinite", "bind", SpecError, "config.embed_scale", 20, "finite number, got inf"),
    # ------------------------------------------------------------------ module paths (BindError, nearest names)
    Case("path_embed_typo", "bind", BindError, "embed.path", None, "Did you mean: transformer.wte"),
    Case("path_blocks_wrong_name", "bind", BindError, "blocks", None, "Did you mean: transformer.h"),
    Case("path_attention_typo", "bind", BindError, "block.attn.path", None, "Did you mean: transformer.h.0.attn?"),
    Case("path_mlp_in_typo", "bind", BindError, "block.mlp.in", None, "Did you mean: transformer.h.0.mlp.c_fc?"),
    Case("path_final_norm_typo", "bind", BindError, "ln_final.path", None, "Did you mean: transformer.ln_f"),
    Case("path_unembed_alternatives_all_missing", "bind", BindError, "unembed.path", None, "Did you mean: lm_head?"),
    Case("path_blocks_not_a_list", "bind", BindError, "blocks", None, "is a Embedding, not a ModuleList of blocks"),
    Case("path_same_norm_twice", "bind", BindError, "block.ln2.path", None, "name the same module"),
    # ------------------------------------------------------------------ sizes that disagree with the weights
    Case("size_heads_disagree", "bind", BindError, "config.n_heads / config.d_head", None, "implies (64, 384)"),
    Case("size_fused_width_does_not_divide", "bind", BindError, "config.n_heads / config.d_head", None, "(64, 204)"),
    Case("size_kv_heads_do_not_divide", "bind", SpecError, "config.n_kv_heads", 13, "not a multiple of n_kv_heads (3)"),
    Case("size_layer_count_disagrees", "bind", BindError, "config.n_layers", None, "evaluates to 3 but"),
    Case("size_mlp_width_disagrees", "bind", BindError, "config.d_mlp", None, "implies (64, 256)"),
    Case("size_vocab_disagrees", "bind", BindError, "config.d_vocab / config.d_model", None, "implies (102, 64)"),
    Case("size_wrong_layout", "bind", BindError, "block.attn.layout", None, "set layout: conv1d"),
    # ------------------------------------------------------------------ the model class
    Case(
        "class_does_not_exist",
        "bind",
        SpecError,
        "hf_class",
        7,
        "has no model class 'GPT3LMHeadModel'",
    ),
    Case(
        "class_is_not_a_class",
        "bind",
        SpecError,
        "hf_class",
        7,
        "has no model class 'AutoConfig.from_pretrained'",
    ),
]
CASE_BY_STEM = {case.stem: case for case in CASES}
ENTRIES = {
    "load_spec": "load",
    "add_spec": "kinds",
    "from_spec": "bind",
}


@pytest.fixture(scope="module")
def registry() -> Registry:
    """One registry for every add_spec: a refused spec is rolled back, and each file has its own name and claim."""
    return Registry(plugins=PluginHost(), use_spec_path=False)


def load_through(entry: str, path: Path, registry: Registry) -> object:
    if entry == "load_spec":
        return load_spec(path)
    if entry == "add_spec":
        names = set(registry.names())
        try:
            return registry.add_spec(path)
        finally:
            assert set(registry.names()) - names <= {f"bad_{path.stem}"}
    return Bridge.from_spec(path)


def _params():
    for case in CASES:
        for entry, stage in ENTRIES.items():
            if STAGES.index(stage) < STAGES.index(case.stage):
                continue
            marks = [pytest.mark.xfail(strict=True, reason=f"BUG: {case.bug}")] if case.bug else []
            yield pytest.param(case, entry, id=f"{case.stem}-{entry}", marks=marks)


def test_the_corpus_holds_at_least_50_specs_and_the_table_covers_each_exactly_once():
    files = sorted(p.stem for p in BAD_SPECS.glob("*.yaml"))
    assert len(files) >= 50
    assert files == sorted(CASE_BY_STEM), "every file in bad_specs/ needs a row in CASES (and only those)"
    assert len(CASE_BY_STEM) == len(CASES)


@pytest.mark.parametrize(("case", "entry"), list(_params()))
def test_a_bad_spec_is_refused_with_its_typed_error_file_line_and_field(case: Case, entry: str, registry):
    with pytest.raises(Exception) as info:
        load_through(entry, case.path, registry)
    error = info.value
    assert type(error) is case.error, f"{type(error).__name__}: {error}"
    message = str(error)
    assert case.message in message
    if isinstance(error, SpecError):
        assert error.file is not None and Path(error.file).resolve() == case.path.resolve()
        assert error.line == case.line
        assert error.field == case.field
        # the message alone says where: file, line and field, then why
        assert message.startswith(f"{error.file}{f':{case.line}' if case.line else ''}")
        if case.field:
            assert f"field '{case.field}'" in message
    else:
        assert isinstance(error, BindError)
        assert error.spec_path == case.field
        assert error.module_path and error.module_path in message
        assert f"spec field '{case.field}'" in message
        if "Did you mean" in case.message:
            assert error.suggestions and all(s in message for s in error.suggestions)


def test_python_tags_never_run(registry):
    marker = Path("/tmp/bridge_core_pwned")
    marker.unlink(missing_ok=True)
    for stem in ("yaml_python_object_apply", "yaml_python_object_new", "yaml_python_name", "yaml_python_module"):
        for entry in ENTRIES:
            with pytest.raises(SpecError):
                load_through(entry, CASE_BY_STEM[stem].path, registry)
    assert not marker.exists()


def test_a_bad_expression_outside_config_is_a_spec_error_when_the_bridge_is_built():
    """`expr_private_name_in_unembed_scale`: refused at build time with its field and line, not on first use."""
    with pytest.raises(SpecError) as info:
        Bridge.from_spec(CASE_BY_STEM["expr_private_name_in_unembed_scale"].path)
    assert info.value.field == "unembed.pre_scale" and "private names are not allowed" in str(info.value)
    assert info.value.line == CASE_BY_STEM["expr_private_name_in_unembed_scale"].line


# --------------------------------------------------------------------------- several files: BRIDGE_CORE_SPEC_PATH
def registry_on(monkeypatch, directory: str) -> Registry:
    monkeypatch.setenv(SPEC_PATH_VARIABLE, str(REGISTRIES / directory))
    return Registry()


def hf_config(architecture: str) -> SimpleNamespace:
    return SimpleNamespace(architectures=[architecture], model_type="none_of_these")


def test_an_extends_cycle_across_two_files_is_a_spec_error_at_the_extends_line(monkeypatch):
    registry = registry_on(monkeypatch, "extends_cycle")
    for name, other in (("cycle_a", "cycle_b"), ("cycle_b", "cycle_a")):
        for load in (registry.get, lambda n: Bridge.from_spec(n, registry=registry)):
            with pytest.raises(SpecError) as info:
                load(name)
            error = info.value
            assert f"makes a cycle: {name} -> {other} -> {name}" in str(error)
            assert error.field == "extends" and error.line == 3
            assert Path(error.file).name in ("cycle_a.yaml", "cycle_b.yaml")


def test_two_specs_claiming_one_architecture_is_a_spec_error_naming_both(monkeypatch):
    registry = registry_on(monkeypatch, "duplicate_claim")
    with pytest.raises(SpecError) as info:
        registry.resolve(hf_config("DuplicateClaimLMHeadModel"))
    message = str(info.value)
    assert "claim_first" in message and "claim_second" in message
    assert "override: true" in message and info.value.field == "match"
    # the same through add_spec, one file after the other
    registry = Registry(use_spec_path=False)
    registry.add_spec(REGISTRIES / "duplicate_claim" / "claim_first.yaml")
    with pytest.raises(SpecError) as info:
        registry.add_spec(REGISTRIES / "duplicate_claim" / "claim_second.yaml")
    assert "claim_first.yaml" in str(info.value) and info.value.file.endswith("claim_second.yaml")
    assert "claim_second" not in registry.names(), "a refused spec is not left half-registered"


def test_override_true_resolves_a_duplicate_claim(monkeypatch):
    registry = registry_on(monkeypatch, "duplicate_claim_override")
    assert registry.resolve(hf_config("OverriddenClaimLMHeadModel")).name == "override_second"


def test_two_files_with_one_name_are_a_spec_error_naming_both(monkeypatch):
    with pytest.raises(SpecError) as info:
        registry_on(monkeypatch, "duplicate_name")
    message = str(info.value)
    assert "twice_named" in message and "first.yaml" in message and info.value.file.endswith("second.yaml")
    assert info.value.field == "name" and info.value.line == 2


def test_the_spec_path_variable_is_not_left_set():
    assert SPEC_PATH_VARIABLE not in os.environ or REGISTRIES.as_posix() not in os.environ[SPEC_PATH_VARIABLE]


# --------------------------------------------------------------------------- files that are not spec files
GOOD_SPEC = BAD_SPECS / "expr_zero_heads.yaml"  # loads (its defect shows only when the config is evaluated)


@pytest.mark.parametrize("device", ["/dev/zero", "/dev/urandom"])
def test_an_endless_device_is_refused_naming_the_file_and_the_size_limit(device, registry):
    if not Path(device).exists():
        pytest.skip(f"no {device} here")
    for load in (load_spec, registry.add_spec):
        with pytest.raises(SpecError) as info:
            load(device)
        assert info.value.file == device and "character device" in str(info.value) and "1 MiB" in str(info.value)


def test_a_spec_file_over_1_mib_is_refused_naming_the_limit(tmp_path):
    big = tmp_path / "big.yaml"
    big.write_bytes(GOOD_SPEC.read_bytes() + b"#" * (1 << 20))
    with pytest.raises(SpecError, match=r"larger than the 1 MiB limit \(1048576 bytes\)") as info:
        load_spec(big)
    assert info.value.file == str(big)


def test_a_spec_of_exactly_1_mib_loads(tmp_path):
    text = GOOD_SPEC.read_bytes()
    exact = tmp_path / "exact.yaml"
    exact.write_bytes(text + b"#" * ((1 << 20) - len(text)))
    assert exact.stat().st_size == 1 << 20
    assert load_spec(exact).name == "bad_expr_zero_heads"


def _feed(fifo: Path, chunk: bytes, repeat: int | None) -> threading.Thread:
    """A writer thread on a named pipe: `chunk` `repeat` times, or until the reader closes (None)."""

    def write() -> None:
        with contextlib.suppress(BrokenPipeError), open(fifo, "wb") as pipe:
            count = 0
            while repeat is None or count < repeat:
                pipe.write(chunk)
                count += 1

    thread = threading.Thread(target=write, daemon=True)
    thread.start()
    return thread


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="named pipes")
def test_an_endless_pipe_is_read_only_up_to_the_limit_and_refused(tmp_path):
    fifo = tmp_path / "endless.yaml"
    os.mkfifo(fifo)
    writer = _feed(fifo, b"# more\n" * 1000, None)
    with pytest.raises(SpecError, match="larger than the 1 MiB limit"):
        load_spec(fifo)
    writer.join(timeout=10)
    assert not writer.is_alive(), "the reader closed the pipe after 1 MiB"


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="named pipes")
def test_a_spec_read_from_a_pipe_loads(tmp_path):
    fifo = tmp_path / "piped.yaml"
    os.mkfifo(fifo)
    writer = _feed(fifo, GOOD_SPEC.read_bytes(), 1)
    assert load_spec(fifo).name == "bad_expr_zero_heads"
    writer.join(timeout=10)


# --------------------------------------------------------------------------- duplicate keys: what stays allowed
def test_a_merge_key_may_be_overridden_and_equal_keys_in_different_mappings_are_fine():
    text = GOOD_SPEC.read_text().replace(
        "test_config:\n", "defaults: &defaults {n_layer: 3, n_head: 2}\ntest_config:\n  <<: *defaults\n", 1
    )
    raw = parse_raw_spec(text, "merge.yaml")
    assert raw.data["test_config"]["n_layer"] == 2, "the explicit key overrides the merged one"
    assert raw.data["test_config"]["n_head"] == 4


def test_keys_equal_as_values_are_duplicates_too():
    with pytest.raises(SpecError, match="duplicate key '0x1': on line 2 and again on line 3") as info:
        parse_raw_spec("config:\n  1: a\n  0x1: b\n", "ints.yaml")
    assert info.value.field == "config.0x1" and info.value.line == 3


def test_a_duplicate_key_inside_a_list_item_is_found():
    with pytest.raises(SpecError, match="duplicate key 'path'") as info:
        parse_raw_spec("unembed:\n  path: [a, {path: x, path: y}]\n", "deep.yaml")
    assert info.value.field == "unembed.path[1].path"


def test_the_builtin_specs_have_no_duplicate_keys():
    for path in sorted(Path(adapter_specs.__file__).parent.glob("*.yaml")):
        parse_raw_spec(path.read_text(), str(path))
