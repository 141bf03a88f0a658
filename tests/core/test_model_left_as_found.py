"""The user's model is left as found (docs/architecture.md): parameters bitwise, module tree, config and every
module's hook dictionaries, after building the bridge and after every way of using it, failures included."""

from __future__ import annotations

import pytest
import torch

from bridge_core import Bridge

from ._helpers import IMPLEMENTATIONS, assert_as_found, snapshot, tiny_gpt2, tokens

SHAPE = "2L-h2-dh16-inner48"


@pytest.fixture(params=IMPLEMENTATIONS)
def found(request):
    """A model, its snapshot taken before the bridge exists, and the bridge."""
    model = tiny_gpt2(SHAPE, request.param)
    before = snapshot(model)
    return model, before, Bridge.from_hf(model, spec="gpt2")


class HookFailed(Exception):
    pass


def raise_in_hook(exc: BaseException):
    def hook(tensor, hook):
        raise exc

    return hook


def use_cache_all(bridge, toks):
    bridge.run_with_cache(toks)


def use_identity_hooks_everywhere(bridge, toks):
    bridge.run_with_hooks(toks, fwd_hooks=[(lambda n: True, lambda t, h: t.clone())])


def use_add_hook_then_reset(bridge, toks):
    bridge.add_hook(lambda n: True, lambda t, h: None)
    bridge.add_hook("transformer.h.0.mlp.c_fc", lambda t, h: None)
    bridge(toks)
    bridge.reset_hooks()


def use_hooks_context(bridge, toks):
    with bridge.hooks(fwd_hooks=[("blocks.1.attn.hook_pattern", lambda t, h: None)]):
        bridge(toks)


def use_backward_hooks(bridge, toks):
    with torch.enable_grad():
        logits = bridge.run_with_hooks(toks, bwd_hooks=[(lambda n: True, lambda g, h: None)])
        logits.sum().backward()
    bridge.model.zero_grad(set_to_none=True)


def use_a_hook_that_raises_at_a_module_boundary(bridge, toks):
    error = HookFailed("boom")
    with pytest.raises(HookFailed) as info:
        bridge.run_with_hooks(toks, fwd_hooks=[("blocks.1.hook_resid_mid", raise_in_hook(error))])
    assert info.value is error


def use_a_hook_that_raises_inside_attention(bridge, toks):
    error = HookFailed("boom in attention")
    with pytest.raises(HookFailed) as info:
        bridge.run_with_hooks(
            toks,
            fwd_hooks=[
                ("blocks.0.attn.hook_q", lambda t, h: None),
                ("blocks.1.attn.hook_pattern", raise_in_hook(error)),
            ],
        )
    assert info.value is error


def use_a_hook_that_raises_in_a_recomputed_norm(bridge, toks):
    with pytest.raises(HookFailed):
        bridge.run_with_hooks(toks, fwd_hooks=[("blocks.0.ln2.hook_scale", raise_in_hook(HookFailed()))])


def use_keyboard_interrupt_inside_attention(bridge, toks):
    with pytest.raises(KeyboardInterrupt):
        bridge.run_with_hooks(toks, fwd_hooks=[("blocks.0.attn.hook_attn_scores", raise_in_hook(KeyboardInterrupt()))])


def use_keyboard_interrupt_at_a_module_boundary(bridge, toks):
    with pytest.raises(KeyboardInterrupt):
        bridge.run_with_hooks(toks, fwd_hooks=[("blocks.1.hook_resid_pre", raise_in_hook(KeyboardInterrupt()))])


def use_a_wrong_shape_return(bridge, toks):
    with pytest.raises(ValueError):
        bridge.run_with_hooks(toks, fwd_hooks=[("blocks.0.attn.hook_z", lambda t, h: t[:, :1])])


def use_bad_input_with_hooks(bridge, toks):
    with pytest.raises(ValueError):
        bridge.run_with_hooks(toks.float(), fwd_hooks=[("hook_embed", lambda t, h: None)])


def use_unknown_hook_name(bridge, toks):
    with pytest.raises(KeyError):
        bridge.run_with_hooks(toks, fwd_hooks=[("hook_embed", lambda t, h: None), ("blocks.0.hook_nope", print)])


def use_a_hook_that_raises_during_backward(bridge, toks):
    with torch.enable_grad():
        logits = bridge.run_with_hooks(toks, bwd_hooks=[("blocks.0.hook_resid_post", raise_in_hook(HookFailed()))])
        with pytest.raises(HookFailed):
            logits.sum().backward()
    bridge.model.zero_grad(set_to_none=True)


def use_weight_views_and_stacked_weights(bridge, toks):
    for block in bridge.blocks:
        _ = block.attn.W_Q, block.attn.W_O, block.mlp.W_in, block.ln1.w
    _ = bridge.W_Q, bridge.W_out, bridge.W_E, bridge.W_pos, bridge.W_U, bridge.b_U


USES = [
    use_cache_all,
    use_identity_hooks_everywhere,
    use_add_hook_then_reset,
    use_hooks_context,
    use_backward_hooks,
    use_a_hook_that_raises_at_a_module_boundary,
    use_a_hook_that_raises_inside_attention,
    use_a_hook_that_raises_in_a_recomputed_norm,
    use_keyboard_interrupt_inside_attention,
    use_keyboard_interrupt_at_a_module_boundary,
    use_a_wrong_shape_return,
    use_bad_input_with_hooks,
    use_unknown_hook_name,
    use_a_hook_that_raises_during_backward,
    use_weight_views_and_stacked_weights,
]


