"""Reference edits made on the untouched HF model itself, for tests that compare a bridge intervention with
the same intervention done in HF."""

from __future__ import annotations

import torch
from torch import nn


def logits_with_input_slice_zeroed(hf: nn.Module, module: nn.Module, tokens: torch.Tensor, start: int, stop: int):
    """HF's logits on `tokens` with features `start:stop` of `module`'s first input zeroed (a head's slice of
    what an output projection or a sub-norm reads); the hook is removed afterwards."""

    def zero_slice(_module, args):
        x = args[0].clone()
        x[..., start:stop] = 0
        return (x, *args[1:])

    handle = module.register_forward_pre_hook(zero_slice)
    try:
        with torch.no_grad():
            return hf(tokens).logits
    finally:
        handle.remove()
