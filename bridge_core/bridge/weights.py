"""Weight views in HookedTransformer shapes over the real HF parameters (docs/architecture.md#weight-views).

Per-block views (`bridge.blocks[i].attn.W_Q`) are made on access from the parameters by slicing,
transposing and reshaping, so they share storage and gradients reach the real weights. Values
that cannot be views (stacked `bridge.W_Q`, GQA keys expanded to n_heads, zero biases) are
computed on access and never cached. On offloaded models (accelerate) every view reads its
parameter through `materialize`, which loads it from the offload map or raises a typed error.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.distributed.tensor import DTensor

from ..errors import BindError, OffloadedWeightError
from ..spec.config import BridgeConfig
from .bound import BoundAttention, BoundBlock, BoundMLP, BoundModel, BoundNorm
from .factored import FactoredMatrix
from .hook_handles import hook_attribute
from .latent_attention import LatentWeightViews, check_latent_shapes


class HookAttributes:
    """`hook_*` attributes of a weight view are the hook points of its component (`blocks[0].attn.hook_z`)."""

    def __getattr__(self, name: str) -> Any:
        owner = self.__dict__.get("_hook_prefix")  # (bridge, "blocks.0.attn"), set by hook_handles.attach
        if owner is not None and name.startswith("hook_"):
            return hook_attribute(owner[0], owner[1], name)
        prop = getattr(type(self), name, None)
        if isinstance(prop, property):  # a property raised AttributeError: show its own message
            prop.fget(self)
        raise AttributeError(f"'{type(self).__name__}' object has no attribute '{name}'")


def _offload_maps(module: nn.Module) -> list:
    hook = getattr(module, "_hf_hook", None)
    hooks = getattr(hook, "hooks", None) or ([hook] if hook is not None else [])
    return [h.weights_map for h in hooks if getattr(h, "weights_map", None) is not None]


def materialize(module: nn.Module, name: str, anchors: tuple[nn.Module, ...] = ()) -> torch.Tensor | None:
    """`module.<name>`; when it is a meta tensor (offloaded), its value read from accelerate's offload map.

    The map is looked for on the module itself, then on any ancestor of it inside `anchors` (its
    block). The value read from disk or CPU is a copy: editing it does not write back. Never meta.
    A tensor-parallel parameter (DTensor) is gathered whole, also as a copy.
    """
    tensor = getattr(module, name, None)
    if isinstance(tensor, DTensor):
        # tensor parallel: a gathered copy of the whole DTensor (a collective every rank must make)
        return tensor.full_tensor()
    if tensor is None or tensor.device.type != "meta":
        return tensor
    candidates = [(module, name)]
    for anchor in anchors:
        for path, sub in anchor.named_modules():
            if sub is module and path:
                parts = path.split(".")
                candidates += [
                    (anchor.get_submodule(".".join(parts[:i])), ".".join([*parts[i:], name])) for i in range(len(parts))
                ]
    for owner, key in candidates:
        for weights_map in _offload_maps(owner):
            try:
                value = weights_map[key]
            except KeyError:
                continue
            return torch.as_tensor(value).to(dtype=tensor.dtype, copy=True)
    raise OffloadedWeightError(type(module).__name__, name)


def in_out(module: nn.Module, layout: str, anchors: tuple[nn.Module, ...] = ()) -> torch.Tensor:
    """A projection's weight as `[in, out]` (a view): Conv1D stores it so, Linear transposed."""
    weight = materialize(module, "weight", anchors)
    return weight if layout == "conv1d" else weight.t()


def _raw_in_out(module: nn.Module, layout: str) -> torch.Tensor:
    # shapes only (bind time): meta tensors are fine and nothing is loaded
    return module.weight if layout == "conv1d" else module.weight.t()


def _is_conv1d(module: nn.Module) -> bool:
    return type(module).__name__ == "Conv1D" and hasattr(module, "nf")