def test_building_the_bridge_leaves_the_model_as_found(found):
    model, before, _ = found
    assert_as_found(model, before)


@pytest.mark.parametrize("use", USES, ids=[u.__name__.removeprefix("use_") for u in USES])
def test_model_is_left_as_found_after(found, use):
    model, before, bridge = found
    toks = tokens()
    with torch.no_grad():
        use(bridge, toks)
    assert_as_found(model, before)
    with torch.no_grad():
        assert torch.equal(bridge(toks), model(input_ids=toks).logits), "the bridge is unusable"
        log: list = []
        bridge.run_with_hooks(toks, fwd_hooks=[("blocks.0.hook_attn_out", lambda t, h: log.append(h.name))])
        assert log == ["blocks.0.hook_attn_out"], "the bridge kept a hook from before"


def test_config_is_switched_only_while_attention_internals_are_hooked(found):
    model, before, bridge = found
    seen = {}

    def look(tensor, hook):
        seen[hook.name] = model.config._attn_implementation

    with torch.no_grad():
        bridge.run_with_hooks(tokens(), fwd_hooks=[("blocks.0.hook_resid_post", look)])
        assert seen["blocks.0.hook_resid_post"] == before.attn_implementation
        bridge.run_with_hooks(tokens(), fwd_hooks=[("blocks.1.attn.hook_pattern", look)])
    assert model.config._attn_implementation == before.attn_implementation


def test_the_bridge_never_passes_output_attentions_or_output_hidden_states(found):
    model, _, bridge = found
    calls: list[dict] = []
    handle = model.register_forward_pre_hook(lambda m, args, kwargs: calls.append(dict(kwargs)), with_kwargs=True)
    try:
        with torch.no_grad():
            bridge(tokens())
            bridge.run_with_cache(tokens())
            bridge.run_with_hooks(tokens(), fwd_hooks=[(lambda n: True, lambda t, h: None)])
    finally:
        handle.remove()
    assert len(calls) == 3
    for kwargs in calls:
        assert not kwargs.get("output_attentions") and not kwargs.get("output_hidden_states"), kwargs


def test_two_bridges_over_one_model_leave_it_as_found_and_agree_with_it(found):
    model, before, bridge = found
    other = Bridge.from_hf(model, spec="gpt2")
    toks = tokens()
    with torch.no_grad():
        _, a = bridge.run_with_cache(toks, names_filter=lambda n: "pattern" in n)
        _, b = other.run_with_cache(toks, names_filter=lambda n: "pattern" in n)
        for name in a:
            assert torch.equal(a[name], b[name])
    assert_as_found(model, before)


@pytest.mark.parametrize(
    "disturb",
    [
        lambda m: m.transformer.h[1].mlp.register_forward_hook(lambda *a: None),
        lambda m: m.transformer.h[0].attn.register_forward_pre_hook(lambda *a, **k: None, with_kwargs=True),
        lambda m: m.lm_head.register_full_backward_hook(lambda *a: None),
        lambda m: m.transformer.wte.weight.register_hook(lambda g: g),
        lambda m: setattr(
            m.config, "_attn_implementation", "eager" if m.config._attn_implementation != "eager" else "sdpa"
        ),
        lambda m: m.transformer.h[0].ln_1.weight.data.add_(1e-7),
        lambda m: setattr(m.transformer.h[0], "mlp", torch.nn.Identity()),
    ],
    ids=["fwd_hook", "pre_hook_with_kwargs", "backward_hook", "tensor_hook", "config", "parameter", "module_tree"],
)
def test_the_left_as_found_check_itself_catches_each_kind_of_change(disturb):
    model = tiny_gpt2(SHAPE)
    before = snapshot(model)
    disturb(model)
    with pytest.raises(AssertionError):
        assert_as_found(model, before)


def transformers_surface() -> dict[str, object]:
    """Every function and class attribute of transformers' GPT-2 module, and the attention/mask registries."""
    from transformers import masking_utils
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
    from transformers.models.gpt2 import modeling_gpt2

    surface: dict[str, object] = {f"modeling_gpt2.{k}": v for k, v in vars(modeling_gpt2).items()}
    for cls in (modeling_gpt2.GPT2Attention, modeling_gpt2.GPT2Block, modeling_gpt2.GPT2MLP, modeling_gpt2.GPT2Model):
        surface.update({f"{cls.__name__}.{k}": v for k, v in vars(cls).items()})
    surface.update({f"masking_utils.{k}": v for k, v in vars(masking_utils).items() if callable(v)})
    surface.update({f"attention.{k}": v for k, v in ALL_ATTENTION_FUNCTIONS._global_mapping.items()})
    mask_functions = masking_utils.ALL_MASK_ATTENTION_FUNCTIONS._global_mapping
    surface.update({f"mask.{k}": v for k, v in mask_functions.items()})
    return surface


def test_no_transformers_class_function_or_registry_entry_is_patched_by_using_the_bridge(found):
    from transformers.models.gpt2 import modeling_gpt2

    _, _, bridge = found
    before = transformers_surface()
    assert modeling_gpt2.GPT2Attention.forward.__module__ == modeling_gpt2.__name__
    assert modeling_gpt2.eager_attention_forward.__module__ == modeling_gpt2.__name__
    with torch.no_grad():
        for use in USES:
            use(bridge, tokens())
    after = transformers_surface()
    changed = sorted(k for k in before.keys() | after.keys() if before.get(k) is not after.get(k))
    assert changed == []
