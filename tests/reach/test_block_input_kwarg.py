"""The drafter names the block's hidden-states parameter where HF passes it by position under another name
(CTRL's `EncoderLayer.forward(x, ...)`; docs/decisions/0025 item 2): with it, calling a block alone (block_alone)
and running a layer range (layer_ranges) agree with HF on the unedited draft."""

from __future__ import annotations

from bridge_core.conformance.runner import run
from bridge_core.drafting import draft_model_type, to_spec


def test_ctrl_draft_names_the_block_input_x_and_a_block_runs_alone():
    draft = draft_model_type("ctrl")
    assert draft.fields["block"]["hidden_states_kwarg"] == "x"
    report = run(to_spec(draft), checks=["block_alone", "layer_ranges"])
    assert {r.name: r.status for r in report.results if r.name in ("block_alone", "layer_ranges")} == {
        "block_alone": "pass",
        "layer_ranges": "pass",
    }, str(report)


def test_a_block_whose_first_parameter_is_hidden_states_gets_no_field():
    assert "hidden_states_kwarg" not in draft_model_type("llama").fields["block"]
