"""What keeps a repeated `run_with_cache` cheap, checked as behaviour: the PyTorch hooks of a kept hook
layout are prepared once and only registered per call, every handle goes in `finally` even when one
removal fails, and the cache-only path (no edit possible) still holds exactly what HF computed."""

from __future__ import annotations

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from bridge_core import Bridge
from bridge_core.bridge import dispatch


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    config = GPT2Config(n_layer=2, n_embd=64, n_head=4, vocab_size=100, bos_token_id=0, eos_token_id=0)
    model = GPT2LMHeadModel(config).eval()
    return model, Bridge.from_hf(model), torch.randint(0, 100, (2, 7))


def _hook_count(model: torch.nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def test_repeated_cache_calls_reuse_the_prepared_hooks_and_leave_none_behind(tiny):
    model, bridge, tokens = tiny
    with torch.no_grad():
        bridge.run_with_cache(tokens)
        plan = next(iter(bridge._plans.values()))
        prepared = [h.hook for h in plan.hooks]
        seen: list[int] = []
        bridge.run_with_cache(tokens, names_filter=lambda n: seen.append(_hook_count(model)) or True)
        _, cache = bridge.run_with_cache(tokens)
    assert [h.hook for h in plan.hooks] == prepared  # the same closures: nothing rebuilt per call
    assert len(bridge._plans) == 1 and _hook_count(model) == 0
    assert set(cache) == set(bridge.hook_names())


def test_cache_only_values_are_hf_s_own_tensors(tiny):
    model, bridge, tokens = tiny
    seen: dict[str, torch.Tensor] = {}
    handles = [
        model.transformer.h[1].register_forward_hook(
            lambda m, a, out: seen.__setitem__("resid_post", out[0] if isinstance(out, tuple) else out)
        ),
        model.transformer.h[0].mlp.c_fc.register_forward_hook(lambda m, a, out: seen.__setitem__("pre", out)),
        model.transformer.ln_f.register_forward_pre_hook(lambda m, a: seen.__setitem__("ln_f_in", a[0])),
    ]
    try:
        with torch.no_grad():
            _, cache = bridge.run_with_cache(tokens)
    finally:
        for handle in handles:
            handle.remove()
    assert torch.equal(cache["blocks.1.hook_resid_post"], seen["resid_post"])
    assert torch.equal(cache["blocks.0.mlp.hook_pre"], seen["pre"])
    x = seen["ln_f_in"]  # HookedTransformer's LayerNorm: centred, then divided by sqrt(mean(x^2) + eps)
    centred = x - x.mean(-1, keepdim=True)
    scale = (centred.pow(2).mean(-1, keepdim=True) + model.config.layer_norm_epsilon).sqrt()
    assert torch.equal(cache["ln_final.hook_scale"], scale)
    assert torch.equal(cache["ln_final.hook_normalized"], centred / scale)


def test_every_handle_is_removed_even_when_one_removal_raises():
    removed: list[int] = []

    class Handle:
        def __init__(self, index: int, fails: bool) -> None:
            self.index, self.fails = index, fails

        def remove(self) -> None:
            removed.append(self.index)
            if self.fails:
                raise RuntimeError(f"handle {self.index} failed")

    handles = [Handle(0, False), Handle(1, True), Handle(2, True), Handle(3, False)]
    with pytest.raises(RuntimeError, match="handle 2 failed"):  # the first failure, in removal order
        dispatch._remove_all(handles)
    assert removed == [3, 2, 1, 0] and handles == []


def test_cached_tensors_hold_no_graph_with_grad_on_and_are_hf_s_values_either_way(tiny):
    # `save` skips `detach` when the tensor has no graph (grad off); with grad on it must still cut it
    model, bridge, tokens = tiny
    seen: dict[str, torch.Tensor] = {}
    handle = model.transformer.h[0].mlp.c_fc.register_forward_hook(lambda m, a, out: seen.__setitem__("pre", out))
    try:
        logits, with_grad = bridge.run_with_cache(tokens)
        hf_pre = seen.pop("pre")
        with torch.no_grad():
            _, without_grad = bridge.run_with_cache(tokens)
    finally:
        handle.remove()
    assert logits.requires_grad and hf_pre.requires_grad  # the forward did build a graph
    assert not any(t.requires_grad or t.grad_fn is not None for t in with_grad.values())
    assert torch.equal(with_grad["blocks.0.mlp.hook_pre"], hf_pre.detach())
    assert set(without_grad) == set(with_grad)
    assert all(torch.equal(without_grad[name], with_grad[name]) for name in with_grad)
    _, grads = bridge.run_with_cache(tokens, names_filter="blocks.1.hook_resid_post", incl_bwd=True, return_type="loss")
    assert not grads["blocks.1.hook_resid_post_grad"].requires_grad
