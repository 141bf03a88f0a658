"""Activation patching: which residual-stream positions carry the fact "alice lives in paris"?

Runs the clean prompt "alice lives in" and the corrupted "bob lives in" on the toy model, then, for
every layer and position, copies the clean `hook_resid_pre` into the corrupted run and measures how
much of the clean logit difference (paris - london) comes back. Offline, a few seconds.
"""

from __future__ import annotations

import torch
from toy_model import trained_bridge

bridge = trained_bridge()
clean, corrupt = bridge.to_tokens("alice lives in"), bridge.to_tokens("bob lives in")
paris, london = bridge.to_single_token("paris"), bridge.to_single_token("london")


def logit_diff(logits: torch.Tensor) -> float:
    return (logits[0, -1, paris] - logits[0, -1, london]).item()


with torch.no_grad():
    clean_logits, clean_cache = bridge.run_with_cache(clean)
    clean_diff, corrupt_diff = logit_diff(clean_logits), logit_diff(bridge(corrupt))
    print(f"logit diff paris - london: clean {clean_diff:+.2f}, corrupted {corrupt_diff:+.2f}")

    labels = bridge.to_str_tokens(clean[0])
    recovered = torch.zeros(bridge.cfg.n_layers, clean.shape[1])
    for layer in range(bridge.cfg.n_layers):
        name = f"blocks.{layer}.hook_resid_pre"
        for pos in range(clean.shape[1]):

            def patch(resid: torch.Tensor, hook, pos: int = pos) -> None:
                resid[:, pos] = clean_cache[hook.name][:, pos]  # an in-place edit reaches everything downstream

            patched = bridge.run_with_hooks(corrupt, fwd_hooks=[(name, patch)])
            recovered[layer, pos] = (logit_diff(patched) - corrupt_diff) / (clean_diff - corrupt_diff)

print("fraction of the logit difference recovered by patching hook_resid_pre:")
print("         " + "".join(f"{label:>8}" for label in labels))
for layer in range(bridge.cfg.n_layers):
    print(f"layer {layer}  " + "".join(f"{value:8.2f}" for value in recovered[layer].tolist()))
layer, pos = divmod(int(recovered.argmax()), clean.shape[1])
print(f"best patch: blocks.{layer}.hook_resid_pre at {labels[pos]!r} recovers {recovered.max():.0%}")
