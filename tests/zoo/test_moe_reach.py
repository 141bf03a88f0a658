"""MoE families reached in issue 17: HunYuan-MoE V1, whose router (`mlp.gate`) keeps its weight in a float32
linear child (`gate.wg`, block.mlp.moe.router_weight). The router hooks and W_gate are held to HF's own router,
recorded with torch hooks on an untouched copy; the drafter must find the router weight itself."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch

from bridge_core import Bridge
from bridge_core.conformance import run
from bridge_core.drafting import draft_model_type, to_spec
from bridge_core.errors import BindError

SPECS = Path(__file__).parent / "specs"


def _tokens() -> torch.Tensor:
    return torch.randint(3, 100, (2, 9), generator=torch.Generator().manual_seed(3))


def _hf_router_and_experts(twin: torch.nn.Module, layer: int, tokens: torch.Tensor) -> dict:
    """HF's router output and the arguments its experts module received, recorded on the untouched copy."""
    mlp = twin.model.layers[layer].mlp
    seen: dict = {}
    handles = [
        mlp.gate.register_forward_hook(lambda m, a, out: seen.__setitem__("router", out)),
        mlp.experts.register_forward_hook(lambda m, a, k, out: seen.__setitem__("experts", (a, k)), with_kwargs=True),
    ]
    try:
        with torch.no_grad():
            seen["logits"] = twin(tokens).logits
    finally:
        for handle in handles:
            handle.remove()
    return seen


@pytest.fixture(scope="module")
def hunyuan():
    bridge = Bridge.from_spec(SPECS / "hunyuan_v1_moe.yaml")
    return bridge, copy.deepcopy(bridge.model)


@pytest.mark.parametrize("layer", [0, 1])
def test_hunyuan_router_hooks_and_w_gate_equal_hfs_router(hunyuan, layer):
    bridge, twin = hunyuan
    tokens = _tokens()
    hf = _hf_router_and_experts(twin, layer, tokens)
    logits, weights, indices = hf["router"]
    p = f"blocks.{layer}.mlp"
    out, cache = bridge.run_with_cache(tokens)
    torch.testing.assert_close(out, hf["logits"])  # with the cache: still HF's forward
    torch.testing.assert_close(cache[f"{p}.hook_router_logits"], logits)
    torch.testing.assert_close(cache[f"{p}.hook_expert_weights"], torch.softmax(logits.float(), dim=-1))
    assert torch.equal(cache[f"{p}.hook_expert_indices"], indices)
    torch.testing.assert_close(cache[f"{p}.hook_routing_weights"], weights)
    # W_gate is gate.wg's weight, transposed and sharing its storage; x·W_gate gives HF's router logits
    w_gate = bridge.blocks[layer].mlp.W_gate
    wg = bridge.model.model.layers[layer].mlp.gate.wg.weight
    assert w_gate.shape == (64, 4) and w_gate.data_ptr() == wg.data_ptr()
    hidden = hf["experts"][0][0]
    torch.testing.assert_close(hidden @ w_gate, logits)


def test_hunyuan_drafts_the_router_weight_and_passes_the_moe_checks():
    draft = draft_model_type("hunyuan_v1_moe")
    moe = draft.fields["block"]["mlp"]["moe"]
    assert moe["router"] == "gate" and moe["router_weight"] == "gate.wg"
    assert not [g for g in draft.gaps if "router" in str(g)], draft.gaps
    report = run(to_spec(draft), checks=["bind", "shapes", "moe_routing", "moe_experts", "moe_recompute_path"])
    assert not report.failed(), [r.explain() for r in report.failed()]


def test_a_router_weight_not_shaped_n_experts_is_a_bind_error(tmp_path):
    text = (SPECS / "hunyuan_v1_moe.yaml").read_text().replace("router_weight: gate.wg", "router_weight: shared_mlp")
    spec = tmp_path / "wrong_router_weight.yaml"
    spec.write_text(text)
    with pytest.raises(BindError, match="router has no weight") as raised:
        Bridge.from_spec(spec)
    assert "router_weight" in str(raised.value)


def test_axk1_moe_output_is_normalized_inside_the_mlp_as_ln2_post():
    """A.X-K1: routed experts (from the weight views, on the tokens HF routed) plus HF's shared expert equal
    what HF's post_mlp_layernorm takes; hook_mlp_out is that norm's output, written out by hand."""
    bridge = Bridge.from_spec(SPECS / "axk1.yaml")
    twin = copy.deepcopy(bridge.model)
    mlp = twin.model.layers[1].mlp
    seen: dict = {}
    handles = [
        mlp.experts.register_forward_hook(lambda m, a, k, out: seen.__setitem__("experts", a), with_kwargs=True),
        mlp.shared_experts.register_forward_hook(lambda m, a, out: seen.__setitem__("shared", out)),
        mlp.post_mlp_layernorm.register_forward_hook(lambda m, a, out: seen.__setitem__("norm", (a[0], out))),
    ]
    tokens = _tokens()
    try:
        with torch.no_grad():
            twin(tokens)
    finally:
        for handle in handles:
            handle.remove()
    _, cache = bridge.run_with_cache(tokens)
    hidden, indices, weights = seen["experts"]
    views = bridge.blocks[1].mlp
    routed = torch.zeros_like(hidden)
    act = torch.nn.functional.silu
    for e, expert in enumerate(views.experts):
        token, slot = torch.where(indices == e)
        x = hidden[token]
        out = (act(x @ expert.W_gate) * (x @ expert.W_in)) @ expert.W_out
        routed.index_add_(0, token, out * weights[token, slot, None])
    norm_in, norm_out = seen["norm"]
    torch.testing.assert_close(routed.view(norm_in.shape) + seen["shared"], norm_in)
    norm = twin.model.layers[1].mlp.post_mlp_layernorm
    by_hand = norm_in * torch.rsqrt(norm_in.pow(2).mean(-1, keepdim=True) + norm.variance_epsilon) * norm.weight
    torch.testing.assert_close(by_hand, norm_out)
    torch.testing.assert_close(cache["blocks.1.hook_mlp_out"], norm_out)
    assert not torch.allclose(cache["blocks.1.hook_mlp_out"], norm_in, atol=1e-3)  # the norm does change it


def test_axk1_draft_declares_the_post_mlp_norm_and_passes_the_moe_checks():
    draft = draft_model_type("axk1")
    assert draft.fields["block"]["ln2_post"] == {"path": "mlp.post_mlp_layernorm", "kind": "rmsnorm", "optional": True}
    report = run(to_spec(draft), checks=["bind", "norms", "moe_routing", "moe_experts", "moe_recompute_path"])
    assert not report.failed(), [r.explain() for r in report.failed()]
