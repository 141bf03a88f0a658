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
from bridge_core.errors import BridgeCoreError, InputError

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


# --------------------------------------------------------------------------- id dtypes
@pytest.mark.parametrize("dtype", [torch.int8, torch.uint8, torch.int16, torch.int32, torch.uint16, torch.uint32])
@torch.no_grad()
def test_any_integer_id_dtype_gives_the_models_logits_for_those_ids(pair, dtype):
    bridge, reference = pair
    toks = good(bridge) % 100  # ids every dtype here holds (int8 tops out at 127)
    kwargs = call_kwargs(bridge.model, toks)
    expected = hf_logits(reference, toks)
    narrow = {k: v.to(dtype) for k, v in kwargs.items()}  # T5's decoder ids go through the same check
    torch.testing.assert_close(bridge(toks.to(dtype), **narrow), expected, rtol=0, atol=0)
    name = bridge.hook_names()[0]
    _, cache = bridge.run_with_cache(toks.to(dtype), names_filter=name, **narrow)
    _, long_cache = bridge.run_with_cache(toks, names_filter=name, **kwargs)
    torch.testing.assert_close(cache[name], long_cache[name], rtol=0, atol=0)


@pytest.mark.parametrize("dtype", [torch.uint64, torch.bool, torch.float32, torch.float64, torch.complex64])
@torch.no_grad()
def test_ids_of_a_non_integer_or_uint64_dtype_are_refused_naming_the_dtype(pair, hooks_when_raised, dtype):
    bridge, _ = pair
    with pytest.raises(InputError) as info:
        bridge(good(bridge).to(dtype), **call_kwargs(bridge.model, good(bridge)))
    assert str(dtype) in str(info.value) and hooks_when_raised[-1] == {}


@torch.no_grad()
def test_a_negative_int8_id_is_refused_as_outside_the_vocabulary(pair):
    bridge, _ = pair
    toks = (good(bridge) % 100).to(torch.int8).index_fill(1, torch.tensor([1]), -5)
    with pytest.raises(InputError, match="token id -5, outside the vocabulary"):
        bridge(toks, **call_kwargs(bridge.model, good(bridge)))


# --------------------------------------------------------------------------- losses
@pytest.mark.parametrize("options", [{"return_type": "loss"}, {"return_type": "both"}, {"loss_per_token": True}])
@torch.no_grad()
def test_a_loss_on_a_single_token_is_an_input_error_not_nan(pair, hooks_when_raised, options):
    """HookedTransformer returns nan here (a mean over no next token); the bridge refuses before attaching anything."""
    bridge, _ = pair
    options = {"return_type": "loss", **options}
    one = good(bridge)[:, :1]
    # an encoder-decoder's loss is over its decoder's tokens: one decoder token there
    toks, kwargs = (good(bridge), {"decoder_input_ids": one}) if bridge.is_encoder_decoder else (one, {})
    for run in (bridge, bridge.run_with_cache):
        with pytest.raises(InputError, match="at least 2 tokens") as info:
            run(toks, **kwargs, **options)
        assert hooks_when_raised[-1] == {} and isinstance(info.value, ValueError)


@torch.no_grad()
def test_a_loss_where_the_mask_leaves_no_adjacent_real_tokens_is_an_input_error(pair, hooks_when_raised):
    bridge, _ = pair
    two = good(bridge)[:, :2]
    mask = torch.tensor([[0, 1], [0, 1]])  # left padding: each row's one real token has no next token
    if bridge.is_encoder_decoder:  # the decoder's tokens and mask are the ones a loss is over
        call = lambda: bridge(good(bridge), decoder_input_ids=two, decoder_attention_mask=mask, return_type="loss")  # noqa: E731
    else:
        call = lambda: bridge(two, attention_mask=mask, return_type="loss")  # noqa: E731
    with pytest.raises(InputError, match="two adjacent real tokens"):
        call()
    assert hooks_when_raised[-1] == {}


# --------------------------------------------------------------------------- layer-range arguments
@pytest.mark.parametrize("argument", ["stop_at_layer", "start_at_layer"])
@pytest.mark.parametrize("value", [1.5, 1.0, True, False, "1", torch.tensor(True), torch.tensor([0, 1])])
@torch.no_grad()
def test_a_layer_index_that_is_not_an_integer_is_an_input_error_naming_the_argument(
    pair, hooks_when_raised, argument, value
):
    bridge, _ = pair
    x = good(bridge) if argument == "stop_at_layer" else torch.zeros(2, 5, bridge.cfg.d_model)
    with pytest.raises(InputError) as info:
        bridge(x, **{argument: value}, **call_kwargs(bridge.model, good(bridge)))
    assert argument in str(info.value) and hooks_when_raised[-1] == {}


