"""Bad calls get typed errors before anything is attached: unknown hook names (HookNameError with
close matches) and bad inputs (InputError, a ValueError)."""

from __future__ import annotations

import pytest
import torch

from bridge_core import HookNameError, InputError

from ._helpers import N_POSITIONS, VOCAB, assert_as_found, bridge_and_reference, snapshot, tokens


@pytest.fixture(scope="module")
def bridge():
    return bridge_and_reference("2L-h2-dh16-inner48")[0]


# --------------------------------------------------------------------------- hook names
@pytest.mark.parametrize(
    "name,suggestion",
    [
        ("blocks.0.attn.hook_qq", "blocks.0.attn.hook_q"),
        ("blocks.1.hook_resid_psot", "blocks.1.hook_resid_post"),
        ("blocks.0.attn.hook_patern", "blocks.0.attn.hook_pattern"),
        ("ln_final.hook_normalised", "ln_final.hook_normalized"),
        ("blocks.0.hook_mlp_in", None),
    ],
)
def test_an_unknown_hook_name_is_a_hook_name_error_with_close_matches(bridge, name, suggestion):
    with pytest.raises(HookNameError) as info:
        bridge.hook_point(name)
    assert isinstance(info.value, KeyError)
    assert info.value.name == name and name in str(info.value)
    if suggestion is not None:
        assert suggestion in info.value.suggestions and suggestion in str(info.value)


@pytest.mark.parametrize(
    "call",
    [
        lambda b, t: b.run_with_hooks(t, fwd_hooks=[("blocks.7.hook_resid_pre", lambda x, h: None)]),
        lambda b, t: b.run_with_hooks(t, bwd_hooks=[("blocks.0.hook_resid_prev", lambda x, h: None)]),
        lambda b, t: b.run_with_cache(t, names_filter=["hook_embed", "hook_embedding"]),
        lambda b, t: b.run_with_cache(t, names_filter="blocks.0.attn.hook_scores"),
        lambda b, t: b.add_hook("transformer.h.0.mlpp", lambda x, h: None),
        lambda b, t: b.add_hook("", lambda x, h: None),
    ],
    ids=["run_with_hooks", "bwd_hooks", "cache_list", "cache_str", "module_path_typo", "empty"],
)
def test_every_entry_point_refuses_unknown_hook_names_before_running(call):
    bridge, reference = bridge_and_reference("2L-h2-dh16-inner48")
    before = snapshot(bridge.model)
    with torch.no_grad(), pytest.raises(HookNameError):
        call(bridge, tokens())
    assert_as_found(bridge.model, before)
    with torch.no_grad():
        assert torch.equal(bridge(tokens()), reference(tokens()).logits)


@torch.no_grad()
def test_an_unknown_cache_key_is_a_hook_name_error_with_close_matches(bridge):
    _, cache = bridge.run_with_cache(tokens())
    with pytest.raises(HookNameError) as info:
        cache["blocks.0.hook_resid_pree"]
    assert "blocks.0.hook_resid_pre" in info.value.suggestions


# --------------------------------------------------------------------------- inputs
BAD_INPUTS = {
    "float_tokens": (lambda: tokens().float(), None),
    "bool_tokens": (lambda: tokens() > 50, None),
    "id_equal_to_vocab": (lambda: torch.full((2, 4), VOCAB), None),
    "negative_id": (lambda: torch.tensor([[1, -1, 2]]), None),
    "too_long_for_n_ctx": (lambda: tokens(1, N_POSITIONS + 1), None),
    "empty_sequence": (lambda: torch.zeros(1, 0, dtype=torch.long), None),
    "empty_batch": (lambda: torch.zeros(0, 5, dtype=torch.long), None),
    "three_dims": (lambda: tokens().unsqueeze(0), None),
    "python_list_without_tokenizer": (lambda: [1, 2, 3], None),
    "string_without_tokenizer": (lambda: "hello", None),
    "mask_shape_mismatch": (tokens, lambda: torch.ones(3, 8, dtype=torch.long)),
    "mask_batch_mismatch": (tokens, lambda: torch.ones(2, 9, dtype=torch.long)),
    "mask_value_2": (tokens, lambda: torch.full((3, 9), 2)),
    "mask_row_all_padding": (tokens, lambda: torch.ones(3, 9).index_fill(0, torch.tensor([1]), 0.0)),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
@pytest.mark.parametrize("entry", ["call", "run_with_cache", "run_with_hooks"])
@torch.no_grad()
def test_bad_input_is_an_input_error_raised_before_any_hook_is_attached(case, entry):
    bridge, _ = bridge_and_reference("1L-h4-dh8-inner_none")
    before = snapshot(bridge.model)
    make_tokens, make_mask = BAD_INPUTS[case]
    toks, mask = make_tokens(), (make_mask() if make_mask else None)
    fired: list = []
    with pytest.raises(InputError) as info:
        if entry == "call":
            bridge(toks, attention_mask=mask)
        elif entry == "run_with_cache":
            bridge.run_with_cache(toks, attention_mask=mask)
        else:
            bridge.run_with_hooks(toks, fwd_hooks=[(lambda n: True, lambda t, h: fired.append(h))], attention_mask=mask)
    assert isinstance(info.value, ValueError)
    assert fired == []
    assert_as_found(bridge.model, before)


@torch.no_grad()
def test_a_one_dimensional_mask_goes_with_a_one_dimensional_sequence():
    bridge, reference = bridge_and_reference("1L-h4-dh8-inner_none")
    toks = tokens(1, 6)[0]
    mask = torch.tensor([0, 1, 1, 1, 1, 1])
    expected = reference(input_ids=toks[None], attention_mask=mask[None]).logits
    assert torch.equal(bridge(toks, attention_mask=mask), expected)


@torch.no_grad()
def test_boolean_and_float_masks_of_zeros_and_ones_are_accepted():
    bridge, reference = bridge_and_reference("1L-h4-dh8-inner_none")
    toks = tokens()
    mask = torch.ones(3, 9, dtype=torch.long)
    mask[0, :2] = 0
    expected = reference(input_ids=toks, attention_mask=mask).logits
    for variant in (mask.bool(), mask.float()):
        torch.testing.assert_close(bridge(toks, attention_mask=variant)[mask.bool()], expected[mask.bool()])
