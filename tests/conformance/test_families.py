"""Every family variant the built-in specs describe conforms, not only each spec's `test_config`:
post-norm OPT, sequential GPT-NeoX, T5 and Flan-T5 (gated-gelu); checks that cannot apply skip
with their reason, and no check runs on an encoder-decoder model with decoder-only inputs."""

from __future__ import annotations

import pytest

from bridge_core.bridge import loading
from bridge_core.conformance import run
from bridge_core.registry import default_registry

# (spec, HF config overrides) -> checks that may skip, with a word of their reason
VARIANTS = {
    "opt-post-norm": ("opt", {"do_layer_norm_before": False}, {"rel_pos_bias": "score bias"}),
    "gpt_neox-sequential": ("gpt_neox", {"use_parallel_residual": False}, {"rel_pos_bias": "score bias"}),
    "t5": ("t5", {}, {"attention_paths_agree": "reimplement", "pos_embed": "position"}),
    "flan-t5": (
        "t5",
        {"feed_forward_proj": "gated-gelu"},
        {"attention_paths_agree": "reimplement", "pos_embed": "position"},
    ),
}


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_family_variant_conforms(variant):
    name, overrides, skips = VARIANTS[variant]
    model = loading.random_model(default_registry().get(name), **overrides) if overrides else None
    report = run(name, model=model)
    assert report.ok, str(report)
    skipped = {r.name: r.message for r in report.results if r.status == "skip"}
    for check_name, reason in skips.items():
        assert check_name in skipped and reason in skipped[check_name], str(report)


def test_t5_runs_the_general_checks_and_its_own():
    report = run("t5")
    ran = {r.name for r in report.results if r.status == "pass"}
    general = {"forward_parity", "hook_fire_counts", "shapes", "attention_semantics", "qkv_recompute", "attn_output"}
    general |= {"norms", "residual_stream", "mlp", "embed", "unembed", "padding", "delta_once", "head_ablation"}
    assert general | {"rel_pos_bias", "rel_pos_bias_edit"} <= ran, str(report)
