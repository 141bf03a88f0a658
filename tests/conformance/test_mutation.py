"""Mutation testing (`bridge-core conform --mutate`): the mutants a spec yields, and that a mutant is killed
by the check that catches its mistake while an equivalent one (a change nothing on this CPU can observe)
is reported as a survivor."""

from __future__ import annotations

import json

import pytest

from bridge_core.cli import main
from bridge_core.conformance import mutation
from bridge_core.registry import default_registry
from bridge_core.spec.loader import RawSpec, validate_spec


@pytest.fixture(scope="module")
def gpt2():
    return mutation.merged_data("gpt2", default_registry())


def test_every_operator_yields_mutants_with_unique_names_that_differ_from_the_spec(gpt2):
    found = mutation.mutants(gpt2.data)
    names = [m.name for m in found]
    assert len(names) == len(set(names))
    assert {m.operator for m in found} >= {"swap", "kind", "drop", "perturb", "branch"}
    assert "swap block.ln1.path <-> block.ln2.path" in names
    assert any(n.startswith("branch config.attn_scale") for n in names)
    for mutant in found:
        assert mutant.data != gpt2.data, mutant.name


def test_a_dropped_field_that_held_its_default_is_not_a_mutant(gpt2, monkeypatch):
    # pos_embed.offset: 0 is the schema default: dropping it leaves the same spec, so it is not counted
    dropped = [m for m in mutation.mutants(gpt2.data, ["drop"]) if m.field == "pos_embed.offset"]
    assert dropped, "the operator does generate it"
    original = validate_spec(gpt2).model_dump()
    assert validate_spec(RawSpec(gpt2.file, dropped[0].data, gpt2.lines)).model_dump() == original
    monkeypatch.setattr(mutation, "first_failure", lambda spec, registry: pytest.fail("should be skipped"))
    monkeypatch.setattr(mutation, "mutants", lambda data, operators=None: dropped)
    assert mutation.mutate("gpt2").results == []


def test_swapped_norm_roles_are_killed_by_norm_roles(gpt2):
    (swap,) = [m for m in mutation.mutants(gpt2.data, ["swap"]) if m.name == "swap block.ln1.path <-> block.ln2.path"]
    killed_by, message = mutation.first_failure(
        validate_spec(RawSpec(gpt2.file, swap.data, gpt2.lines)), default_registry()
    )
    assert killed_by == "norm_roles", message


def test_an_equivalent_mutant_survives_and_is_reported(gpt2):
    # softmax in float32 instead of the input dtype: identical in a float32 model, so no check can see it
    (flip,) = [m for m in mutation.mutants(gpt2.data, ["kind"]) if m.field == "block.attn.softmax_dtype"]
    spec = validate_spec(RawSpec(gpt2.file, flip.data, gpt2.lines))
    assert mutation.first_failure(spec, default_registry()) == (None, "")


def test_conform_mutate_prints_each_mutant_and_the_kill_rate(gpt2, monkeypatch, capsys):
    swaps = mutation.OPERATORS["swap"]
    monkeypatch.setattr(mutation, "OPERATORS", {"swap": swaps})
    assert main(["conform", "--mutate", "gpt2", "--json"]) == 0
    (report,) = json.loads(capsys.readouterr().out)
    assert report["spec"] == "gpt2" and report["kill_rate"] == 1.0
    assert [r["killed_by"] for r in report["results"]] == ["norm_roles"]


def test_naming_the_activation_the_model_already_uses_is_not_a_mutant(monkeypatch):
    llama = mutation.merged_data("llama", default_registry())
    acts = {m.name: m for m in mutation.mutants(llama.data, ["kind"]) if m.field == "config.act_fn"}
    same, other = acts["config.act_fn -> silu"], acts["config.act_fn -> relu"]  # Llama's hidden_act is silu
    monkeypatch.setattr(mutation, "mutants", lambda data, operators=None: [same, other])
    monkeypatch.setattr(mutation, "first_failure", lambda spec, registry: ("mlp", "stand-in for a real run"))
    report = mutation.mutate("llama")
    assert [r.mutant.name for r in report.results] == ["config.act_fn -> relu"]


