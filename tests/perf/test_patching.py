"""`patch_sweep` and `steering_sweep` (many interventions stacked in one batch) give, entry for entry,
what one forward per intervention gives: plain PyTorch hooks on an untouched copy of the HF model."""

from __future__ import annotations

import pytest
import torch

from bridge_core.errors import InputError
from bridge_core.patching import patch_sweep, steering_sweep
from tests.core._helpers import VOCAB, bridge_and_reference

SHAPE = "3L-h3-dh16-inner80"
SEQ = 6


def _tokens(seed: int, batch: int = 2) -> torch.Tensor:
    return torch.randint(0, VOCAB, (batch, SEQ), generator=torch.Generator().manual_seed(seed))


def _metric(logits: torch.Tensor) -> torch.Tensor:
    return logits[:, -1].log_softmax(-1)[:, 3].mean()  # log-prob of token 3 at the last position


def _pre_hook(module: torch.nn.Module, edit):
    """A pre-hook replacing the module's first input (positional or `hidden_states`) by `edit(x)`."""

    def hook(mod, args, kwargs):
        if args:
            return (edit(args[0]), *args[1:]), kwargs
        return args, {**kwargs, "hidden_states": edit(kwargs["hidden_states"])}

    return module.register_forward_pre_hook(hook, with_kwargs=True)


def _reference_inputs(model, tokens: torch.Tensor, modules) -> list[torch.Tensor]:
    """The input of each module on one clean forward of the untouched model."""
    seen: list[torch.Tensor] = []
    handles = [_pre_hook(m, lambda x: seen.append(x.clone()) or x) for m in modules]
    with torch.no_grad():
        model(tokens)
    for handle in handles:
        handle.remove()
    return seen


def _reference_loop(model, corrupted, modules, clean_inputs, edit_for) -> torch.Tensor:
    rows = []
    for module, clean in zip(modules, clean_inputs, strict=True):
        values = []
        for edit in edit_for(clean):
            handle = _pre_hook(module, edit)
            with torch.no_grad():
                values.append(_metric(model(corrupted).logits))
            handle.remove()
        rows.append(torch.stack(values))
    return torch.stack(rows)


@pytest.mark.parametrize("batch_size,logit_positions", [(1, None), (5, None), (100, None), (4, slice(-1, None))])
def test_resid_pre_sweep_equals_one_forward_per_layer_and_position(batch_size, logit_positions):
    bridge, reference = bridge_and_reference(SHAPE)
    clean, corrupted = _tokens(0), _tokens(1)
    blocks = list(reference.transformer.h)

    def edits(clean_x):
        def at(p):
            def edit(x):
                x = x.clone()
                x[:, p] = clean_x[:, p]
                return x

            return edit

        return [at(p) for p in range(SEQ)]

    expected = _reference_loop(reference, corrupted, blocks, _reference_inputs(reference, clean, blocks), edits)
    got = patch_sweep(
        bridge, clean, corrupted, _metric, kind="resid_pre", batch_size=batch_size, logit_positions=logit_positions
    )
    assert got.shape == (3, SEQ)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    assert expected.std() > 1e-3  # the patches change the metric: a sweep that patched nothing would fail


def test_head_sweep_equals_one_forward_per_layer_and_head():
    bridge, reference = bridge_and_reference(SHAPE)
    clean, corrupted = _tokens(0), _tokens(1)
    projections = [block.attn.c_proj for block in reference.transformer.h]  # its input: heads side by side
    d_head = 16

    def edits(clean_z):
        def head(h):
            def edit(x):
                x = x.clone()
                x[..., h * d_head : (h + 1) * d_head] = clean_z[..., h * d_head : (h + 1) * d_head]
                return x

            return edit

        return [head(h) for h in range(3)]

    clean_z = _reference_inputs(reference, clean, projections)
    expected = _reference_loop(reference, corrupted, projections, clean_z, edits)
    got = patch_sweep(bridge, clean, corrupted, _metric, kind="head", batch_size=4)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    assert expected.std() > 1e-3


def test_steering_sweep_equals_one_forward_per_scale():
    bridge, reference = bridge_and_reference(SHAPE)
    tokens = _tokens(2)
    vector = torch.randn(48, generator=torch.Generator().manual_seed(3))
    scales = [0.0, 0.5, -1.0, 2.0, 4.0]
    block = reference.transformer.h[1]
    expected = []
    for scale in scales:
        handle = _pre_hook(block, lambda x, s=scale: x + s * vector)
        with torch.no_grad():
            expected.append(_metric(reference(tokens).logits))
        handle.remove()
    got = steering_sweep(bridge, tokens, "blocks.1.hook_resid_pre", vector, scales, _metric, batch_size=2)
    torch.testing.assert_close(got, torch.stack(expected), atol=1e-5, rtol=1e-5)
    last_only = steering_sweep(bridge, tokens, "blocks.1.hook_resid_pre", vector, scales, _metric, 3, slice(-1, None))
    torch.testing.assert_close(last_only, torch.stack(expected), atol=1e-5, rtol=1e-5)


def test_sweeps_refuse_bad_arguments_with_typed_errors():
    bridge, _ = bridge_and_reference(SHAPE)
    clean = _tokens(0)
    with pytest.raises(InputError, match="kind must be one of"):
        patch_sweep(bridge, clean, clean, _metric, kind="mlp")
    with pytest.raises(InputError, match="differ in shape"):
        patch_sweep(bridge, clean, clean[:, :3], _metric)
    with pytest.raises(InputError, match="outside"):
        patch_sweep(bridge, clean, clean, _metric, layers=[3])
    with pytest.raises(InputError, match="outside a sequence"):
        patch_sweep(bridge, clean, clean, _metric, positions=[SEQ])
