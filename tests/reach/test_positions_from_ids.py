"""`sinusoidal_from_ids` (M2M100, NLLB-MoE): a sinusoidal table in a `weights` buffer, read at positions the
module counts from the token ids, grown for longer inputs. The unedited m2m_100 draft writes it and passes
its checks; on a padded batch holding pad tokens, `hook_pos_embed` is what HF's own module returns (plain
torch hooks on an untouched copy) and the table read at positions counted by hand; `W_pos` is the sinusoid
computed by hand; inputs longer than n_ctx run as in HF. A draft with the offset one row early fails
`pos_embed` (the broken spec files are in tests/conformance/test_self_proof.py)."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from bridge_core import Bridge
from bridge_core.conformance.runner import run
from bridge_core.drafting import draft_model_type, to_spec
from bridge_core.drafting.reach import FAST_CHECKS
from bridge_core.spec.schema import Spec

PAD = 1  # M2M100's pad_token_id: the padding index of its position module


@pytest.fixture(scope="module")
def draft():
    return draft_model_type("m2m_100")


@pytest.fixture(scope="module")
def spec(draft) -> Spec:
    return to_spec(draft)


@pytest.fixture(scope="module")
def pair(spec):
    from bridge_core.bridge import loading

    model = loading.random_model(spec, tiny=True)
    untouched = copy.deepcopy(model).eval()
    return Bridge.from_hf(model, spec), untouched


def _sinusoid(rows: int, dim: int) -> torch.Tensor:
    """tensor2tensor's table by hand: sin of position * 10000^(-j / (half - 1)) in one half, cos in the other."""
    half = dim // 2
    table = torch.zeros(rows, dim)
    for pos in range(rows):
        for j in range(half):
            angle = pos * math.exp(-j * math.log(10000) / (half - 1))
            table[pos, j], table[pos, half + j] = math.sin(angle), math.cos(angle)
    return table


def test_the_unedited_draft_says_sinusoidal_from_ids_and_passes(draft, spec):
    assert not draft.gaps, draft.gaps
    for pos in (spec.pos_embed, spec.encoder.pos_embed):
        assert (pos.kind, pos.offset) == ("sinusoidal_from_ids", PAD + 1)
    report = run(spec, checks=[*FAST_CHECKS, "embed", "pos_embed", "padding", "length_limit", "shapes"])
    assert report.ok, [r.explain() for r in report.failed()]


def test_hook_pos_embed_is_hfs_module_output_on_a_padded_batch(pair):
    bridge, hf = pair
    generator = torch.Generator().manual_seed(3)
    tokens = torch.randint(3, 100, (2, 7), generator=generator)
    tokens[0, :3] = PAD  # left padding with pad tokens: HF numbers only the real ones
    tokens[1, 5:] = PAD  # right padding
    mask = (tokens != PAD).long()
    decoder = torch.randint(3, 100, (2, 4), generator=generator)
    seen: dict[str, torch.Tensor] = {}
    handles = [
        module.register_forward_hook(lambda _m, _i, out, key=key: seen.__setitem__(key, out.detach().clone()))
        for key, module in (("enc", hf.model.encoder.embed_positions), ("dec", hf.model.decoder.embed_positions))
    ]
    try:
        with torch.no_grad():
            hf_logits = hf(input_ids=tokens, attention_mask=mask, decoder_input_ids=decoder).logits
    finally:
        for handle in handles:
            handle.remove()
    with torch.no_grad():
        plain = bridge(tokens, attention_mask=mask, decoder_input_ids=decoder)
        _, cache = bridge.run_with_cache(tokens, attention_mask=mask, decoder_input_ids=decoder)
    assert torch.equal(plain, hf_logits)  # no hook: HF's own forward
    torch.testing.assert_close(cache["hook_pos_embed"], seen["enc"], rtol=0, atol=0)
    torch.testing.assert_close(cache["decoder.hook_pos_embed"], seen["dec"], rtol=0, atol=0)
    # by hand: pad tokens read the zero row PAD, real tokens count from PAD + 1 over real tokens only
    positions = torch.tensor([[1, 1, 1, 2, 3, 4, 5], [2, 3, 4, 5, 6, 1, 1]])
    table = _sinusoid(int(positions.max()) + 1, bridge.cfg.d_model)
    table[PAD] = 0
    torch.testing.assert_close(cache["hook_pos_embed"], table[positions], rtol=0, atol=1e-5)


def test_w_pos_is_the_sinusoid_after_the_padding_row(pair):
    bridge, _ = pair
    assert bridge.W_pos.shape == (bridge.cfg.n_ctx, bridge.cfg.d_model)
    expected = _sinusoid(PAD + 1 + bridge.cfg.n_ctx, bridge.cfg.d_model)[PAD + 1 :]
    torch.testing.assert_close(bridge.W_pos, expected, rtol=0, atol=1e-5)


def test_inputs_longer_than_n_ctx_run_as_in_hf(pair):
    bridge, hf = pair
    tokens = torch.randint(3, 100, (1, bridge.cfg.n_ctx + 5), generator=torch.Generator().manual_seed(4))
    decoder = tokens[:, :3]
    with torch.no_grad():
        expected = hf(input_ids=tokens, decoder_input_ids=decoder).logits
        logits = bridge(tokens, decoder_input_ids=decoder)
    assert torch.equal(logits, expected)


def test_a_draft_with_the_offset_one_row_early_fails_pos_embed(draft):
    fields = copy.deepcopy(draft.fields)
    fields["encoder"]["pos_embed"]["offset"] = PAD  # positions read one row early, pad id taken as 0
    report = run(Spec.model_validate(fields), checks=["pos_embed"])
    assert not report.ok
    assert "encoder.pos_embed.offset" in report.failed()[0].explain()
