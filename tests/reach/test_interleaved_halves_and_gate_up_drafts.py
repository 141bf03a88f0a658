"""Issue 17: the drafter observes adjacent-pair rotary read from the first half of a rotate-half table
(GLM, GLM-4, Helium, ERNIE 4.5: `rotary_interleaved_halves`) and a fused gate/up MLP projection (Phi-3,
GLM, GLM-4: `mlp.gate_up`), and the unedited drafts pass the catalogue (on the base test model here; every
variant runs with `bridge-core conform --model-type`)."""

from __future__ import annotations

import pytest

from bridge_core.conformance.runner import run
from bridge_core.drafting import draft_model_type, to_spec

EXPECTED = {  # model type -> (position kind, fused gate/up or None)
    "helium": ("rotary_interleaved_halves", None),
    "ernie4_5": ("rotary_interleaved_halves", None),
    "glm": ("rotary_interleaved_halves", {"path": "gate_up_proj", "order": "gate_up"}),
    "glm4": ("rotary_interleaved_halves", {"path": "gate_up_proj", "order": "gate_up"}),
    "phi3": ("rotary", {"path": "gate_up_proj", "order": "gate_up"}),
}


@pytest.mark.parametrize("model_type", sorted(EXPECTED))
def test_the_draft_names_the_rotation_and_the_fused_projection(model_type):
    kind, gate_up = EXPECTED[model_type]
    draft = draft_model_type(model_type)
    assert not draft.gaps, draft.gaps
    assert draft.fields["pos_embed"]["kind"] == kind
    mlp = draft.fields["block"]["mlp"]
    assert mlp.get("gate_up") == gate_up
    if gate_up is not None:
        assert "in" not in mlp and "gate" not in mlp and mlp["kind"] == "gated"


@pytest.mark.parametrize("model_type", ["glm", "helium"])
def test_the_unedited_draft_passes_the_catalogue(model_type):
    report = run(to_spec(draft_model_type(model_type)))
    assert not report.failed(), str(report)
