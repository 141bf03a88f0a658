"""Logit lens: what does the residual stream predict after each layer?

Caches one forward of "carol lives in" on the toy model, normalizes the residual entering each block
(and the final one) with the final norm's cached scale, unembeds it, and prints the top token. As in
TransformerLens, the lens runs on processed weights (the final norm's weight and bias folded into
`W_U` / `b_U`), made by `processed_copy()` on a copy: the toy bridge itself is left unchanged.
"""

from __future__ import annotations

import torch
from toy_model import trained_bridge

bridge = trained_bridge().processed_copy()
tokens = bridge.to_tokens("carol lives in")
with torch.no_grad():
    logits, cache = bridge.run_with_cache(tokens)
    # [n_components, batch, d_model] at the last position, each normalized as ln_final would
    resid, labels = cache.accumulated_resid(apply_ln=True, pos_slice=-1, return_labels=True)
    lens_logits = resid @ bridge.W_U + bridge.b_U
    rome = bridge.to_single_token("rome")
    probs = lens_logits.softmax(-1)

print(f"prompt {bridge.to_str_tokens(tokens[0])}")
for label, row, p in zip(labels, lens_logits[:, 0], probs[:, 0, rome], strict=True):
    print(f"{label:>10}: top token {bridge.to_string(row.argmax())!r:10} p(rome) = {p:.3f}")
final = bridge.to_string(lens_logits[-1, 0].argmax())
assert torch.allclose(lens_logits[-1], logits[:, -1], atol=1e-4), "the lens at the end is the model's own output"
print(f"logit lens: the final residual predicts {final!r}, as the model does")
