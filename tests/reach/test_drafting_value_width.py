"""Values narrower than queries and keys (MiMo-V2-Flash; issue 17): the attention observer read values and the
attention output at the query width and crashed; now it names the missing vocabulary with HF's own widths."""

from __future__ import annotations

import transformers

from bridge_core.drafting.drafter import draft_model_type


def test_value_heads_of_another_width_are_a_named_gap():
    draft = draft_model_type("mimo_v2_flash")
    gaps = [g for g in draft.gaps if g.item == "value head width"]
    assert gaps, draft.gaps
    tiny = draft.fields["test_config"]
    # the widths HF attended with: the config's v_head_dim (not shrunk) and the shrunk head_dim of queries and keys
    v_width = transformers.AutoConfig.for_model("mimo_v2_flash").v_head_dim
    assert gaps[0].detail == f"values have {v_width} dims per head, queries and keys {tiny['head_dim']}"
