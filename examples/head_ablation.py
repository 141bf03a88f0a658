"""Head ablation: which attention head moves the subject to the last position?

Zeroes one head's output (`hook_z[:, :, head]`) at a time and measures the drop in the probability
of the right city, averaged over the six facts the toy model knows.
"""

from __future__ import annotations

import torch
from toy_model import CITIES, PEOPLE, trained_bridge

bridge = trained_bridge()
prompts = bridge.to_tokens([f"{person} lives in" for person in PEOPLE])
answers = torch.tensor([bridge.to_single_token(city) for city in CITIES])


def p_correct(logits: torch.Tensor) -> float:
    probs = logits[:, -1].softmax(-1)
    return probs[torch.arange(len(answers)), answers].mean().item()


with torch.no_grad():
    baseline = p_correct(bridge(prompts))
    print(f"p(correct city) with every head: {baseline:.3f}")
    drops = torch.zeros(bridge.cfg.n_layers, bridge.cfg.n_heads)
    for layer in range(bridge.cfg.n_layers):
        for head in range(bridge.cfg.n_heads):

            def ablate(z: torch.Tensor, hook, head: int = head) -> None:  # z: [batch, pos, n_heads, d_head]
                z[:, :, head] = 0.0

            logits = bridge.run_with_hooks(prompts, fwd_hooks=[(f"blocks.{layer}.attn.hook_z", ablate)])
            drops[layer, head] = baseline - p_correct(logits)

for layer in range(bridge.cfg.n_layers):
    print(f"layer {layer}: drop per head " + "  ".join(f"{d:+.3f}" for d in drops[layer].tolist()))
layer, head = divmod(int(drops.argmax()), bridge.cfg.n_heads)
print(f"most important head: L{layer}H{head} (ablating it drops p(correct) by {drops.max():.3f})")
