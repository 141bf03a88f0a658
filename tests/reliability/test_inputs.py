"""Bad call inputs on every built-in spec (docs/architecture.md): a clear `InputError` (a `ValueError`) raised before
anything is attached to the model. Sequence length is checked only where positions are learned (GPT-2, OPT);
rotary and relative-position models accept inputs longer than `max_position_embeddings`, as HF does.

"Before anything is attached" is observed at the moment the error is built: `InputError.__init__` is wrapped
to record the model's hook dictionaries right then, while a hook on every point is requested.
"""

from __future__ import annotations

import copy

import pytest
import torch

from bridge_core import Bridge
from bridge_core.errors import InputError

from ._models import BUILTIN_SPECS, attached_hooks, call_kwargs, hf_logits, model_for, tokens_for


@pytest.fixture(scope="module", params=BUILTIN_SPECS)
def pair(request):
    model = model_for(request.param)
    return Bridge.from_hf(model, spec=request.param), copy.deepcopy(model)


@pytest.fixture
def hooks_when_raised(pair, monkeypatch):
    bridge, _ = pair
    seen: list[dict] = []
    original = InputError.__init__

    def recording_init(self, *args, **kwargs):
        seen.append(attached_hooks(bridge.model))
        original(self, *args, **kwargs)

    monkeypatch.setattr(InputError, "__init__", recording_init)
    return seen


def good(bridge) -> torch.Tensor:
    return tokens_for(bridge, batch=2, seq=5)


BAD = {
    "negative_id": lambda b: (good(b).index_fill(1, torch.tensor([2]), -3), None),
    "id_equal_to_vocab": lambda b: (good(b).index_fill(1, torch.tensor([0]), b.cfg.d_vocab), None),
    "id_far_beyond_vocab": lambda b: (good(b).index_fill(1, torch.tensor([4]), 2**40), None),
    "empty_sequence": lambda b: (torch.zeros(2, 0, dtype=torch.long), None),
    "float_tokens": lambda b: (good(b).float(), None),
    "half_tokens": lambda b: (good(b).half(), None),
    "bool_tokens": lambda b: (good(b) > 3, None),
    "three_dims": lambda b: (good(b)[None], None),
    "zero_dims": lambda b: (torch.tensor(3), None),
    "string_without_tokenizer": lambda b: ("hello world", None),
    "list_of_strings_without_tokenizer": lambda b: (["hello", "world"], None),
    "numpy_like_list": lambda b: ([[1, 2, 3]], None),
    "mask_too_short": lambda b: (good(b), torch.ones(2, 4, dtype=torch.long)),
    "mask_batch_mismatch": lambda b: (good(b), torch.ones(3, 5, dtype=torch.long)),
    "mask_three_dims": lambda b: (good(b), torch.ones(2, 1, 5, dtype=torch.long)),
    "mask_value_2": lambda b: (good(b), torch.full((2, 5), 2)),
    "mask_value_half": lambda b: (good(b), torch.full((2, 5), 0.5)),
    "mask_negative": lambda b: (good(b), torch.full((2, 5), -1)),
    "mask_row_all_padding": lambda b: (good(b), torch.ones(2, 5).index_fill(0, torch.tensor([1]), 0.0)),
}


@pytest.mark.parametrize("case", list(BAD))
@torch.no_grad()
def test_bad_input_is_an_input_error_raised_before_any_hook_is_attached(pair, hooks_when_raised, case):
    bridge, _ = pair
    toks, mask = BAD[case](bridge)
    kwargs = call_kwargs(bridge.model, good(bridge))
    fired: list = []

    def record(tensor, hook):
        fired.append(hook.name)

    for call in (
        lambda: bridge(toks, attention_mask=mask, **kwargs),
        lambda: bridge.run_with_cache(toks, attention_mask=mask, **kwargs),
        lambda: bridge.run_with_hooks(toks, fwd_hooks=[(lambda n: True, record)], attention_mask=mask, **kwargs),
        lambda: bridge.generate(toks, max_new_tokens=2, attention_mask=mask),
    ):
        hooks_when_raised.clear()
        with pytest.raises(InputError) as info:
            call()
        assert isinstance(info.value, ValueError)
        assert hooks_when_raised and all(h == {} for h in hooks_when_raised), "a hook was attached before the check"
    assert fired == [] and attached_hooks(bridge.model) == {}


@torch.no_grad()
def test_the_messages_say_what_was_wrong(pair):
    bridge, _ = pair
    kwargs = call_kwargs(bridge.model, good(bridge))
    expected = {
        "negative_id": "outside the vocabulary",
        "id_equal_to_vocab": f"token id {bridge.cfg.d_vocab}",
        "empty_sequence": "is empty",
        "float_tokens": "must be integer token ids",
        "three_dims": "must be [batch, seq]",
        "string_without_tokenizer": "tokenizer",
        "mask_too_short": "attention_mask has shape (2, 4)",
        "mask_value_2": "only 0 and 1",
        "mask_row_all_padding": "no real token",
    }
    for case, needle in expected.items():
        toks, mask = BAD[case](bridge)
        with pytest.raises(InputError, match=None) as info:
            bridge(toks, attention_mask=mask, **kwargs)
        assert needle in str(info.value), (case, str(info.value))


@torch.no_grad()
def test_sequence_length_is_refused_only_where_positions_are_learned(pair, hooks_when_raised):
    bridge, reference = pair
    limit = getattr(bridge.model.config, "max_position_embeddings", None) or getattr(
        bridge.model.config, "n_positions", None
    )
    if bridge.position_kind.limits_length:
        toks = tokens_for(bridge, batch=1, seq=bridge.cfg.n_ctx + 1)
        with pytest.raises(InputError) as info:
            bridge(toks)
        assert "learned position table" in str(info.value) and hooks_when_raised[-1] == {}
        with pytest.raises(InputError):
            bridge.generate(tokens_for(bridge, batch=1, seq=bridge.cfg.n_ctx - 1), max_new_tokens=3)
        return
    seq = (limit or 32) + 5
    toks = tokens_for(bridge, batch=1, seq=seq)
    kwargs = call_kwargs(bridge.model, toks)
    logits = bridge(toks, **kwargs)
    torch.testing.assert_close(logits, hf_logits(reference, toks), rtol=0, atol=0)
    with torch.no_grad():
        _, cache = bridge.run_with_cache(toks, names_filter=lambda n: n.endswith("hook_pattern"), **kwargs)
    assert all(v.shape[-1] == seq for k, v in cache.items() if not k.startswith("decoder."))


@torch.no_grad()
def test_an_encoder_decoder_without_decoder_input_ids_is_an_input_error(pair, hooks_when_raised):
    bridge, _ = pair
    if not bridge.is_encoder_decoder:
        pytest.skip("decoder-only")
    for call in (lambda: bridge(good(bridge)), lambda: bridge.run_with_cache(good(bridge))):
        with pytest.raises(InputError) as info:
            call()
        assert "decoder_input_ids" in str(info.value) and hooks_when_raised[-1] == {}
    with pytest.raises(InputError):
        bridge(good(bridge), decoder_input_ids=torch.tensor([[0, bridge.cfg.d_vocab]]))