def check_layout(module: nn.Module, layout: str, spec_field: str, path: str) -> None:
    if isinstance(module, nn.Linear) and layout == "conv1d":
        actual = "linear"
    elif _is_conv1d(module) and layout == "linear":
        actual = "conv1d"
    else:
        return
    raise BindError(
        f"declared layout '{layout}' but the module is a {type(module).__name__}, whose weight is stored "
        f"{'[out, in]' if actual == 'linear' else '[in, out]'}: set layout: {actual}",
        spec_path=spec_field,
        module_path=path,
    )


def check_shape(tensor: torch.Tensor | None, expected: tuple[int, ...], spec_field: str, path: str, what: str) -> None:
    if tensor is not None and tuple(tensor.shape) != expected:
        raise BindError(
            f"{what} has shape {tuple(tensor.shape)} but the spec's config implies {expected}",
            spec_path=spec_field,
            module_path=path,
        )


class AttentionWeights(LatentWeightViews, HookAttributes):
    """`W_Q W_K W_V [n_heads, d_model, d_head]`, `W_O [n_heads, d_head, d_model]`, biases `[n_heads, d_head]`.

    Latent attention (MLA) has its factored views instead of W_K / W_V (latent_attention.py), and
    `W_O [n_heads, d_head_v, d_model]`.
    """

    def __init__(self, bound: BoundAttention, cfg: BridgeConfig, anchors: tuple[nn.Module, ...] = ()) -> None:
        self.bound = bound
        self._cfg = cfg
        self._anchors = (bound.module, *anchors)

    def _projection(self, name: str) -> nn.Module:
        return self.bound.projection(name)

    def _raw_weight(self, name: str) -> torch.Tensor:
        self._no_linear(f"W_{name.upper()}")
        io = in_out(self._projection(name), self.bound.layout, self._anchors)
        return self.bound.views[name](io).permute(1, 0, 2)

    def raw_bias(self, name: str) -> torch.Tensor | None:
        """The `name` (q, k or v) bias as stored: `[n_kv_heads, d_head]` for k and v (a view), or None."""
        if self.bound.latent is not None and (name != "q" or self.bound.latent.q_a is not None):
            return None  # HF's up-projections q_b and kv_b have no bias; kv_a's is b_KV_a / b_K_rope
        bias = materialize(self._projection(name), "bias", self._anchors)
        return None if bias is None else self.bound.views[name](bias)

    def _expand(self, tensor: torch.Tensor) -> torch.Tensor:
        groups = self._cfg.n_heads // self._cfg.n_kv_heads
        return tensor if groups == 1 else tensor.repeat_interleave(groups, dim=0)

    def _zeros(self, heads: int) -> torch.Tensor:
        w = self.bound.o.weight
        device = w.device if w.device.type != "meta" else torch.device("cpu")
        return torch.zeros(heads, self._cfg.d_head, dtype=w.dtype, device=device)

    @property
    def W_Q(self) -> torch.Tensor:
        return self._raw_weight("q")

    @property
    def W_K(self) -> torch.Tensor:
        return self._expand(self._raw_weight("k"))

    @property
    def W_V(self) -> torch.Tensor:
        return self._expand(self._raw_weight("v"))

    @property
    def W_K_raw(self) -> torch.Tensor:
        """Keys as stored: `[n_kv_heads, d_model, d_head]` (a view)."""
        return self._raw_weight("k")

    @property
    def W_V_raw(self) -> torch.Tensor:
        return self._raw_weight("v")

    @property
    def b_Q(self) -> torch.Tensor:
        self._no_linear("b_Q")
        bias = self.raw_bias("q")
        return self._zeros(self._cfg.n_heads) if bias is None else bias

    @property
    def b_K(self) -> torch.Tensor:
        self._no_linear("b_K")
        bias = self.raw_bias("k")
        return self._zeros(self._cfg.n_heads) if bias is None else self._expand(bias)

    @property
    def b_V(self) -> torch.Tensor:
        self._no_linear("b_V")
        bias = self.raw_bias("v")
        return self._zeros(self._cfg.n_heads) if bias is None else self._expand(bias)

    @property
    def W_O(self) -> torch.Tensor:
        return in_out(self.bound.o, self.bound.layout, self._anchors).unflatten(
            0, (self._cfg.n_heads, self.bound.d_head_v or self._cfg.d_head)
        )

    @property
    def b_O(self) -> torch.Tensor:
        bias = materialize(self.bound.o, "bias", self._anchors)
        if bias is None:
            w = self.bound.o.weight
            device = w.device if w.device.type != "meta" else torch.device("cpu")
            return torch.zeros(self._cfg.d_model, dtype=w.dtype, device=device)
        return bias

    @property
    def OV(self) -> FactoredMatrix:
        """`W_V @ W_O` per head, kept factored: `[n_heads, d_model, d_model]` (GQA values expanded)."""
        return FactoredMatrix(self.W_V, self.W_O)

    @property
    def QK(self) -> FactoredMatrix:
        """`W_Q @ W_K^T` per head, kept factored: `[n_heads, d_model, d_model]` (GQA keys expanded)."""
        return FactoredMatrix(self.W_Q, self.W_K.transpose(-2, -1))


