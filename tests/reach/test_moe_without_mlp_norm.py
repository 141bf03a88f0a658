"""FlexOlmo (issue 17): OLMo 2's norms on the sublayer outputs only, with a mixture of experts. With no norm
before the MLP, norm_roles compares the MLP's own input with the residual before it; for a MoE that is the MoE
module's input (it crashed looking up an in-projection HF never called). Shown passing on the drafted spec and
failing when the spec declares the wrong block kind."""

from __future__ import annotations

from bridge_core.conformance import build_context, run_checks
from bridge_core.drafting.drafter import draft_model_type
from bridge_core.drafting.emit import to_spec


def test_norm_roles_reads_a_moe_mlps_input_against_the_residual():
    draft = draft_model_type("flex_olmo")
    assert draft.fields["block"]["mlp"]["kind"] == "moe" and "ln2" not in draft.fields["block"]
    report = run_checks(build_context(to_spec(draft)), ["norm_roles"])
    assert report["norm_roles"].status == "pass", report["norm_roles"].explain()
    draft.fields["block"]["kind"] = "parallel"  # the MoE would then read the block input
    report = run_checks(build_context(to_spec(draft)), ["norm_roles"])
    assert report["norm_roles"].status == "fail"
    assert "mlp input (no norm before it)" in report["norm_roles"].message
    assert report["norm_roles"].field == "block.kind"
