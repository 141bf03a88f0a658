"""Multi-head latent attention (MLA: DeepSeek V2/V3, MiniCPM3): hook views and factored weight views.

MLA factors the projections (decision docs/decisions/0015-latent-attention.md):

    queries  q = q_b(q_a_norm(q_a(x)))               (or a plain q(x) without a query latent)
             per head [q_nope (d_nope) | q_rope (d_rope)]
    latent   kv_a(x) = [c (kv_rank) | k_rope (d_rope)]   k_rope: ONE rotary key shared by all heads
    keys     per head [k_nope (d_nope) | k_rope]     k_nope, v = split(kv_b(kv_a_norm(c)))
    values   per head v (d_head_v), which may differ from d_head = d_nope + d_rope

Every hook point here is a true view of a tensor HF computes (so edits are written back as at any
module output): `hook_q` over the query projection's output, `hook_k` (the per-head `k_nope` part)
and `hook_v` over `kv_b`'s output, `hook_k_rope` over `kv_a`'s output, and the two latents at their
norms' outputs. HF applies `kv_b` to the cached latent of every position, so during cached generation
the `kv_b` views show only the current call's positions (`LastPositions`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

from ..errors import BindError, BridgeCoreError
from ..records import record
from .places import ModuleOutput, ShapedView, SplitHeads, TokenShape, View

if TYPE_CHECKING:
    from ..spec.config import BridgeConfig
    from .bound import BoundAttention, BoundLatent

LATENT_CONFIG_FIELDS = ("d_head_v", "kv_lora_rank", "rotary_dim")
"""Normalized fields a latent attention needs besides d_head (= d_nope + d_rope); `q_lora_rank` may be null."""


class LatentWeightError(BridgeCoreError, AttributeError):
    """A HookedTransformer-shaped weight that latent attention does not have as a linear map of the residual."""


@record(frozen=True, eq=False)
class HeadPart(ShapedView):
    """`[b, (1,) T, h*(w0+w1)]` laid out per head `[h0: part0 part1 | h1: ...]` -> part `[b, s, h, width]`.

    `kv_b` receives the latent viewed `[b, 1, T, rank]` (a single-head 4D tensor), so its output may have
    that extra axis; `T` covers every cached position, of which the last `s` (the current call's, recorded
    from the attention module's input) are shown.
    """

    n_heads: int = 0
    per_head: int = 0
    start: int = 0
    width: int = 0

    def __call__(self, base: torch.Tensor) -> torch.Tensor:
        if base.dim() == 4:
            base = base.select(1, 0)
        current = self.cell.shape[1] if len(self.cell.shape) > 1 else base.shape[1]
        base = base.narrow(1, base.shape[1] - current, current)
        return base.unflatten(-1, (self.n_heads, self.per_head)).narrow(-1, self.start, self.width)


@record(frozen=True)
class Columns(View):
    """`[..., n] -> [..., start:start+width]`: the shared rotary key inside `kv_a`'s output."""

    start: int
    width: int

    def __call__(self, base: torch.Tensor) -> torch.Tensor:
        return base.narrow(-1, self.start, self.width)


def latent_views(n_heads: int, d_head: int, latent: BoundLatent, module: nn.Module) -> dict[str, View]:
    """The views of q, k (k_nope), v and the shared rotary key, over the modules that output them."""
    cell = TokenShape()  # one cell per attention module: k and v share the recorder on `module`
    per_head = latent.d_nope + latent.d_head_v
    return {
        "q": SplitHeads(n_heads, d_head),
        "k": HeadPart(cell, module, n_heads, per_head, 0, latent.d_nope),
        "v": HeadPart(cell, module, n_heads, per_head, latent.d_nope, latent.d_head_v),
        "k_rope": Columns(latent.kv_rank, latent.d_rope),
    }


def latent_points(p: str, attn: BoundAttention) -> list[tuple[str, ModuleOutput]]:
    """The projection-side hook points of a latent attention, in forward order.

    `hook_q_latent` [b, s, q_lora_rank] (absent without a query latent), `hook_q` [b, s, h, d_head],
    `hook_k_rope` [b, s, d_rope] (before rotary, shared by all heads), `hook_kv_latent` [b, s, kv_lora_rank]
    (what HF caches), `hook_k` [b, s, h, d_nope] (the per-head part of the keys), `hook_v` [b, s, h, d_head_v].
    """
    lat, views, path = attn.latent, attn.views, attn.path
    points = []
    if lat.q_a_norm is not None:
        points.append((f"{p}.hook_q_latent", ModuleOutput(lat.q_a_norm.module, lat.q_a_norm.path)))
    points.append((f"{p}.hook_q", ModuleOutput(lat.query, f"{path}.q", view=views["q"])))
    points.append((f"{p}.hook_k_rope", ModuleOutput(lat.kv_a, f"{path}.kv_a", view=views["k_rope"])))
    points.append((f"{p}.hook_kv_latent", ModuleOutput(lat.kv_a_norm.module, lat.kv_a_norm.path)))
    for n in "kv":
        points.append((f"{p}.hook_{n}", ModuleOutput(lat.kv_b, f"{path}.kv_b", view=views[n])))
    return points


def _in_out(module: nn.Module, layout: str) -> torch.Tensor:
    return module.weight if layout == "conv1d" else module.weight.t()


def check_latent_shapes(attn: BoundAttention, cfg: BridgeConfig, where: str) -> None:
    """Fail at bind time when the latent widths of the config disagree with the real weights."""
    lat = attn.latent
    h, dm = cfg.n_heads, cfg.d_model
    expected = [
        ("kv_a", lat.kv_a, (dm, lat.kv_rank + lat.d_rope), "config.kv_lora_rank / config.rotary_dim"),
        ("kv_b", lat.kv_b, (lat.kv_rank, h * (lat.d_nope + lat.d_head_v)), "config.d_head / config.d_head_v"),
        ("o", attn.o, (h * lat.d_head_v, dm), "config.n_heads / config.d_head_v"),
    ]
    if lat.q_a is not None:
        expected += [
            ("q_a", lat.q_a, (dm, lat.q_rank), "config.q_lora_rank"),
            ("q_b", lat.q_b, (lat.q_rank, h * cfg.d_head), "config.n_heads / config.d_head"),
        ]
    else:
        expected.append(("q", lat.q, (dm, h * cfg.d_head), "config.n_heads / config.d_head"))
    for name, module, shape, field in expected:
        actual = tuple(_in_out(module, attn.layout).shape)
        if actual != shape:
            raise BindError(
                f"the latent attention's {name} projection of {where} has shape {actual} ([in, out]) but the "
                f"spec's config implies {shape}",
                spec_path=field,
                module_path=attn.path,
            )


class LatentWeightViews:
    """The factored weight views of a latent attention, on `bridge.blocks[i].attn` (all share storage).

    `W_Q_a [d_model, q_lora_rank]`, `W_Q_b [n_heads, q_lora_rank, d_head]` (or the plain `W_Q` without a
    query latent), `W_KV_a [d_model, kv_lora_rank]`, `W_K_rope [d_model, d_rope]` (the shared rotary key),
    `W_K_b [n_heads, kv_lora_rank, d_nope]`, `W_V_b [n_heads, kv_lora_rank, d_head_v]`; their biases
    `b_Q_a`, `b_KV_a`, `b_K_rope` (None where the module has none). A norm sits between each `_a` and `_b`
    (`q_a_norm`, `kv_a_norm`): keys and values are not linear in the residual, so `W_K` / `W_V` (and
    `W_Q` with a query latent) do not exist and raise `LatentWeightError`.
    """

    bound: BoundAttention
    _anchors: tuple[nn.Module, ...]

    def _latent(self, what: str) -> BoundLatent:
        latent = self.bound.latent
        if latent is None:
            raise LatentWeightError(f"{what} exists only on latent attention (qkv kind: latent)")
        return latent

    def _io(self, module: nn.Module) -> torch.Tensor:
        from .weights import in_out  # weights.py imports this module

        return in_out(module, self.bound.layout, self._anchors)

    def _bias_of(self, module: nn.Module | None) -> torch.Tensor | None:
        from .weights import materialize

        return None if module is None else materialize(module, "bias", self._anchors)

    def _query_latent(self, what: str) -> BoundLatent:
        latent = self._latent(what)
        if latent.q_a is None:
            raise LatentWeightError(f"{what}: this model has no query latent (q_lora_rank is null); use W_Q")
        return latent

    @property
    def W_Q_a(self) -> torch.Tensor:
        return self._io(self._query_latent("W_Q_a").q_a)

    @property
    def b_Q_a(self) -> torch.Tensor | None:
        return self._bias_of(self._query_latent("b_Q_a").q_a)

    @property
    def W_Q_b(self) -> torch.Tensor:
        latent = self._query_latent("W_Q_b")
        return self._io(latent.q_b).unflatten(1, (-1, latent.d_nope + latent.d_rope)).permute(1, 0, 2)

    @property
    def W_KV_a(self) -> torch.Tensor:
        latent = self._latent("W_KV_a")
        return self._io(latent.kv_a).narrow(1, 0, latent.kv_rank)

    @property
    def b_KV_a(self) -> torch.Tensor | None:
        latent = self._latent("b_KV_a")
        bias = self._bias_of(latent.kv_a)
        return None if bias is None else bias.narrow(0, 0, latent.kv_rank)

    @property
    def W_K_rope(self) -> torch.Tensor:
        latent = self._latent("W_K_rope")
        return self._io(latent.kv_a).narrow(1, latent.kv_rank, latent.d_rope)

    @property
    def b_K_rope(self) -> torch.Tensor | None:
        latent = self._latent("b_K_rope")
        bias = self._bias_of(latent.kv_a)
        return None if bias is None else bias.narrow(0, latent.kv_rank, latent.d_rope)

    def _kv_b(self, start: int, width: int, what: str) -> torch.Tensor:
        latent = self._latent(what)
        per_head = self._io(latent.kv_b).unflatten(1, (-1, latent.d_nope + latent.d_head_v))
        return per_head.narrow(-1, start, width).permute(1, 0, 2)

    @property
    def W_K_b(self) -> torch.Tensor:
        latent = self._latent("W_K_b")
        return self._kv_b(0, latent.d_nope, "W_K_b")

    @property
    def W_V_b(self) -> torch.Tensor:
        latent = self._latent("W_V_b")
        return self._kv_b(latent.d_nope, latent.d_head_v, "W_V_b")

    def _no_linear(self, name: str) -> None:
        """Raise for a HookedTransformer weight that latent attention has no linear form of."""
        latent = self.bound.latent
        if latent is None or (name in ("W_Q", "b_Q") and latent.q_a is None):
            return
        factored = {"W_Q": "W_Q_a, W_Q_b", "W_K": "W_KV_a, W_K_b, W_K_rope", "W_V": "W_KV_a, W_V_b"}
        key = name.removesuffix("_raw").replace("b_", "W_")
        raise LatentWeightError(
            f"{name}: latent attention (MLA) normalizes a latent between its down- and up-projections, so it has "
            f"no linear {name} from the residual stream; use the factored views {factored.get(key, '')} "
            "(docs/decisions/0015-latent-attention.md)"
        )
