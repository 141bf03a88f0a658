"""DeepSeek-V2's mixture-of-experts layers (built-in deepseek_v2: layer 0 dense, layers 1-2 MoE with
group-limited greedy routing, routed_scaling_factor 1.5 and shared experts): the expert and routing hooks
against HF's own computation recorded with plain torch hooks on an untouched copy, expert ablation against
HF with that expert's down_proj slice zeroed, and re-routing after an edit against a hand computation."""

from __future__ import annotations

import copy

import pytest
import torch

from bridge_core import Bridge

LAYER = 1  # the first MoE layer (first_k_dense_replace = 1)


@pytest.fixture(scope="module", params=["group_limited_greedy", "greedy"])
def pair(request):
    """A bridge over the tiny DeepSeek-V2 model with the given topk_method, and an untouched deep copy."""
    bridge = Bridge.from_spec("deepseek_v2", topk_method=request.param)
    return bridge, copy.deepcopy(bridge.model)


def _tokens() -> torch.Tensor:
    return torch.randint(3, 100, (2, 9), generator=torch.Generator().manual_seed(1))


def _hf_moe(model, tokens) -> dict[str, object]:
    """What HF's own MoE of layer LAYER saw: router output, experts inputs, shared experts' down_proj input."""
    mlp = model.model.layers[LAYER].mlp
    seen: dict[str, object] = {}

    def router(module, args, output):
        seen["router"] = output

    def experts(module, args, kwargs, output):
        seen["experts_in"] = args[:3]

    def shared_down(module, args, output):
        seen["shared_post"] = args[0]

    handles = [
        mlp.gate.register_forward_hook(router),
        mlp.experts.register_forward_hook(experts, with_kwargs=True),
        mlp.shared_experts.down_proj.register_forward_hook(shared_down),
    ]
    try:
        with torch.no_grad():
            seen["logits"] = model(tokens).logits
    finally:
        for handle in handles:
            handle.remove()
    return seen


def test_layers_are_dense_then_moe(pair):
    bridge, twin = pair
    names = set(bridge.hook_names())
    assert "blocks.0.mlp.hook_post" in names and "blocks.0.mlp.hook_router_logits" not in names
    assert f"blocks.{LAYER}.mlp.experts.3.hook_post" in names
    assert type(twin.model.layers[LAYER].mlp).__name__ == "DeepseekV2Moe"


def test_expert_and_routing_hooks_equal_hfs_own_computation(pair):
    bridge, twin = pair
    tokens = _tokens()
    hf = _hf_moe(twin, tokens)
    hidden, indices, _ = hf["experts_in"]
    with torch.no_grad():
        logits, cache = bridge.run_with_cache(tokens)
    torch.testing.assert_close(logits, hf["logits"], atol=1e-5, rtol=1e-5)
    p = f"blocks.{LAYER}.mlp"
    router_logits, router_weights, router_indices = hf["router"]
    torch.testing.assert_close(cache[f"{p}.hook_router_logits"], router_logits)
    assert torch.equal(cache[f"{p}.hook_expert_indices"], router_indices)
    torch.testing.assert_close(cache[f"{p}.hook_routing_weights"], router_weights)
    # HF's own softmax, and its routed weights are that softmax at the chosen experts times 1.5 (not renormalized)
    probs = router_logits.softmax(-1, dtype=torch.float32)
    torch.testing.assert_close(cache[f"{p}.hook_expert_weights"], probs)
    torch.testing.assert_close(router_weights, 1.5 * probs.gather(-1, router_indices))
    # each expert by hand from HF's fused parameters, on the tokens HF routed to it, in HF's order
    experts = twin.model.layers[LAYER].mlp.experts
    for e in range(4):
        _, token = torch.where(torch.nn.functional.one_hot(indices, 4).permute(2, 1, 0)[e])
        gate, up = (hidden[token] @ experts.gate_up_proj[e].T).chunk(2, dim=-1)
        torch.testing.assert_close(cache[f"{p}.experts.{e}.hook_gate"], gate)
        torch.testing.assert_close(cache[f"{p}.experts.{e}.hook_pre"], up)
        torch.testing.assert_close(cache[f"{p}.experts.{e}.hook_post"], torch.nn.functional.silu(gate) * up)
    torch.testing.assert_close(cache[f"{p}.shared_expert.hook_post"], hf["shared_post"])


def test_zeroing_one_experts_hook_post_equals_hf_with_its_down_proj_zeroed(pair):
    bridge, twin = pair
    tokens = _tokens()
    ablated = copy.deepcopy(twin)
    with torch.no_grad():
        ablated.model.layers[LAYER].mlp.experts.down_proj[2].zero_()
        expected = ablated(tokens).logits
        plain = twin(tokens).logits

    def zero(post, hook):
        post.zero_()

    with torch.no_grad():
        logits = bridge.run_with_hooks(tokens, fwd_hooks=[(f"blocks.{LAYER}.mlp.experts.2.hook_post", zero)])
    assert (logits - plain).abs().max() > 1e-4  # expert 2 mattered
    torch.testing.assert_close(logits, expected, atol=1e-5, rtol=1e-5)


def test_editing_expert_weights_reroutes_by_group_selection_and_scaling(pair):
    bridge, _ = pair
    grouped = bridge.model.config.topk_method == "group_limited_greedy"
    seen: dict[str, torch.Tensor] = {}

    def favour_3(probs, hook):
        probs[:, 3] += 1.0  # above every other probability (all <= 1)
        seen["probs"] = probs.clone()

    def keep(t, hook):
        seen[hook.name] = t.clone()

    p = f"blocks.{LAYER}.mlp"
    with torch.no_grad():
        bridge.run_with_hooks(
            _tokens(),
            fwd_hooks=[
                (f"{p}.hook_expert_weights", favour_3),
                (f"{p}.hook_expert_indices", keep),
                (f"{p}.hook_routing_weights", keep),
            ],
        )
    probs, indices, weights = seen["probs"], seen[f"{p}.hook_expert_indices"], seen[f"{p}.hook_routing_weights"]
    for t in range(probs.shape[0]):
        row = probs[t].tolist()
        # grouped: groups {0, 1} and {2, 3}; expert 3 lifts group 1 above group 0, and top-2 is the whole group
        expected = [2, 3] if grouped else sorted(range(4), key=lambda e: -row[e])[:2]
        assert sorted(indices[t].tolist()) == sorted(expected)
        hand = torch.tensor([1.5 * row[e] for e in indices[t].tolist()])
        torch.testing.assert_close(weights[t], hand)
