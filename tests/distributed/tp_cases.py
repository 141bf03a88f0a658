"""What the tensor-parallel check runs, the same on every rank and in the single-process reference."""

from __future__ import annotations

import torch
from torch import nn

from bridge_core import Bridge

TOKENS = torch.tensor([[1, 5, 9, 3, 7, 11], [2, 4, 6, 8, 10, 12]])
ABLATED_HEAD = 3  # of 4: held by rank 1 when two ranks share the heads


def _zero_head(tensor: torch.Tensor, hook, head: int = ABLATED_HEAD) -> torch.Tensor:
    tensor[:, :, head] = 0.0
    return tensor


def _zero_kv_head(tensor: torch.Tensor, hook) -> None:
    tensor[:, :, -1] = 0.0  # the last key head: the last rank's


def _zero_pattern_head(tensor: torch.Tensor, hook) -> torch.Tensor:
    return torch.where(torch.arange(tensor.shape[1]).view(1, -1, 1, 1) == ABLATED_HEAD, 0.0, tensor)


def _zero_neuron(tensor: torch.Tensor, hook) -> None:
    tensor[..., -1] = 0.0  # a neuron in the last rank's slice, edited in place


def run_cases(model: nn.Module) -> dict[str, torch.Tensor]:
    """Logits, cached activations, edits at sharded points and a greedy generation, as plain tensors."""
    bridge = Bridge.from_hf(model)
    found: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        logits, cache = bridge.run_with_cache(TOKENS)
        found["logits"] = logits
        for name in bridge.hook_names():
            if name in cache:
                found[name] = cache[name]
        # the wrong head (1, held by rank 0): the test sees it differ from the single-process head-3 ablation
        found["ablate_wrong_head"] = bridge.run_with_hooks(
            TOKENS, fwd_hooks=[("blocks.0.attn.hook_z", lambda t, hook: _zero_head(t, hook, 1))]
        )
        found["ablate_z"] = bridge.run_with_hooks(TOKENS, fwd_hooks=[("blocks.0.attn.hook_z", _zero_head)])
        found["ablate_q"] = bridge.run_with_hooks(TOKENS, fwd_hooks=[("blocks.1.attn.hook_q", _zero_head)])
        found["ablate_rot_k"] = bridge.run_with_hooks(TOKENS, fwd_hooks=[("blocks.0.attn.hook_rot_k", _zero_kv_head)])
        found["ablate_result"] = bridge.run_with_hooks(TOKENS, fwd_hooks=[("blocks.0.attn.hook_result", _zero_head)])
        found["ablate_pattern"] = bridge.run_with_hooks(
            TOKENS, fwd_hooks=[("blocks.1.attn.hook_pattern", _zero_pattern_head)]
        )
        found["ablate_neuron"] = bridge.run_with_hooks(TOKENS, fwd_hooks=[("blocks.0.mlp.hook_post", _zero_neuron)])
        found["generate"] = bridge.generate(TOKENS[:1], max_new_tokens=5, do_sample=False, verbose=False)
        found["W_Q"] = bridge.blocks[0].attn.W_Q.detach().clone()
        found["W_in"] = bridge.blocks[1].mlp.W_in.detach().clone()
        found["W_O"] = bridge.blocks[0].attn.W_O.detach().clone()
        found["W_E"] = bridge.W_E.detach().clone()
        found["W_U"] = bridge.W_U.detach().clone()
    return found
