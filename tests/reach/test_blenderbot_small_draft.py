"""BlenderbotSmall's decoder normalizes the token embedding and adds positions after the norm
(`embed.norm_after_pos: false` with an `embed.norm`); its encoder scales in the forward and normalizes
embeddings + positions. The unedited draft says so and its bridge reproduces HF's own embedding path;
a draft that puts the decoder norm after the position add fails pos_embed. Under scale_embedding only the
encoder scales (HF's decoder never multiplies): the draft gives the decoder its own `embed.scale: 1.0`."""

from __future__ import annotations

import copy

import torch

from bridge_core import Bridge
from bridge_core.bridge import loading
from bridge_core.conformance.runner import perturb, run
from bridge_core.drafting import draft_model_type, to_spec
from bridge_core.spec.schema import Spec

SEQ = 5


def _draft_fields() -> dict:
    return draft_model_type("blenderbot-small").fields


def test_the_draft_puts_the_decoder_norm_before_positions_and_the_encoder_norm_after():
    fields = _draft_fields()
    assert fields["embed"]["norm"]["path"] == "model.decoder.layernorm_embedding"
    assert not fields["embed"].get("norm_after_pos", False)
    assert fields["encoder"]["embed"]["norm_after_pos"] is True
    assert fields["encoder"]["embed"]["scale_at"] == "forward"


def test_the_drafted_decoder_embedding_path_is_hf_own():
    spec = to_spec(draft_model_type("blenderbot-small"))
    model = loading.random_model(spec, seed=3, tiny=True)
    perturb(model, 3)  # the embedding norm's weight and bias away from ones and zeros
    hf = copy.deepcopy(model).eval()
    bridge = Bridge.from_hf(model, spec)
    generator = torch.Generator().manual_seed(5)
    tokens = torch.randint(3, model.config.vocab_size, (2, SEQ), generator=generator)
    decoder_tokens = torch.randint(3, model.config.vocab_size, (2, SEQ), generator=generator)
    seen: dict[str, torch.Tensor] = {}
    layer = hf.model.decoder.layers[0]

    def record(module, args, kwargs) -> None:
        seen["x0"] = (args[0] if args else kwargs["hidden_states"]).clone()

    handle = layer.register_forward_pre_hook(record, with_kwargs=True)
    try:
        with torch.no_grad():
            hf_logits = hf(input_ids=tokens, decoder_input_ids=decoder_tokens).logits
    finally:
        handle.remove()
    with torch.no_grad():
        logits, cache = bridge.run_with_cache(tokens, decoder_input_ids=decoder_tokens)
    torch.testing.assert_close(logits, hf_logits, rtol=0, atol=1e-5)
    dec = hf.model.decoder
    with torch.no_grad():  # by hand: the norm of the (unscaled) token rows, then the position rows added
        normed = dec.layernorm_embedding(dec.embed_tokens.weight[decoder_tokens])
        rows = dec.embed_positions.weight[:SEQ].expand_as(normed)
    torch.testing.assert_close(cache["decoder.hook_embed"], normed, rtol=0, atol=1e-5)
    torch.testing.assert_close(cache["decoder.hook_pos_embed"], rows, rtol=0, atol=0)
    torch.testing.assert_close(normed + rows, seen["x0"], rtol=0, atol=1e-5)
    assert run(spec, checks=["embed", "pos_embed"]).ok


def test_a_decoder_norm_read_as_after_the_positions_fails_pos_embed():
    fields = _draft_fields()
    fields["embed"]["norm_after_pos"] = True  # BART's order, not BlenderbotSmall's
    report = run(Spec.model_validate(fields), checks=["pos_embed"])
    assert not report.ok


def test_the_decoder_keeps_its_own_unit_scale_and_the_scaled_variant_passes_embed():
    draft = draft_model_type("blenderbot-small")
    assert not draft.gaps, draft.gaps
    fields = draft.fields
    assert fields["embed"]["scale"] == 1.0  # the decoder's, in both branches of scale_embedding
    assert "scale" not in fields["encoder"]["embed"]  # the encoder's is config.embed_scale
    assert fields["config"]["n_kv_heads"] == "decoder_attention_heads"  # the decoder's heads, not the encoder's
    assert "scale_embedding_true" in fields["variants"]
    report = run(Spec.model_validate(fields), checks=["embed", "pos_embed"], variant="scale_embedding_true")
    assert report.ok, [r.explain() for r in report.failed()]


def test_under_scale_embedding_each_stack_hook_embed_is_what_hf_adds():
    fields = draft_model_type("blenderbot-small").fields
    fields["test_config"] = {**fields["test_config"], "scale_embedding": True}
    spec = Spec.model_validate(fields)
    model = loading.random_model(spec, seed=4, tiny=True)
    perturb(model, 4)
    hf = copy.deepcopy(model).eval()
    bridge = Bridge.from_hf(model, spec)
    generator = torch.Generator().manual_seed(6)
    tokens = torch.randint(3, model.config.vocab_size, (2, SEQ), generator=generator)
    decoder_tokens = torch.randint(3, model.config.vocab_size, (2, SEQ), generator=generator)
    with torch.no_grad():
        _, cache = bridge.run_with_cache(tokens, decoder_input_ids=decoder_tokens)
        enc, dec = hf.model.encoder, hf.model.decoder
        encoder_rows = enc.embed_tokens.weight[tokens] * enc.embed_scale  # HF's own scale for the encoder
        decoder_normed = dec.layernorm_embedding(dec.embed_tokens.weight[decoder_tokens])  # no scale at all
    assert enc.embed_scale == model.config.d_model**0.5 == bridge.cfg.embed_scale
    torch.testing.assert_close(cache["hook_embed"], encoder_rows, rtol=0, atol=1e-5)
    torch.testing.assert_close(cache["decoder.hook_embed"], decoder_normed, rtol=0, atol=1e-5)
