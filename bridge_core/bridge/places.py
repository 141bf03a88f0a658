"""Where a hook point lives in the HF model (docs/architecture.md#hook-points), and how its tensor is shown to users.

A `Place` names a module and a spot on it: its output, one of its inputs, a value recomputed from
its input (norm scale, per-head result) or a point inside attention. A `View` turns the tensor HF
holds into the shape users see (`[b, s, h*d] -> [b, s, h, d]`); it is always a true view, so an
edit is written back by copying into the same view of a fresh clone.
"""

from __future__ import annotations

import threading
from typing import Any, Literal

import torch
from torch import nn

from ..kinds import NormKind
from ..records import record


class View:
    """A storage-sharing reshaping of a module's tensor; `__call__` must return a view of its input."""

    def __call__(self, base: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def write(self, base: torch.Tensor, value: torch.Tensor) -> None:
        """Write `value` (the shape this view shows) into `base`, where the view took it from."""
        self(base).copy_(value)


@record(frozen=True)
class SplitHeads(View):
    """`[..., n*d] -> [..., n, d]`, optionally from a slice `[start, start + n*d)` of the last dim."""

    n_heads: int
    d_head: int
    start: int = 0
    whole: bool = True

    def __call__(self, base: torch.Tensor) -> torch.Tensor:
        width = self.n_heads * self.d_head
        part = base if self.whole else base.narrow(-1, self.start, width)
        return part.unflatten(-1, (self.n_heads, self.d_head))


@record(frozen=True)
class InterleavedHeads(View):
    """`[..., h*(parts*d)]` laid out per head `[h0: p0 p1 p2 | h1: ...]`; selects part `index`."""

    n_heads: int
    parts: int
    index: int
    d_head: int

    def __call__(self, base: torch.Tensor) -> torch.Tensor:
        return base.unflatten(-1, (self.n_heads, self.parts, self.d_head))[..., self.index, :]


@record(frozen=True)
class GroupedHeads(View):
    """`[..., groups*(3*w)]` laid out `[g0: p0 p1 p2 | g1: ...]`, each part `w = n_heads*d_head/groups` wide
    (CodeGen's 4 groups of [q | v | k]); selects part `index` of every group, as `[..., n_heads, d_head]`.

    Not a true view: heads of different groups are not one stride apart, so the value is a copy
    (as HF's own reshape of the split is); `write` puts an edit back into the strided parts."""

    n_heads: int
    d_head: int
    groups: int
    index: int

    def parts(self, base: torch.Tensor) -> torch.Tensor:
        """The true view `[..., groups, w]` of this part in every group."""
        width = self.n_heads * self.d_head // self.groups
        return base.unflatten(-1, (self.groups, 3, width))[..., self.index, :]

    def __call__(self, base: torch.Tensor) -> torch.Tensor:
        return self.parts(base).reshape(*base.shape[:-1], self.n_heads, self.d_head)

    def write(self, base: torch.Tensor, value: torch.Tensor) -> None:
        self.parts(base).copy_(value.reshape(*value.shape[:-2], self.groups, -1))


@record(frozen=True)
class HeadsFirst(View):
    """`[b, h, s, d] -> [b, s, h, d]` (q/k norms that HF applies after the head transpose)."""

    def __call__(self, base: torch.Tensor) -> torch.Tensor:
        return base.transpose(-3, -2)


class TokenShape:
    """The `[batch, pos]` of the current call of one block, recorded by a pre-hook on the block.

    Kept per thread: threads calling one bridge at once run batches of their own shapes.
    """

    __slots__ = ("_local",)

    def __init__(self) -> None:
        self._local = threading.local()

    @property
    def shape(self) -> tuple[int, ...]:
        return getattr(self._local, "shape", ())

    @shape.setter
    def shape(self, value: tuple[int, ...]) -> None:
        self._local.shape = value


@record(frozen=True, eq=False)
class ShapedView(View):
    """A view that needs the current call's shape, recorded from the input of `source` (minus its
    last dim) by a pre-hook the session adds."""

    cell: TokenShape
    source: nn.Module


@record(frozen=True, eq=False)
class FlatTokens(ShapedView):
    """`[b*s, ...] -> [b, s, ...]` for modules HF runs on flattened tokens (OPT's MLP); a tensor already
    `[b, s, ...]` (DeepSeek's shared experts, run on the unflattened MLP input) is shown as it is."""

    def __call__(self, base: torch.Tensor) -> torch.Tensor:
        shape = self.cell.shape
        if base.dim() == len(shape) + 1 and tuple(base.shape[: len(shape)]) == tuple(shape):
            return base.view(base.shape)
        return base.unflatten(0, shape)


@record(frozen=True, eq=False)
class BatchBroadcast(ShapedView):
    """`[1, s, d] -> [b, s, d]` (GPT-2's position embeddings, shared by the batch), as HookedTransformer
    shows them. An edit may differ per row, so it replaces the module output whole: HF adds it to the
    token embeddings by broadcasting, which takes `[b, s, d]` as well as `[1, s, d]`."""

    replaces_base = True

    def __call__(self, base: torch.Tensor) -> torch.Tensor:
        if base.dim() == 2:  # [s, d] (Marian's and Pegasus's sinusoidal tables, looked up without a batch)
            base = base.unsqueeze(0)
        return base.expand(self.cell.shape[0], *base.shape[1:])


@record(frozen=True, eq=False)
class Scaled(View):
    """`inner(base) * factor`: a value HF computes outside any module by multiplying a module's output
    (Granite's residual and embedding multipliers; docs/decisions/0013-multipliers.md).

    Not a true view: the product is a tensor of its own, computed as HF computes it. An edit is written
    back divided by `factor` (HF's own multiply then makes the value what the hook left, up to one rounding);
    an unedited or bitwise-equal value leaves HF's tensor untouched (dispatch.py)."""

    factor: float
    inner: View | None = None

    def __call__(self, base: torch.Tensor) -> torch.Tensor:
        return (base if self.inner is None else self.inner(base)) * self.factor


def qkv_views(
    n_heads: int, n_kv_heads: int, d_head: int, fused: bool, order: str, groups: int | None = None
) -> dict[str, View]:
    """The views that take q, k and v heads out of a projection's last dim (hook points and weights)."""
    h, kv, d = n_heads, n_kv_heads, d_head
    if not fused:
        return {"q": SplitHeads(h, d), "k": SplitHeads(kv, d), "v": SplitHeads(kv, d)}
    if order.startswith("grouped_"):  # `grouped_qvk`: the parts of each group in that order
        return {n: GroupedHeads(h, d, groups or 1, order.index(n) - len("grouped_")) for n in "qkv"}
    if order == "per_head_interleaved":
        return {n: InterleavedHeads(h, 3, i, d) for i, n in enumerate("qkv")}
    starts = {"q": (0, h), "k": (h * d, kv), "v": ((h + kv) * d, kv)}
    return {n: SplitHeads(heads, d, start, whole=False) for n, (start, heads) in starts.items()}


@record(frozen=True)
class Narrow(View):
    """`[..., start : start + width]` of the last dim: one half of a fused gate|up projection (Phi-3)."""

    start: int
    width: int

    def __call__(self, base: torch.Tensor) -> torch.Tensor:
        return base.narrow(-1, self.start, self.width)


def gate_up_views(d_mlp: int, order: str) -> dict[str, View]:
    """The halves of a fused gate/up projection's last dim: `gate` (hook_pre, W_gate) and `in` (hook_pre_linear,
    W_in), for `order` `gate_up` ([gate | up]) or `up_gate`."""
    first, second = Narrow(0, d_mlp), Narrow(d_mlp, d_mlp)
    return {"gate": first, "in": second} if order == "gate_up" else {"gate": second, "in": first}


def select_output(output: Any, index: int | None) -> torch.Tensor:
    """Element `index` of a module's tuple output (0 when None), or the output itself when a tensor."""
    if isinstance(output, torch.Tensor):
        return output
    return output[0 if index is None else index]


@record(frozen=True, eq=False)
class Place:
    module: nn.Module
    module_path: str


@record(frozen=True, eq=False)
class Phase:
    """Which calls of a module called in two roles a place acts on (NanoChat's one norm after the embedding and as
    the final norm): `embed`, the calls after the token embedding `starts` ran and before any of `blocks` did;
    `final`, the calls after a block ran (also a layer range that starts past the embedding)."""

    role: Literal["embed", "final"]
    starts: nn.Module
    blocks: tuple[nn.Module, ...]


@record(frozen=True, eq=False)
class ModuleOutput(Place):
    """A module's output (element `index` when it returns a tuple), shown through `view`."""

    index: int | None = None
    view: View | None = None
    phase: Phase | None = None  # only the calls of one role (a module in two roles); None: every call


@record(frozen=True, eq=False)
class ModuleInput(Place):
    """A module's hidden-states input, positional `arg` or keyword `kwarg`.

    `in_place`: write an edit into the tensor itself rather than passing a new one, because HF also
    holds the same tensor elsewhere (the mid residual is ln2's input and the residual added back).
    """

    arg: int = 0
    kwarg: str = "hidden_states"
    view: View | None = None
    in_place: bool = False


@record(frozen=True, eq=False)
class NormValue(Place):
    """`hook_scale` / `hook_normalized`, recomputed from the norm's input by its kind."""

    which: Literal["scale", "normalized"] = "scale"
    kind: NormKind | None = None
    view: View | None = None
    phase: Phase | None = None  # only the calls of one role (a norm in two roles); None: every call


@record(frozen=True, eq=False)
class HeadResult(Place):
    """`hook_result`: per-head output of the output projection, from its input and `W_O`."""

    n_heads: int = 0
    d_head: int = 0
    layout: Literal["conv1d", "linear"] = "linear"
    view: View | None = None  # a tensor-parallel model's gather across ranks (bridge/tensor_parallel.py)


@record(frozen=True, eq=False)
class AttentionValue(Place):
    """A point at the attention interface: `hook_rot_q` / `hook_rot_k` (q, k as HF hands them to the
    attention function) and `hook_attn_scores` / `hook_pattern` (the bridge's eager attention)."""

    which: Literal["scores", "pattern", "rot_q", "rot_k"] = "scores"
    view: View | None = None  # a tensor-parallel model's gather across ranks (bridge/tensor_parallel.py)
