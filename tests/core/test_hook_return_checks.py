"""What a hook function may return, checked the same way at every kind of hook point.

A replacement must be a tensor of the point's shape and device (never meta). A floating tensor of another
floating dtype is cast to the point's dtype; integer, bool and complex tensors are refused. Every refusal
is a typed error naming the hook point, raised before the bad value reaches the model, with nothing left
attached. References: the untouched HF model (a deep copy), edited with plain PyTorch hooks.
"""

from __future__ import annotations

import pytest
import torch

from bridge_core.errors import (
    BridgeCoreError,
    HookDeviceError,
    HookDtypeError,
    HookReturnError,
    HookReturnShapeError,
    HookReturnTypeError,
    HookShapeError,
)

from ._helpers import bridge_and_reference, hf_logits, tokens

SHAPE = "2L-h2-dh16-inner48"

# One point of every kind: module input, module output (through a head view), the mid residual written
# in place, norm values, head results, attention internals, the batch-broadcast position embedding.
POINTS = [
    "blocks.0.attn.hook_z",
    "blocks.0.attn.hook_q",
    "blocks.1.hook_resid_post",
    "blocks.0.hook_resid_mid",
    "blocks.0.ln1.hook_scale",
    "blocks.1.ln2.hook_normalized",
    "blocks.1.attn.hook_result",
    "blocks.0.attn.hook_attn_scores",
    "blocks.1.attn.hook_pattern",
    "hook_pos_embed",
]
MODULE_BOUNDARY = {
    "blocks.0.attn.hook_z",
    "blocks.0.attn.hook_q",
    "blocks.1.hook_resid_post",
    "blocks.0.hook_resid_mid",
}

BAD_RETURNS = {
    "meta": (lambda t, h: torch.empty_like(t, device="meta"), HookDeviceError, "meta"),
    "int64": (lambda t, h: t.long(), HookDtypeError, "int64"),
    "bool": (lambda t, h: t > 0, HookDtypeError, "bool"),
    "complex": (lambda t, h: t.to(torch.complex64), HookDtypeError, "complex64"),
    "list": (lambda t, h: t.tolist(), HookReturnTypeError, "list"),
    "wrong_shape": (lambda t, h: t[..., :-1], HookReturnShapeError, "shape"),
}


@pytest.fixture(scope="module")
def pair():
    return bridge_and_reference(SHAPE)


@pytest.fixture(scope="module")
def toks():
    return tokens()


@pytest.mark.parametrize("bad", list(BAD_RETURNS))
@pytest.mark.parametrize("point", POINTS)
@torch.no_grad()
def test_a_bad_return_value_is_a_typed_error_naming_the_point_and_leaves_nothing_attached(pair, toks, point, bad):
    bridge, reference = pair
    fn, error, what = BAD_RETURNS[bad]
    with pytest.raises(error) as info:
        bridge.run_with_hooks(toks, fwd_hooks=[(point, fn)])
    assert isinstance(info.value, HookReturnError) and isinstance(info.value, BridgeCoreError)
    assert info.value.hook_name == point
    assert point in str(info.value) and what in str(info.value)
    assert torch.equal(bridge(toks), hf_logits(reference, toks, None))


def test_the_error_classes_keep_the_old_shape_error_contract():
    # code written against HookShapeError still catches shape and non-tensor returns
    assert issubclass(HookReturnShapeError, HookShapeError) and issubclass(HookReturnTypeError, HookShapeError)
    assert issubclass(HookReturnTypeError, TypeError) and issubclass(HookDtypeError, TypeError)
    assert all(issubclass(e, ValueError) for e in (HookReturnShapeError, HookDtypeError, HookDeviceError))


@pytest.mark.parametrize("point", POINTS)
@torch.no_grad()
def test_a_float64_copy_of_the_tensor_is_cast_back_and_changes_nothing(pair, toks, point):
    bridge, reference = pair
    hooked = bridge.run_with_hooks(toks, fwd_hooks=[(point, lambda t, h: t.double())])
    assert hooked.dtype == torch.float32
    expected = hf_logits(reference, toks, None)
    if point in MODULE_BOUNDARY:  # the same values written back into HF's own tensors
        assert torch.equal(hooked, expected)
    else:  # recomputed norm values and head results, eager attention: float32 rounding
        torch.testing.assert_close(hooked, expected, rtol=0, atol=1e-5)


@torch.no_grad()
def test_a_float16_return_is_cast_to_the_points_dtype_like_rounding_the_module_output_by_hand(pair, toks):
    bridge, reference = pair
    hooked = bridge.run_with_hooks(toks, fwd_hooks=[("blocks.0.hook_mlp_out", lambda t, h: t.half())])

    def round_through_half(module, args, output):
        return output.half().float()

    handle = reference.transformer.h[0].mlp.register_forward_hook(round_through_half)
    try:
        by_hand = hf_logits(reference, toks, None)
    finally:
        handle.remove()
    assert not torch.equal(by_hand, hf_logits(reference, toks, None)), "the rounding must matter for this test"
    assert torch.equal(hooked, by_hand)


@torch.no_grad()
def test_a_meta_return_no_longer_yields_logits_from_uninitialized_memory(pair, toks):
    bridge, _ = pair
    for _ in range(2):  # before the check, two identical calls returned different logits
        with pytest.raises(HookDeviceError, match=r"blocks\.0\.attn\.hook_pattern"):
            bridge.run_with_hooks(toks, fwd_hooks=[("blocks.0.attn.hook_pattern", lambda t, h: t.to("meta"))])


def test_a_backward_hook_returning_an_integer_gradient_is_refused_naming_the_point(pair, toks):
    bridge, _ = pair
    with pytest.raises(HookDtypeError, match=r"blocks\.1\.hook_resid_post"):
        loss = bridge.run_with_hooks(
            toks, return_type="loss", bwd_hooks=[("blocks.1.hook_resid_post", lambda g, h: g.long())]
        )
        loss.backward()
