"""Steering during generation: add an "alice minus bob" direction to the residual stream while generating.

The steering vector is the difference of the cached `blocks.1.hook_resid_pre` at the last position
of "alice lives in" and "bob lives in" (by layer 1 the subject has been moved there: see
activation_patching.py). A hook adds it at the newest position on every step of `generate`, so the
steered model says where alice lives when asked about bob.
"""

from __future__ import annotations

import torch
from toy_model import trained_bridge

LAYER = 1
bridge = trained_bridge()
name = f"blocks.{LAYER}.hook_resid_pre"
with torch.no_grad():
    _, alice = bridge.run_with_cache("alice lives in", names_filter=name)
    _, bob = bridge.run_with_cache("bob lives in", names_filter=name)
steering = alice[name][0, -1] - bob[name][0, -1]


def steer(resid: torch.Tensor, hook) -> None:
    # With the KV cache, the first call sees the whole prompt and each later call only the new token.
    resid[:, -1] += steering


prompt = "bob lives in"
print(f"steering vector: {name} at the last position, norm {steering.norm():.2f}")
print(f"unsteered: {bridge.generate(prompt, max_new_tokens=2)}")
with bridge.hooks(fwd_hooks=[(name, steer)]):
    print(f"steered:   {bridge.generate(prompt, max_new_tokens=2)}")
