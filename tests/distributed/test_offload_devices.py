"""A model accelerate spreads over CPU and disk: hooks on blocks in different places gather their cache on
one chosen device, and an edit made from a value captured in one place lands in a block held in another."""

from __future__ import annotations

import pytest
import torch
from transformers import GPT2LMHeadModel

pytest.importorskip("accelerate")

from bridge_core.bridge.bridge import Bridge
from tests.research.conftest import tiny, tokens

DEVICE_MAP = {
    "transformer.wte": "cpu",
    "transformer.wpe": "cpu",
    "transformer.h.0": "cpu",
    "transformer.h.1": "disk",
    "transformer.h.2": "disk",
    "transformer.ln_f": "cpu",
    "lm_head": "cpu",
}
HEAD, D_HEAD = 1, 16  # tiny gpt2: 4 heads of 16 (d_model 64)


@pytest.fixture(scope="module")
def spread(tmp_path_factory):
    """(bridge over the CPU + disk reload, the in-memory model that was saved)."""
    _bridge, reference = tiny("gpt2", n_layer=3)
    path = tmp_path_factory.mktemp("gpt2")
    reference.save_pretrained(path)
    model = GPT2LMHeadModel.from_pretrained(path, device_map=DEVICE_MAP, offload_folder=path / "offload").eval()
    assert model.transformer.h[0].attn.c_attn.weight.device.type == "cpu"
    assert model.transformer.h[2].attn.c_attn.weight.device.type == "meta"  # on disk
    return Bridge.from_hf(model), reference


def _reference_logits(reference: GPT2LMHeadModel, x: torch.Tensor, cross: bool) -> torch.Tensor:
    """The same edits with plain PyTorch hooks on the untouched model: block 0's MLP output (CPU block)
    added to block 1's attention output (disk block), head 1 zeroed at block 2's output projection input."""
    captured: dict[str, torch.Tensor] = {}
    blocks = reference.transformer.h
    handles = [
        blocks[0].mlp.register_forward_hook(lambda m, a, out: captured.__setitem__("mlp0", out.clone())),
        blocks[2].attn.c_proj.register_forward_pre_hook(
            lambda m, args: (args[0].index_fill(-1, torch.arange(HEAD * D_HEAD, (HEAD + 1) * D_HEAD), 0.0),)
        ),
    ]
    if cross:
        handles.append(blocks[1].attn.register_forward_hook(lambda m, a, out: (out[0] + captured["mlp0"], *out[1:])))
    try:
        with torch.no_grad():
            return reference(x).logits
    finally:
        for handle in handles:
            handle.remove()


def test_edits_cross_from_a_cpu_block_into_disk_blocks_and_the_cache_is_gathered_on_one_device(spread):
    bridge, reference = spread
    x = tokens()
    captured: dict[str, torch.Tensor] = {}

    def keep(tensor, hook):
        captured["mlp0"] = tensor.clone()

    def add_kept(tensor, hook):
        return tensor + captured["mlp0"].to(tensor.device)

    def zero_head(tensor, hook):
        tensor[:, :, HEAD] = 0.0

    hooks = [("blocks.0.hook_mlp_out", keep), ("blocks.1.hook_attn_out", add_kept), ("blocks.2.attn.hook_z", zero_head)]
    with bridge.hooks(fwd_hooks=hooks), torch.no_grad():
        names = ("blocks.0.hook_mlp_out", "blocks.1.hook_attn_out", "blocks.2.attn.hook_z", "blocks.2.hook_resid_post")
        logits, cache = bridge.run_with_cache(x, names_filter=lambda n: n in names, device="cpu")
    assert sorted(cache.keys()) == sorted(names)
    assert all(value.device.type == "cpu" for value in cache.values())
    torch.testing.assert_close(logits, _reference_logits(reference, x, cross=True), atol=1e-5, rtol=0)
    # the cache holds what the edits left: head 1 of block 2 zeroed
    assert torch.count_nonzero(cache["blocks.2.attn.hook_z"][:, :, HEAD]) == 0


def test_a_reference_without_the_cross_device_edit_is_told_apart(spread):
    # the broken input kept: the reference missing the edit into the disk block must not match
    bridge, reference = spread
    x = tokens()
    captured: dict[str, torch.Tensor] = {}
    hooks = [
        ("blocks.0.hook_mlp_out", lambda t, hook: captured.__setitem__("mlp0", t.clone())),
        ("blocks.1.hook_attn_out", lambda t, hook: t + captured["mlp0"]),
        ("blocks.2.attn.hook_z", lambda t, hook: t.index_fill(2, torch.tensor([HEAD]), 0.0)),
    ]
    with torch.no_grad():
        logits = bridge.run_with_hooks(x, fwd_hooks=hooks)
    assert (logits - _reference_logits(reference, x, cross=False)).abs().max() > 1e-3