# The softmax dtype cannot be observed on CPU: torch's CPU softmax accumulates in float32 whatever the
# input dtype (float32 and bfloat16 patterns were measured identical for every built-in spec), so a spec
# that says `input` where HF says `float32`, or the reverse, computes the same values here.
SOFTMAX = "equivalent on CPU: softmax accumulates in float32 in any dtype"
# `sinusoidal` positions are read exactly as a `learned` table (the kinds differ in whether the table is trained,
# which no forward shows).
SINUSOIDAL = "equivalent: a sinusoidal table is read exactly as a learned one"
SURVIVORS: dict[str, dict[str, str]] = {
    "bart": {},
    "gpt2": {"block.attn.softmax_dtype: input -> float32": SOFTMAX},
    "gpt_neox": {"block.attn.softmax_dtype: float32 -> input": SOFTMAX},
    "opt": {"block.attn.softmax_dtype: float32 -> input": SOFTMAX},
    "llama": {"block.attn.softmax_dtype: float32 -> input": SOFTMAX},
    "qwen2": {"block.attn.softmax_dtype: float32 -> input": SOFTMAX},
    "gemma": {"block.attn.softmax_dtype: float32 -> input": SOFTMAX},
    "gemma2": {"block.attn.softmax_dtype: float32 -> input": SOFTMAX},
    "gemma3": {"block.attn.softmax_dtype: float32 -> input": SOFTMAX},
    "mixtral": {"block.attn.softmax_dtype: float32 -> input": SOFTMAX},
    "deepseek_v2": {"block.attn.softmax_dtype: float32 -> input": SOFTMAX},
    "deepseek_v3": {"block.attn.softmax_dtype: float32 -> input": SOFTMAX},
    "gptj": {"block.attn.softmax_dtype: float32 -> input": SOFTMAX},
    "phi": {"block.attn.softmax_dtype: float32 -> input": SOFTMAX},
    "olmo2": {"block.attn.softmax_dtype: float32 -> input": SOFTMAX},
    "cohere": {"block.attn.softmax_dtype: float32 -> input": SOFTMAX},
    "phi3": {"block.attn.softmax_dtype: float32 -> input": SOFTMAX},
    "glm": {"block.attn.softmax_dtype: float32 -> input": SOFTMAX},
    "gpt_neo": {"block.attn.softmax_dtype: float32 -> input": SOFTMAX},
    "mpt": {"block.attn.softmax_dtype: float32 -> input": SOFTMAX},
    "falcon": {},
    "granite": {"block.attn.softmax_dtype: float32 -> input": SOFTMAX},
    "minicpm3": {"block.attn.softmax_dtype: float32 -> input": SOFTMAX},
    "qwen2_moe": {"block.attn.softmax_dtype: float32 -> input": SOFTMAX},
    "olmoe": {"block.attn.softmax_dtype: float32 -> input": SOFTMAX},
    "stablelm": {"block.attn.softmax_dtype: float32 -> input": SOFTMAX},
    "marian": {
        "pos_embed.kind: sinusoidal -> learned": SINUSOIDAL,
        "encoder.pos_embed.kind: sinusoidal -> learned": SINUSOIDAL,
    },
    "pegasus": {
        "pos_embed.kind: sinusoidal -> learned": SINUSOIDAL,
        "encoder.pos_embed.kind: sinusoidal -> learned": SINUSOIDAL,
    },
    "t5": {
        "block.attn.softmax_dtype: input -> float32": SOFTMAX,
        "encoder.block.attn.softmax_dtype: input -> float32": SOFTMAX,
    },
}


# Built-in specs that `extends` a mutation-tested one are mutated on the fields they declare themselves only:
# the fields they inherit unchanged are the parent's, whose mutants the parent's run kills (a full run of an
# encoder-decoder is 2-4 minutes on the shared CI machine). Each maps to its parent.
OWN_FIELDS_ONLY: dict[str, str] = {"mbart": "bart", "plbart": "bart", "blenderbot": "mbart", "mt5": "t5"}
OWN_SURVIVORS: dict[str, dict[str, str]] = {"mbart": {}, "plbart": {}, "blenderbot": {}, "mt5": {}}
# Children that only rename the parent for another class (plbart) or set a field to its default (mt5's
# `unembed.pre_scale: null`) have no mutant of their own: asserted, so a field added later is mutated.
NO_OWN_MUTANTS = {"plbart", "mt5"}


def _declared(name: str) -> set[str]:
    """Dotted paths of every field the spec file of `name` gives itself (not through `extends`)."""
    out: set[str] = set()

    def walk(value, path: str) -> None:
        out.add(path)
        if isinstance(value, dict):
            for key, inner in value.items():
                walk(inner, f"{path}.{key}" if path else str(key))

    walk(default_registry().entry(name).raw.data, "")
    return out - {""}


def test_every_built_in_spec_is_mutation_tested_or_extends_one_that_is():
    registry = default_registry()
    builtins = {n for n in registry.names() if registry.origin(n) == "builtin"}
    assert set(OWN_SURVIVORS) == set(OWN_FIELDS_ONLY)
    for child, parent in OWN_FIELDS_ONLY.items():
        assert registry.entry(child).raw.data.get("extends") == parent, child
        assert parent in SURVIVORS or parent in OWN_FIELDS_ONLY, parent
    assert builtins <= set(SURVIVORS) | set(OWN_FIELDS_ONLY), builtins - set(SURVIVORS) - set(OWN_FIELDS_ONLY)


@pytest.mark.parametrize("name", sorted(OWN_FIELDS_ONLY))
def test_a_spec_that_extends_another_kills_the_mutants_of_its_own_fields(name):
    declared = _declared(name)
    report = mutation.mutate(name, registry=default_registry(), only=lambda m: m.field in declared)
    assert bool(report.results) == (name not in NO_OWN_MUTANTS), [r.mutant.name for r in report.results]
    survivors = {r.mutant.name for r in report.survivors}
    assert survivors == set(OWN_SURVIVORS[name]), f"new survivors need a check (or a reason): {survivors}"
    assert report.kill_rate >= 0.95, f"{name}: {report.kill_rate:.1%} of {len(report.results)} mutants killed"


@pytest.mark.parametrize("name", sorted(SURVIVORS))
def test_the_catalogue_kills_95_percent_of_each_built_in_specs_mutants(name):
    report = mutation.mutate(name, registry=default_registry())
    survivors = {r.mutant.name for r in report.survivors}
    assert survivors == set(SURVIVORS[name]), f"new survivors need a check (or a reason): {survivors}"
    assert report.kill_rate >= 0.95, f"{name}: {report.kill_rate:.1%} of {len(report.results)} mutants killed"


def test_the_fused_gate_up_order_is_flipped_even_when_left_at_its_default():
    data = mutation.merged_data("phi3", default_registry()).data
    flips = [m for m in mutation.mutants(data, ["kind"]) if m.field == "block.mlp.gate_up.order"]
    del data["block"]["mlp"]["gate_up"]["order"]
    defaulted = [m for m in mutation.mutants(data, ["kind"]) if m.field == "block.mlp.gate_up.order"]
    for found in (flips, defaulted):
        assert [m.data["block"]["mlp"]["gate_up"]["order"] for m in found] == ["up_gate"]
