"""Layer ranges as HookedTransformer defines them: `start_at_layer` and `stop_at_layer` select the slice
`blocks[start:stop]` (negative indices count from the end), and a call with a stop returns the residual
entering block `stop`. Checked against the block inputs and outputs of an untouched deep copy, captured
with plain torch hooks.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from bridge_core import Bridge
from bridge_core.bridge.loading import random_model
from bridge_core.errors import InputError
from bridge_core.registry import default_registry

from ._helpers import assert_close_at, padding_mask, real_positions, tiny_gpt2, tokens

SEQ = 9


def gpt2_3_layers() -> tuple[Bridge, nn.Module]:
    model = tiny_gpt2("3L-h3-dh16-inner80")
    reference = copy.deepcopy(model)
    return Bridge.from_hf(model, spec="gpt2"), reference


def llama_tiny() -> tuple[Bridge, nn.Module]:
    """Rotary positions and an RMS norm: the blocks run alone need the position embeddings rebuilt."""
    model = random_model(default_registry().get("llama"), seed=0)
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        torch.manual_seed(1)
        for param in model.parameters():
            param.add_(torch.randn_like(param) * 0.05)
    reference = copy.deepcopy(model)
    return Bridge.from_hf(model, spec="llama"), reference


MODELS = {"gpt2": gpt2_3_layers, "llama": llama_tiny}


def residual_states(bridge: Bridge, reference: nn.Module, toks: torch.Tensor, mask: torch.Tensor | None) -> list:
    """`states[k]`: the residual entering block k of the reference; `states[n]`: the last block's output."""
    names = {id(m): n for n, m in bridge.model.named_modules()}
    blocks = [reference.get_submodule(names[id(b.module)]) for b in bridge.bound.blocks]
    states: list = [None] * (len(blocks) + 1)

    def pre(index):
        def record(module, args, kwargs):
            states[index] = (args[0] if args else kwargs["hidden_states"]).detach().clone()

        return record

    def post(module, args, output):
        states[-1] = (output[0] if isinstance(output, tuple) else output).detach().clone()

    handles = [b.register_forward_pre_hook(pre(i), with_kwargs=True) for i, b in enumerate(blocks)]
    handles.append(blocks[-1].register_forward_hook(post))
    try:
        with torch.no_grad():
            reference(input_ids=toks, attention_mask=mask)
    finally:
        for handle in handles:
            handle.remove()
    return states


@pytest.fixture(scope="module", params=list(MODELS))
def setup(request):
    bridge, reference = MODELS[request.param]()
    toks = tokens(seq=SEQ) % bridge.cfg.d_vocab
    mask = padding_mask("right", seq=SEQ)
    return bridge, reference, toks, mask, residual_states(bridge, reference, toks, mask)


@torch.no_grad()
def test_start_and_stop_together_run_exactly_the_slice_of_blocks(setup):
    bridge, _, _, mask, states = setup
    n = bridge.cfg.n_layers
    real = real_positions(mask, seq=SEQ)
    ran: list[int] = []
    probes = [(f"blocks.{i}.hook_resid_pre", lambda t, hook: ran.append(hook.layer())) for i in range(n)]
    checked = 0
    for start in range(-n, n + 1):
        for stop in range(-n, n + 1):
            first, last = start if start >= 0 else start + n, stop if stop >= 0 else stop + n
            if first > last:
                continue
            ran.clear()
            with bridge.hooks(fwd_hooks=probes):
                out = bridge(states[first], attention_mask=mask, start_at_layer=start, stop_at_layer=stop)
            assert ran == list(range(first, last)), (start, stop)
            assert out.shape == states[last].shape, (start, stop)
            assert_close_at(out, states[last], real, atol=1e-5)
            checked += 1
    assert checked > 2 * n, "negative and non-negative indices were both exercised"


@torch.no_grad()
def test_stop_alone_accepts_negative_indices_as_python_slices_do(setup):
    bridge, _, toks, mask, states = setup
    n = bridge.cfg.n_layers
    real = real_positions(mask, seq=SEQ)
    for stop in range(-n, 0):
        residual = bridge(toks, attention_mask=mask, stop_at_layer=stop)
        assert_close_at(residual, states[stop + n], real, atol=0)


@torch.no_grad()
def test_start_alone_still_returns_the_models_logits(setup):
    bridge, reference, toks, mask, states = setup
    real = real_positions(mask, seq=SEQ)
    expected = reference(input_ids=toks, attention_mask=mask).logits
    for start in (0, 1, -1):
        first = start % bridge.cfg.n_layers
        logits = bridge(states[first], attention_mask=mask, start_at_layer=start)
        assert_close_at(logits, expected, real, atol=1e-4)


@torch.no_grad()
def test_a_stop_before_the_start_is_an_input_error_naming_both(setup):
    bridge, _, _, mask, states = setup
    n = bridge.cfg.n_layers
    for start, stop in ((2, 1), (-1, 0), (n, -1)):
        with pytest.raises(InputError) as info:
            bridge(states[0], attention_mask=mask, start_at_layer=start, stop_at_layer=stop)
        assert "start_at_layer" in str(info.value) and "stop_at_layer" in str(info.value)
