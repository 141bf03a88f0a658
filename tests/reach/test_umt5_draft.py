"""UMT5 gives every self-attention layer its own relative_attention_bias table (T5: the first block's only).
The unedited draft says `score_bias.per_layer: true`; each layer's `attn.hook_rel_pos_bias` is HF's own bias
for that layer, and an edit there reaches that layer alone, as the same edit made on HF's module does."""

from __future__ import annotations

import copy

import torch

from bridge_core import Bridge
from bridge_core.bridge import loading
from bridge_core.conformance.runner import perturb
from bridge_core.drafting import draft_model_type, to_spec

SEQ, DEC_SEQ = 6, 5


def _bridge_and_hf():
    spec = to_spec(draft_model_type("umt5"))
    model = loading.random_model(spec, seed=2, tiny=True)
    perturb(model, 2)
    hf = copy.deepcopy(model).eval()
    generator = torch.Generator().manual_seed(7)
    tokens = torch.randint(1, model.config.vocab_size, (2, SEQ), generator=generator)
    decoder_tokens = torch.randint(1, model.config.vocab_size, (2, DEC_SEQ), generator=generator)
    return Bridge.from_hf(model, spec), hf, tokens, decoder_tokens


def test_the_draft_gives_each_stack_a_per_layer_bias():
    draft = draft_model_type("umt5")
    assert not draft.gaps, draft.gaps
    for stack in (draft.fields, draft.fields["encoder"]):
        assert stack["score_bias"]["per_layer"] is True
        assert stack["score_bias"]["path"] == "layer.0.SelfAttention.relative_attention_bias"
    assert "position_bias_kwarg" not in draft.fields.get("call", {})  # no block is handed a bias


def test_each_layer_hook_rel_pos_bias_is_hf_own_bias_for_that_layer():
    bridge, hf, tokens, decoder_tokens = _bridge_and_hf()
    with torch.no_grad():
        _, cache = bridge.run_with_cache(tokens, decoder_input_ids=decoder_tokens)
    assert "encoder.hook_rel_pos_bias" not in cache and "decoder.hook_rel_pos_bias" not in cache
    for stack, seq in (("encoder", SEQ), ("decoder", DEC_SEQ)):
        layers = getattr(hf, stack).block
        biases = []
        for i, layer in enumerate(layers):
            with torch.no_grad():
                expected = layer.layer[0].SelfAttention.compute_bias(seq, seq)  # HF's own [1, h, q, k]
            torch.testing.assert_close(cache[f"{stack}.{i}.attn.hook_rel_pos_bias"], expected, rtol=0, atol=0)
            biases.append(expected)
        assert not torch.equal(biases[0], biases[1])  # the layers' biases differ: one per stack would be wrong


def test_an_edit_of_one_layer_bias_is_hf_forward_with_that_module_edited():
    bridge, hf, tokens, decoder_tokens = _bridge_and_hf()
    c = 0.5
    table = hf.decoder.block[1].layer[0].SelfAttention.relative_attention_bias
    handle = table.register_forward_hook(lambda module, args, out: out + c)
    try:
        with torch.no_grad():
            expected = hf(input_ids=tokens, decoder_input_ids=decoder_tokens).logits
    finally:
        handle.remove()
    names = [f"decoder.{i}.attn.hook_attn_scores" for i in range(3)]
    with torch.no_grad():
        _, before = bridge.run_with_cache(tokens, decoder_input_ids=decoder_tokens, names_filter=names)
    with torch.no_grad(), bridge.hooks(fwd_hooks=[("decoder.1.attn.hook_rel_pos_bias", lambda t, hook: t + c)]):
        logits, after = bridge.run_with_cache(tokens, decoder_input_ids=decoder_tokens, names_filter=names)
    torch.testing.assert_close(logits, expected, rtol=0, atol=1e-5)
    causal = torch.ones(DEC_SEQ, DEC_SEQ, dtype=torch.bool).tril()
    moved = {i: (after[n] - before[n])[..., causal] for i, n in enumerate(names)}
    torch.testing.assert_close(moved[1], torch.full_like(moved[1], c), rtol=0, atol=1e-5)
    assert torch.equal(moved[0], torch.zeros_like(moved[0]))  # layer 0 comes before: untouched
