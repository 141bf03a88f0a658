"""Rotary modules taking the layer's type as an argument (Mellum, Cohere Compass; issue 17): their tiny models
have one layer type, so HF calls the module once, but a block called alone must still pass the type. Each block
run alone through the drafted spec (`start_at_layer`) gives HF's own logits from HF's own hidden state."""

from __future__ import annotations

import pytest
import torch
import transformers

from bridge_core import Bridge
from bridge_core.drafting.drafter import draft_model_type
from bridge_core.drafting.onboarding import DraftedSpecWarning


@pytest.mark.parametrize("model_type", ["mellum", "cohere_compass_text"])
def test_blocks_called_alone_pass_the_layer_type_and_match_hf(model_type):
    draft = draft_model_type(model_type)
    assert draft.fields["call"]["rotary_args"] == {"layer_type": "layer_types[layer]"}
    config = transformers.AutoConfig.for_model(model_type, **draft.fields["test_config"])
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(config).eval()
    with pytest.warns(DraftedSpecWarning):
        bridge = Bridge.from_hf(model)
    tokens = torch.randint(3, config.vocab_size, (2, 6))
    with torch.no_grad():
        hf = model(tokens, output_hidden_states=True)
        for layer in range(config.num_hidden_layers):
            logits = bridge(hf.hidden_states[layer], start_at_layer=layer)
            torch.testing.assert_close(logits, hf.logits)