class MLPWeights(HookAttributes):
    """`W_in W_gate [d_model, d_mlp]`, `W_out [d_mlp, d_model]` and their biases."""

    def __init__(self, bound: BoundMLP, anchors: tuple[nn.Module, ...] = ()) -> None:
        self.bound = bound
        self._anchors = (bound.module, *anchors)

    def _half(self, tensor: torch.Tensor, name: str) -> torch.Tensor:
        """`name`'s half (`in` or `gate`) of a fused gate/up projection's weight or bias (a view); else as is."""
        views = self.bound.gate_up_views
        return tensor if views is None else views[name](tensor)

    @property
    def W_in(self) -> torch.Tensor:
        return self._half(in_out(self.bound.w_in, self.bound.layout, self._anchors), "in")

    @property
    def W_gate(self) -> torch.Tensor | None:
        gate = self.bound.w_gate
        return None if gate is None else self._half(in_out(gate, self.bound.layout, self._anchors), "gate")

    @property
    def W_out(self) -> torch.Tensor:
        return in_out(self.bound.w_out, self.bound.layout, self._anchors)

    def _bias(self, module: nn.Module | None, width: int, half: str | None = None) -> torch.Tensor | None:
        if module is None:
            return None
        bias = materialize(module, "bias", self._anchors)
        if bias is None:
            w = materialize(module, "weight", self._anchors)
            return torch.zeros(width, dtype=w.dtype, device=w.device)
        return bias if half is None else self._half(bias, half)

    @property
    def b_in(self) -> torch.Tensor:
        return self._bias(self.bound.w_in, self.W_in.shape[1], "in")

    @property
    def b_gate(self) -> torch.Tensor | None:
        gate = self.bound.w_gate
        return None if gate is None else self._bias(gate, self.W_in.shape[1], "gate")

    @property
    def b_out(self) -> torch.Tensor:
        return self._bias(self.bound.w_out, self.W_out.shape[1])


class NormWeights(HookAttributes):
    """`w` and `b` of a norm, as stored (a `(1 + w)` offset is a property of the kind, not folded in)."""

    def __init__(self, bound: BoundNorm, anchors: tuple[nn.Module, ...] = ()) -> None:
        self.bound = bound
        self._anchors = anchors

    def _real(self, tensor: torch.Tensor | None, name: str) -> torch.Tensor | None:
        if tensor is None or tensor.device.type != "meta":
            return tensor
        return materialize(self.bound.module, name, self._anchors)

    @property
    def w(self) -> torch.Tensor | None:
        return self._real(self.bound.kind.weight(self.bound.module), "weight")

    @property
    def b(self) -> torch.Tensor | None:
        return self._real(self.bound.kind.bias(self.bound.module), "bias")