@torch.no_grad()
def test_numpy_integers_are_layer_indices_like_ints(pair):
    np = pytest.importorskip("numpy")
    bridge, _ = pair
    if bridge.is_encoder_decoder:
        pytest.skip("layer ranges are decoder-only")
    for value in (np.int64(1), np.int32(-1), np.uint8(0)):
        expected = bridge(good(bridge), stop_at_layer=int(value))
        torch.testing.assert_close(bridge(good(bridge), stop_at_layer=value), expected, rtol=0, atol=0)


# --------------------------------------------------------------------------- hook functions and pairs
NOT_FUNCTIONS = [42, None, "print", torch.zeros(1)]


@pytest.mark.parametrize("fn", NOT_FUNCTIONS, ids=lambda v: type(v).__name__)
@torch.no_grad()
def test_a_hook_that_is_not_callable_is_refused_when_added_naming_the_hook(pair, fn):
    bridge, reference = pair
    name = bridge.hook_names()[0]
    toks = good(bridge)
    kwargs = call_kwargs(bridge.model, toks)
    expected = hf_logits(reference, toks)
    attempts = {
        "add_hook": lambda: bridge.add_hook(name, fn),
        "add_hook_bwd_filter": lambda: bridge.add_hook(lambda n: n == name, fn, dir="bwd"),
        "run_with_hooks": lambda: bridge.run_with_hooks(toks, fwd_hooks=[(name, fn)], **kwargs),
        "run_with_hooks_bwd": lambda: bridge.run_with_hooks(toks, bwd_hooks=[(name, fn)], **kwargs),
        "hooks": lambda: bridge.hooks(fwd_hooks=[(name, fn)]).__enter__(),
    }
    for what, attempt in attempts.items():
        with pytest.raises(InputError) as info:
            attempt()
        message = str(info.value)
        assert "must be a function" in message and type(fn).__name__ in message, what
        assert name in message or what == "add_hook_bwd_filter", what
        # nothing was kept: the next call is the model's own forward
        torch.testing.assert_close(bridge(toks, **kwargs), expected, rtol=0, atol=0)
    assert attached_hooks(bridge.model) == {}


@pytest.mark.parametrize(
    "pairs",
    [
        ("blocks.0.hook_resid_pre", lambda t, hook: None),  # one pair, not a list of them
        ["blocks.0.hook_resid_pre"],
        [("blocks.0.hook_resid_pre",)],
        [("blocks.0.hook_resid_pre", lambda t, hook: None, "fwd")],
        "blocks.0.hook_resid_pre",
        42,
    ],
    ids=["bare_pair", "name_only", "one_tuple", "triple", "string", "int"],
)
@torch.no_grad()
def test_hooks_not_given_as_name_fn_pairs_are_an_input_error(pair, pairs):
    bridge, reference = pair
    toks = good(bridge)
    kwargs = call_kwargs(bridge.model, toks)
    for attempt in (
        lambda: bridge.run_with_hooks(toks, fwd_hooks=pairs, **kwargs),
        lambda: bridge.run_with_hooks(toks, bwd_hooks=pairs, **kwargs),
        lambda: bridge.hooks(fwd_hooks=pairs).__enter__(),
    ):
        with pytest.raises(InputError, match=r"_hooks.*\(name, fn\) pair"):
            attempt()
    torch.testing.assert_close(bridge(toks, **kwargs), hf_logits(reference, toks), rtol=0, atol=0)


@torch.no_grad()
def test_a_bad_direction_or_hook_name_type_is_an_input_error(pair):
    bridge, _ = pair
    fn = lambda t, hook: None  # noqa: E731
    with pytest.raises(InputError, match="dir must be 'fwd' or 'bwd', got 'sideways'") as info:
        bridge.add_hook("blocks.0.hook_resid_pre", fn, dir="sideways")
    assert isinstance(info.value, BridgeCoreError) and isinstance(info.value, ValueError)
    for name in (42, None, ["blocks.0.hook_resid_pre"]):
        with pytest.raises(InputError, match="by name"):
            bridge.add_hook(name, fn)
    assert bridge._entries == []
