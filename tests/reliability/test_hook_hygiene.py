"""Hook hygiene on every built-in spec: whatever happens during a call (a user hook raising, the forward failing
after validation, KeyboardInterrupt, generation interrupted on its third step, stop_at_layer, a backward pass),
every module's hook dictionaries are exactly as found afterwards, the configs' attention implementation is
restored, `reset_hooks()` removes everything `add_hook` added, and transformers' attention / mask registries
hold no name beyond `bridge_core`.
"""

from __future__ import annotations

import pytest
import torch
from transformers import AttentionInterface
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS

from bridge_core import Bridge
from bridge_core.transformers_internals import config_objects

from ._models import BUILTIN_SPECS, attached_hooks, call_kwargs, model_for, tokens_for

ATTENTION_NAMES_BEFORE = set(AttentionInterface._global_mapping)
MASK_NAMES_BEFORE = set(ALL_MASK_ATTENTION_FUNCTIONS._global_mapping)


class HookFailed(Exception):
    pass


def raise_(exc: BaseException):
    def hook(tensor, hook):
        raise exc

    return hook


@pytest.fixture(scope="module", params=BUILTIN_SPECS)
def built(request):
    model = model_for(request.param)
    return request.param, model, Bridge.from_hf(model, spec=request.param)


@pytest.fixture
def bridge(built):
    _, model, bridge = built
    hooks_before = attached_hooks(model)
    implementations = [(id(c), c._attn_implementation) for c in config_objects(model)]
    yield bridge
    bridge.reset_hooks()
    assert attached_hooks(model) == hooks_before == {}, "hooks left attached"
    assert [(id(c), c._attn_implementation) for c in config_objects(model)] == implementations
    assert set(AttentionInterface._global_mapping) - ATTENTION_NAMES_BEFORE <= {"bridge_core"}
    assert set(ALL_MASK_ATTENTION_FUNCTIONS._global_mapping) - MASK_NAMES_BEFORE <= {"bridge_core"}


def run(bridge, **kwargs):
    toks = tokens_for(bridge)
    return bridge(toks, **call_kwargs(bridge.model, toks), **kwargs)


def internal_point(bridge) -> str:
    """An attention pattern that fires on every generation step (T5: in the decoder, not the encoder)."""
    return [n for n in bridge.hook_names() if n.endswith("attn.hook_pattern")][-1]


def last_point(bridge) -> str:
    return bridge.hook_names()[-1]


@torch.no_grad()
def test_a_user_hook_that_raises_propagates_its_own_exception(bridge):
    for name in (bridge.hook_names()[0], internal_point(bridge), last_point(bridge)):
        error = HookFailed(name)
        with pytest.raises(HookFailed) as info:
            bridge.run_with_hooks(
                tokens_for(bridge), fwd_hooks=[(name, raise_(error))], **call_kwargs(bridge.model, tokens_for(bridge))
            )
        assert info.value is error
        assert attached_hooks(bridge.model) == {}


@torch.no_grad()
def test_keyboard_interrupt_inside_a_hook_propagates_and_detaches_everything(bridge):
    for name in (internal_point(bridge), last_point(bridge)):
        hooks = [(lambda n: True, lambda t, h: None), (name, raise_(KeyboardInterrupt()))]
        with pytest.raises(KeyboardInterrupt), bridge.hooks(fwd_hooks=hooks):
            run(bridge)
        assert attached_hooks(bridge.model) == {}


@torch.no_grad()
def test_a_forward_that_fails_after_validation_detaches_everything(bridge):
    """Valid tokens, then a hook on the embedding returns a tensor of the wrong shape: the call fails inside HF."""
    embed = bridge.hook_names()[0]
    assert "embed" in embed
    with pytest.raises(ValueError):
        bridge.run_with_hooks(
            tokens_for(bridge),
            fwd_hooks=[(embed, lambda t, h: t[:, :1])],
            **call_kwargs(bridge.model, tokens_for(bridge)),
        )
    # an HF module path hooked with a function that breaks the module's contract: HF itself raises
    module_path = bridge.spec.embed.path if isinstance(bridge.spec.embed.path, str) else bridge.spec.embed.path[0]
    with pytest.raises(Exception) as info:
        bridge.run_with_hooks(
            tokens_for(bridge),
            fwd_hooks=[(module_path, lambda t, h: t[..., :3])],
            **call_kwargs(bridge.model, tokens_for(bridge)),
        )
    assert not isinstance(info.value, (KeyboardInterrupt, SystemExit))


@torch.no_grad()
def test_nested_hooks_contexts_and_add_hook_then_reset_hooks(bridge):
    fired: list[str] = []
    names = bridge.hook_names()
    bridge.add_hook(names[0], lambda t, h: fired.append("add_hook"))
    with bridge.hooks(fwd_hooks=[(names[1], lambda t, h: fired.append("outer"))]):
        with bridge.hooks(fwd_hooks=[(internal_point(bridge), lambda t, h: fired.append("inner"))]):
            run(bridge)
        assert attached_hooks(bridge.model) == {}
        run(bridge)
    run(bridge)
    assert fired == ["add_hook", "outer", "inner", "add_hook", "outer", "add_hook"]
    bridge.reset_hooks()
    fired.clear()
    run(bridge)
    assert fired == [] and attached_hooks(bridge.model) == {}


def test_generation_interrupted_on_its_third_step_detaches_everything(bridge):
    calls = []

    def third_step_fails(tensor, hook):
        calls.append(1)
        if len(calls) == 3:
            raise HookFailed("step 3")

    prompt = tokens_for(bridge, batch=1, seq=4)
    hooks = [(internal_point(bridge), third_step_fails)]
    # internal attention hooks on the reimplement path (GPT-Neo, MPT, Falcon) refuse a KV cache (a known limit)
    reimplemented = any(b.attn.implementation == "reimplement" for b in bridge.bound.all_blocks())
    with torch.no_grad(), pytest.raises(HookFailed), bridge.hooks(fwd_hooks=hooks):
        bridge.generate(prompt, max_new_tokens=6, use_cache=not reimplemented)
    assert len(calls) == 3
    with torch.no_grad():  # and it still generates afterwards
        out = bridge.generate(prompt, max_new_tokens=2)
    assert out.shape[0] == 1


@torch.no_grad()
def test_stop_at_layer_detaches_its_stop_hook(bridge):
    if bridge.is_encoder_decoder:
        from bridge_core.errors import InputError

        with pytest.raises(InputError):
            run(bridge, stop_at_layer=1)
        return
    for layer in (0, 1, bridge.cfg.n_layers, -1):
        residual = run(bridge, stop_at_layer=layer)
        assert residual.shape[-1] == bridge.cfg.d_model
        assert attached_hooks(bridge.model) == {}
    with pytest.raises(HookFailed), bridge.hooks(fwd_hooks=[(lambda n: True, raise_(HookFailed()))]):
        run(bridge, stop_at_layer=1)


def test_run_with_cache_incl_bwd_then_backward_leaves_no_hook_and_no_grad_hook(bridge):
    toks = tokens_for(bridge)
    with torch.enable_grad():
        _, cache = bridge.run_with_cache(toks, incl_bwd=True, return_type="loss", **call_kwargs(bridge.model, toks))
    assert any(k.endswith("_grad") for k in cache)
    assert all(not getattr(p, "_backward_hooks", None) for p in bridge.model.parameters())
    bridge.model.zero_grad(set_to_none=True)
