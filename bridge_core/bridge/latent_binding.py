"""Binding multi-head latent attention (`qkv: {kind: latent}`): the part of the one spec walk that reads
the latent projections, their norms and the widths the normalized config gives them (decision 0015).

Called by `binding._Binder.attention` for a latent qkv spec; produces the `BoundLatent` (bound.py).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from torch import nn

from ..spec.config import spec_error
from .bound import BoundLatent
from .latent_attention import LATENT_CONFIG_FIELDS
from .spec_walker import Missing

if TYPE_CHECKING:
    from ..spec.schema import AttentionSpec
    from .binding import _Binder


def bind_latent(binder: _Binder, module: nn.Module, a: AttentionSpec, field: str, inner: str) -> BoundLatent:
    """Multi-head latent attention: the factored projections and the widths the config gives them."""
    spec, at = a.qkv, f"{field}.qkv"
    cfg = binder.cfg
    q_a = binder.optional(module, spec.q_a, inner)  # absent in configs without a query latent
    if q_a is not None:
        q_b = binder.attempt(binder.resolve, module, spec.q_b, f"{at}.q_b", inner)
        q_a_norm = binder.attempt(binder.norm, module, spec.q_a_norm, f"{at}.q_a_norm", inner, "q_a_norm", "q_b")
        q = None
    else:
        if spec.q is None:
            binder.fail(
                spec_error(
                    "the model has no query latent and the spec names no plain 'q'", binder.spec, None, f"{at}.q_a"
                )
            )
            raise Missing
        q, q_b, q_a_norm = binder.attempt(binder.resolve, module, spec.q, f"{at}.q", inner), None, None
    kv_a = binder.attempt(binder.resolve, module, spec.kv_a, f"{at}.kv_a", inner)
    kv_b = binder.attempt(binder.resolve, module, spec.kv_b, f"{at}.kv_b", inner)
    kv_a_norm = binder.attempt(binder.norm, module, spec.kv_a_norm, f"{at}.kv_a_norm", inner, "kv_a_norm", "kv_b")
    missing = [n for n in LATENT_CONFIG_FIELDS if cfg is not None and not isinstance(cfg.extra.get(n), int)]
    if missing:
        binder.fail(
            spec_error(
                f"latent attention needs the normalized integer field(s) {', '.join(missing)}",
                binder.spec,
                None,
                "config",
            )
        )
    if None in (kv_a, kv_b, kv_a_norm) or (q_a is not None and None in (q_b, q_a_norm)) or (q_a is None and q is None):
        raise Missing
    if cfg is None or missing:
        raise Missing
    extra = cfg.extra
    q_rank = extra.get("q_lora_rank") if q_a is not None else None
    deinterleave = binder.value(f"{at}.rope_deinterleave", spec.rope_deinterleave)
    return BoundLatent(
        q=q[0] if q else None,
        q_a=q_a[0] if q_a else None,
        q_a_norm=q_a_norm,
        q_b=q_b[0] if q_b else None,
        kv_a=kv_a[0],
        kv_a_norm=kv_a_norm,
        kv_b=kv_b[0],
        q_rank=q_rank,
        kv_rank=extra["kv_lora_rank"],
        d_nope=cfg.d_head - extra["rotary_dim"],
        d_rope=extra["rotary_dim"],
        d_head_v=extra["d_head_v"],
        rope_deinterleave=bool(deinterleave),
    )
