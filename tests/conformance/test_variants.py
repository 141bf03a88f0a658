"""Variants: a spec's extra tiny test models (deltas on test_config), the branch recording behind
`variant_coverage`, the perturbed test models, and the CLI summary that counts skips."""

from __future__ import annotations

import pytest
import torch

from bridge_core.conformance import build_context, run
from bridge_core.conformance.cli import summary
from bridge_core.errors import SpecError
from bridge_core.registry import default_registry
from bridge_core.spec.expressions import evaluate, recording_branches
from bridge_core.spec.loader import RawSpec, validate_spec


def test_recording_branches_notes_each_side_without_changing_results():
    expression = "1 if a else (2 if b else 3)"
    with recording_branches() as taken:
        values = [evaluate(expression, {"a": a, "b": b}) for a, b in [(True, True), (False, True), (False, False)]]
    assert values == [1, 2, 3]
    assert sorted(map(sorted, taken.values())) == [[False, True], [False, True]]
    assert evaluate(expression, {"a": False, "b": False}) == 3  # outside the block nothing is recorded


def test_an_empty_or_badly_named_variant_is_refused():
    raw = default_registry().entry("gpt2").raw
    expected = {"unscaled": {"scale_attn_weights": False}, "default_inner": {"n_inner": None}}
    assert validate_spec(raw).variants == expected
    for variants in ({"nothing": {}}, {"bad name!": {"n_layer": 1}}):
        with pytest.raises(SpecError, match="variant"):
            validate_spec(RawSpec(raw.file, {**raw.data, "variants": variants}, raw.lines))


def test_a_spec_whose_conditional_takes_one_branch_fails_variant_coverage():
    spec = default_registry().get("gpt2").model_copy(update={"variants": {}})
    report = run(spec, checks=["bind", "variant_coverage"])
    result = report["variant_coverage"]
    assert result.status == "fail", str(report)
    assert result.field == "config.attn_scale"
    assert "only the if branch" in result.message
    assert run("gpt2", checks=["bind", "variant_coverage"])["variant_coverage"].status == "pass"


def test_each_variant_is_its_own_test_model_and_label():
    ctx = build_context("opt", variant="opt_350m")
    assert ctx.label == "opt[opt_350m]"
    assert ctx.copy.config.do_layer_norm_before is False and ctx.copy.config.word_embed_proj_dim == 32
    assert ctx.bound.embed_project is not None and ctx.bound.blocks[0].kind == "post_norm"


def test_tiny_models_have_random_norm_weights_and_biases_in_copy_and_bridge_alike():
    ctx = build_context("gpt2")
    for model in (ctx.model, ctx.copy):
        ln = model.transformer.h[0].ln_1
        assert not torch.equal(ln.weight, torch.ones_like(ln.weight))
        assert not torch.equal(ln.bias, torch.zeros_like(ln.bias))
    assert torch.equal(ctx.model.transformer.h[0].ln_1.weight, ctx.copy.transformer.h[0].ln_1.weight)


def test_quiet_summary_counts_skips(gpt2_report):
    text = summary([gpt2_report], len(gpt2_report.results))
    skipped = sum(r.status == "skip" for r in gpt2_report.results)
    assert skipped > 0 and f"{skipped} skipped" in text and "all passed" not in text
