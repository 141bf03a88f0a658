"""Models dispatched by accelerate with disk and CPU offload: outputs, caches and weight views."""

from __future__ import annotations

import pytest
import torch
from transformers import GPT2LMHeadModel

pytest.importorskip("accelerate")
from accelerate.hooks import AlignDevicesHook, add_hook_to_module
from accelerate.utils import PrefixedDataset

from bridge_core.bridge.bridge import Bridge
from bridge_core.bridge.weights import OffloadedWeightError

from .conftest import tiny, tokens

DEVICE_MAP = {
    "transformer.wte": "cpu",
    "transformer.wpe": "cpu",
    "transformer.h.0": "cpu",
    "transformer.h.1": "disk",
    "transformer.h.2.ln_1": "cpu",
    "transformer.h.2.attn": "disk",
    "transformer.h.2.ln_2": "cpu",
    "transformer.h.2.mlp": "cpu",
    "transformer.ln_f": "cpu",
    "lm_head": "cpu",
}
VIEWS = ("attn.W_Q", "attn.W_K", "attn.W_V", "attn.W_O", "attn.b_Q", "attn.b_K", "attn.b_V", "attn.b_O",
         "mlp.W_in", "mlp.W_out", "mlp.b_in", "mlp.b_out", "ln1.w", "ln1.b", "ln2.w", "ln2.b")  # fmt: skip


@pytest.fixture(scope="module")
def offloaded(tmp_path_factory):
    """(bridge over the offloaded reload, the in-memory model that was saved)."""
    _bridge, reference = tiny("gpt2", n_layer=3)
    path = tmp_path_factory.mktemp("gpt2")
    reference.save_pretrained(path)
    model = GPT2LMHeadModel.from_pretrained(path, device_map=DEVICE_MAP, offload_folder=path / "offload").eval()
    assert model.transformer.h[1].attn.c_attn.weight.device.type == "meta"
    return Bridge.from_hf(model), reference


def _get(block, dotted):
    part, name = dotted.split(".")
    return getattr(getattr(block, part), name)


def test_offloaded_logits_equal_the_in_memory_model(offloaded):
    bridge, reference = offloaded
    x = tokens()
    torch.testing.assert_close(bridge(x), reference(x).logits, atol=1e-6, rtol=0)


def test_run_with_cache_on_an_offloaded_model_equals_the_in_memory_one(offloaded):
    bridge, reference = offloaded
    x = tokens()
    no_result = lambda name: not name.endswith("hook_result")  # noqa: E731 (hook_result: its own test below)
    logits, cache = bridge.run_with_cache(x, names_filter=no_result, device="cpu")
    assert all(v.device.type == "cpu" for v in cache.values())
    hidden = reference(x, output_hidden_states=True).hidden_states
    for layer in range(3):
        torch.testing.assert_close(cache["resid_pre", layer], hidden[layer], atol=1e-6, rtol=0)
    _, in_memory = Bridge.from_hf(reference).run_with_cache(x, names_filter=no_result)
    assert cache.keys() == in_memory.keys()
    for name in cache:
        torch.testing.assert_close(cache[name], in_memory[name], atol=1e-6, rtol=0, msg=name)
    _, with_result = Bridge.from_hf(reference).run_with_cache(x)
    torch.testing.assert_close(cache.stack_head_results(), with_result.stack_head_results(), atol=1e-6, rtol=0)
    logits_dla = cache.accumulated_resid(apply_ln=True)[-1]
    # the final residual through ln_f itself (HookedTransformer 3.9's logit lens), then the unembedding
    torch.testing.assert_close(logits_dla @ reference.lm_head.weight.T, logits, atol=1e-4, rtol=0)


def test_hook_result_on_an_offloaded_block(offloaded):
    bridge, _reference = offloaded
    _, cache = bridge.run_with_cache(tokens(), names_filter=lambda name: name.endswith("hook_result"))
    assert all(v.device.type != "meta" for v in cache.values())


def test_weight_views_on_offloaded_blocks_materialize_the_saved_weights(offloaded):
    bridge, reference = offloaded
    c_attn = reference.transformer.h[1].attn.c_attn
    W_Q = c_attn.weight[:, :64].unflatten(1, (4, 16)).permute(1, 0, 2)
    torch.testing.assert_close(bridge.blocks[1].attn.W_Q, W_Q, atol=0, rtol=0)
    b_V = reference.transformer.h[2].attn.c_attn.bias[128:].view(4, 16)
    torch.testing.assert_close(bridge.blocks[2].attn.b_V, b_V, atol=0, rtol=0)
    torch.testing.assert_close(bridge.blocks[1].ln2.b, reference.transformer.h[1].ln_2.bias, atol=0, rtol=0)
    for block in bridge.blocks:
        for view in VIEWS:
            assert _get(block, view).device.type != "meta", view
    assert bridge.W_Q.device.type != "meta" and bridge.W_out.shape == (3, 96, 64)
    assert bridge.blocks[1].attn.OV.AB.device.type != "meta"


def test_a_meta_parameter_without_an_offload_map_raises_a_typed_error():
    bridge, _ = tiny("gpt2")
    bridge.model.transformer.h[1].attn.c_attn.to("meta")
    with pytest.raises(OffloadedWeightError, match="offloaded"):
        _ = bridge.blocks[1].attn.W_Q
    with pytest.raises(OffloadedWeightError):
        _ = bridge.blocks[1].attn.b_Q
    assert bridge.blocks[0].attn.W_Q.device.type == "cpu"


def test_an_offload_map_hung_on_the_block_is_found_from_a_submodule():
    bridge, reference = tiny("gpt2")
    block = bridge.model.transformer.h[1]
    weights = {f"transformer.h.1.{k}": v.clone() for k, v in block.state_dict().items()}
    hook = AlignDevicesHook(
        execution_device="cpu", offload=True, weights_map=PrefixedDataset(weights, "transformer.h.1."),
        place_submodules=True,
    )  # fmt: skip
    add_hook_to_module(block, hook)
    assert block.mlp.c_fc.weight.device.type == "meta"
    torch.testing.assert_close(bridge.blocks[1].mlp.W_in, reference.transformer.h[1].mlp.c_fc.weight, atol=0, rtol=0)
    x = tokens()
    torch.testing.assert_close(bridge(x), reference(x).logits, atol=1e-6, rtol=0)