class BlockWeights(HookAttributes):
    """`bridge.blocks[i]`: `.attn`, `.mlp`, `.ln1`, `.ln2` weight views and the HF block module."""

    def __init__(self, bound: BoundBlock, cfg: BridgeConfig) -> None:
        self.index = bound.index
        self.module = bound.module
        anchors = (bound.module,)  # where offload maps of its parameters may hang (accelerate)
        self.attn = AttentionWeights(bound.attn, cfg, anchors)
        if bound.mlp.moe is not None:  # a mixture of experts: router and per-expert views (moe_weights.py)
            from .moe_weights import MoEWeights

            self.mlp = MoEWeights(bound.mlp, anchors)
        else:
            self.mlp = MLPWeights(bound.mlp, anchors)
        self.ln1 = NormWeights(bound.ln1, anchors) if bound.ln1 else None
        mlp_norm = NormWeights(bound.mlp_norm, anchors) if bound.mlp_norm else None  # ln1 where shared (GPT-J)
        # Decoder blocks with cross attention follow HookedEncoderDecoder: ln2 before cross attention,
        # ln3 before the MLP.
        self.cross_attn = AttentionWeights(bound.cross.attn, cfg, anchors) if bound.cross else None
        self.ln2 = (NormWeights(bound.cross.ln, anchors) if bound.cross.ln else None) if bound.cross else mlp_norm
        self.ln3 = mlp_norm if bound.cross else None

    def __repr__(self) -> str:
        return f"BlockWeights(index={self.index}, module={type(self.module).__name__})"


def check_bound_shapes(bound: BoundModel, cfg: BridgeConfig) -> None:
    """Fail at bind time when the spec's head counts or sizes disagree with the real weights."""
    h, kv, d, dm = cfg.n_heads, cfg.n_kv_heads, cfg.d_head, cfg.d_model
    width = dm if bound.embed_project is None else bound.embed_project.weight.shape[1]
    check_shape(bound.embed.weight, (cfg.d_vocab, width), "config.d_vocab / config.d_model", "embed", "the embedding")
    for block in bound.all_blocks():
        for attn in [block.attn, *([block.cross.attn] if block.cross else [])]:
            if attn.latent is not None:
                check_latent_shapes(attn, cfg, f"block {block.index}")
                continue
            for name, module in attn.qkv.items():
                check_layout(module, attn.layout, "block.attn.layout", f"{attn.path}.{name}")
                width = (h + 2 * kv) * d if name == "qkv" else (h if name == "q" else kv) * d
                what = f"the {name} projection of block {block.index} ([in, out])"
                check_shape(
                    _raw_in_out(module, attn.layout), (dm, width), "config.n_heads / config.d_head", attn.path, what
                )
            check_layout(attn.o, attn.layout, "block.attn.layout", f"{attn.path}.o")
            check_shape(
                _raw_in_out(attn.o, attn.layout),
                (h * d, dm),
                "config.n_heads / config.d_head",
                attn.path,
                f"the output projection of block {block.index} ([in, out])",
            )
        mlp = block.mlp
        projections = (("in", mlp.w_in), ("gate", mlp.w_gate), ("out", mlp.w_out))
        if mlp.gate_up_views is not None:  # one fused module holds gate and up: [d_model, 2 * d_mlp]
            projections = (("gate_up", mlp.w_in), ("out", mlp.w_out))
        for name, module in projections:
            if module is None:
                continue
            check_layout(module, mlp.layout, "block.mlp.layout", f"{mlp.path}.{name}")
            expected = {"out": (cfg.d_mlp, dm), "gate_up": (dm, 2 * cfg.d_mlp)}.get(name, (dm, cfg.d_mlp))
            check_shape(
                _raw_in_out(module, mlp.layout),
                expected,
                "config.d_mlp",
                mlp.path,
                f"the MLP {name} projection of block {block.index} ([in, out])",
            )
