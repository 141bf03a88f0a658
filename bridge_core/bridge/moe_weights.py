"""Weight views of a mixture-of-experts MLP in HookedTransformer shapes (`bridge.blocks[i].mlp`).

`W_gate` is the router `[d_model, n_experts]`; `experts[e].W_gate / W_in [d_model, d_mlp]` and
`experts[e].W_out [d_mlp, d_model]` are views of the fused 3-D parameters (or of the expert modules'
weights), so they share storage and gradients reach HF's parameters. `shared_expert` holds the shared
expert's `W_in / W_gate / W_out`, and `W_shared_gate [d_model, 1]` its sigmoid gate, where present.
"""

from __future__ import annotations

import torch
from torch import nn

from .bound import BoundMLP, BoundMoE, BoundSharedExpert
from .moe import expert_biases, expert_weights
from .weights import HookAttributes, in_out


class ExpertWeights:
    """One routed expert: `W_gate`, `W_in` `[d_model, d_mlp]`, `W_out` `[d_mlp, d_model]`, and `b_gate`, `b_in`,
    `b_out` where the experts have biases (None otherwise)."""

    def __init__(self, moe: BoundMoE, expert: int) -> None:
        self._moe, self.expert = moe, expert

    @property
    def W_gate(self) -> torch.Tensor:
        return expert_weights(self._moe, self.expert)[0].t()

    @property
    def W_in(self) -> torch.Tensor:
        return expert_weights(self._moe, self.expert)[1].t()

    @property
    def W_out(self) -> torch.Tensor:
        return expert_weights(self._moe, self.expert)[2].t()

    @property
    def b_gate(self) -> torch.Tensor | None:
        """The gate bias `[d_mlp]` (GPT-OSS's fused `gate_up_proj_bias`), or None."""
        return expert_biases(self._moe, self.expert)[0]

    @property
    def b_in(self) -> torch.Tensor | None:
        return expert_biases(self._moe, self.expert)[1]

    @property
    def b_out(self) -> torch.Tensor | None:
        return expert_biases(self._moe, self.expert)[2]

    def __repr__(self) -> str:
        return f"ExpertWeights(expert={self.expert})"


class SharedExpertWeights:
    """The shared expert's `W_in`, `W_gate` `[d_model, d_shared]` and `W_out` `[d_shared, d_model]`."""

    def __init__(self, shared: BoundSharedExpert) -> None:
        self._shared = shared

    @property
    def W_in(self) -> torch.Tensor:
        return in_out(self._shared.w_in, "linear")

    @property
    def W_gate(self) -> torch.Tensor | None:
        gate = self._shared.w_gate
        return None if gate is None else in_out(gate, "linear")

    @property
    def W_out(self) -> torch.Tensor:
        return in_out(self._shared.w_out, "linear")


class MoEWeights(HookAttributes):
    """`bridge.blocks[i].mlp` of a mixture-of-experts layer."""

    def __init__(self, bound: BoundMLP, anchors: tuple[nn.Module, ...] = ()) -> None:
        assert bound.moe is not None
        self.bound = bound
        moe = bound.moe
        self.experts = [ExpertWeights(moe, e) for e in range(moe.n_experts)]
        self.shared_expert = SharedExpertWeights(moe.shared) if moe.shared is not None else None

    @property
    def W_gate(self) -> torch.Tensor:
        """The router `[d_model, n_experts]` (HookedTransformer's `W_gate.weight`, transposed)."""
        moe = self.bound.moe
        return in_out(moe.router_linear if moe.router_linear is not None else moe.router, "linear")

    @property
    def b_gate(self) -> torch.Tensor | None:
        """The router's bias `[n_experts]` (GPT-OSS), or None."""
        moe = self.bound.moe
        bias = getattr(moe.router_linear if moe.router_linear is not None else moe.router, "bias", None)
        return bias if isinstance(bias, torch.Tensor) else None

    @property
    def W_shared_gate(self) -> torch.Tensor | None:
        shared = self.bound.moe.shared
        return None if shared is None or shared.gate is None else in_out(shared.gate, "linear")
