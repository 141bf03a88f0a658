"""`bridge(tokens, stop_at_layer=k)` runs blocks 0..k-1 and nothing after them: no later block, no final
norm, no unembedding, so its cost is proportional to k. Counted with plain PyTorch hooks on the HF modules."""

from __future__ import annotations

import pytest
import torch

from tests.core._helpers import VOCAB, bridge_and_reference


@pytest.mark.parametrize("k", [0, 1, 2, 3])
def test_stop_at_layer_runs_only_the_blocks_before_k(k):
    bridge, _ = bridge_and_reference("3L-h3-dh16-inner80")
    model = bridge.model
    modules = {f"h.{i}": block for i, block in enumerate(model.transformer.h)}
    modules |= {"ln_f": model.transformer.ln_f, "lm_head": model.lm_head}
    ran: list[str] = []
    handles = [m.register_forward_hook(lambda *_, name=name: ran.append(name)) for name, m in modules.items()]
    try:
        with torch.no_grad():
            bridge(torch.randint(0, VOCAB, (1, 5), generator=torch.Generator().manual_seed(0)), stop_at_layer=k)
    finally:
        for handle in handles:
            handle.remove()
    assert ran == [f"h.{i}" for i in range(k)]
