"""An encoder-decoder stack whose blocks differ (Switch Transformers: sparse MLP every other block) names the
per-layer structure as missing vocabulary (issue 17), read against HF's own modules."""

from __future__ import annotations

import transformers

from bridge_core.drafting.drafter import draft_model_type


def test_switch_transformers_sparse_blocks_are_a_named_gap():
    draft = draft_model_type("switch_transformers")
    config = transformers.AutoConfig.for_model("switch_transformers", **draft.fields["test_config"])
    model = transformers.SwitchTransformersForConditionalGeneration(config)
    sparse = [i for i, b in enumerate(model.encoder.block) if b.is_sparse]  # HF's own per-block flag
    assert sparse and len(sparse) < len(model.encoder.block)
    details = [g.detail for g in draft.gaps if g.item == "per-layer structure"]
    assert details and details[0].startswith(f"encoder.block blocks {sparse} are built differently from block 0")
