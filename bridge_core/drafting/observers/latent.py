"""Observers of multi-head latent attention (MLA, decision 0015): which modules are q_a / q_a_norm / q_b (or a
plain q), kv_a / kv_a_norm / kv_b, where the rope part of each head starts, whether HF hands attention the rope
part de-interleaved, and the config fields giving those widths. Everything is told from values:

- `kv_b` is the projection whose output, split per head, ends with the values HF attends over and starts
  with the keys' non-rotary part (at every position); its width per head less `d_head_v` is `d_nope`;
- `kv_a_norm` is the norm whose output `kv_b` reads, `kv_a` the projection whose output starts with that
  norm's input; the rest of `kv_a`'s output is the shared rotary key;
- the query projection (`q_b`, or a plain `q`) gives the queries' non-rotary part at every position; what it
  reads is a norm's output (`q_a_norm`, whose input is `q_a`'s output) or the attention input (plain `q`);
- at position 0, where rotary is the identity, the rope parts HF hands attention are the projections' rope
  parts as stored or reordered to [even dims | odd dims] (`rope_deinterleave`).

The other query form (plain q vs. query latent) is drawn from a second tiny model with the q latent rank
flipped, so the drafted qkv names both, as the hand-written specs do.
"""

from __future__ import annotations

from typing import Any

import torch

from ...records import record
from ..draft import DraftContext
from ..errors import DraftingError
from ..probe import AttentionCall, Observation, same
from ..shrink import plain_fields
from .modules import is_linear, is_norm, norm_kind

_Q_RANK_WHEN_ADDED = 40  # the query latent's rank in a tiny model drawn to see the q-latent form


@record
class Latent:
    """The latent attention seen in one observed forward (module names relative to the attention module)."""

    kv_a: str
    kv_a_norm: str
    kv_b: str
    q: str | None  # plain query projection (no query latent)
    q_a: str | None
    q_a_norm: str | None
    q_b: str | None
    d_nope: int
    d_rope: int
    d_head_v: int
    kv_rank: int
    q_rank: int | None
    deinterleave: bool
    rotates: bool


def is_latent(call: AttentionCall) -> bool:
    """Values narrower than queries/keys, every head given a key: the shape of MLA's attention call."""
    return call.value.shape[-1] != call.query.shape[-1] and call.key.shape[1] == call.query.shape[1]


def _bshd(t: torch.Tensor) -> torch.Tensor:
    return t.transpose(1, 2)  # [b, h, s, d] -> [b, s, h, d]


def _flat(t: torch.Tensor | None) -> torch.Tensor | None:
    """[b, 1, s, w] (a latent viewed with one shared head, DeepSeek V3) as [b, s, w]."""
    return t[:, 0] if t is not None and t.dim() == 4 and t.shape[1] == 1 else t


def _heads(out: torch.Tensor | None, h: int) -> torch.Tensor | None:
    if out is None or out.dim() != 3 or out.shape[-1] % h:
        return None
    return out.reshape(out.shape[0], out.shape[1], h, -1)


def _rope_order(rope: int) -> torch.Tensor:
    order = torch.arange(rope)
    return torch.cat([order[0::2], order[1::2]])


def identify(obs: Observation, path: str) -> Latent | str:
    """The latent attention at `path` in `obs`, or why it could not be told (a sentence for a gap)."""
    call = next(c for c in obs.attention if obs.name(c.module) == path)
    module = obs.module(path)
    q, k, v = _bshd(call.query), _bshd(call.key), _bshd(call.value)
    h, d, dv = q.shape[2], q.shape[-1], v.shape[-1]
    linears = [n for n, m in module.named_modules() if is_linear(m)]
    norms = [n for n, m in module.named_modules() if is_norm(m)]
    out = {n: _flat(obs.output(f"{path}.{n}")) for n in linears + norms}
    seen = {n: _flat(obs.input(f"{path}.{n}")) for n in linears + norms}
    # kv_b: [k_nope | v] per head
    kv_b = nope = None
    for name in linears:
        per_head = _heads(out[name], h)
        if per_head is None or per_head.shape[-1] <= dv or per_head.shape[:3] != v.shape[:3]:
            continue
        width = per_head.shape[-1] - dv
        if width < d and same(per_head[..., width:], v) and same(per_head[..., :width], k[..., :width]):
            kv_b, nope = name, width
    if kv_b is None:
        return "no projection gives [key non-rotary part | value] per head"
    rope = d - nope
    kv_a_norm = next((n for n in norms if same(out[n], seen[kv_b])), None)
    if kv_a_norm is None:
        return f"{kv_b} reads no norm's output (a scale between the kv latent's norm and {kv_b}?)"
    rank = int(seen[kv_a_norm].shape[-1])
    kv_a = next(
        (n for n in linears if out[n] is not None and out[n].shape[-1] == rank + rope
         and same(out[n][..., :rank], seen[kv_a_norm])),
        None,
    )  # fmt: skip
    if kv_a is None:
        return f"no projection's output starts with {kv_a_norm}'s input and holds a {rope}-wide rotary key"
    query = next(
        (n for n in linears if n not in (kv_a, kv_b) and (hd := _heads(out[n], h)) is not None
         and hd.shape[-1] == d and same(hd[..., :nope], q[..., :nope])),
        None,
    )  # fmt: skip
    if query is None:
        return "no projection gives the queries' non-rotary part (a scale on the queries?)"
    q_rope, k_rope = _heads(out[query], h)[:, 0, :, nope:], out[kv_a][:, 0, rank:]
    order = _rope_order(rope)
    deinterleave = None
    for flag, idx in ((False, torch.arange(rope)), (True, order)):
        if same(q_rope[..., idx], q[:, 0, :, nope:]) and same(k_rope[:, None, idx].expand_as(k[:, 0, :, nope:]),
                                                              k[:, 0, :, nope:]):  # fmt: skip
            deinterleave = flag
            break
    if deinterleave is None:
        return "the rope parts HF hands attention at position 0 are not the projections' (nor de-interleaved)"
    rotates = not same(_heads(out[query], h)[:, -1, :, nope:], q[:, -1, :, nope:]) if q.shape[1] > 1 else False
    attn_in = _flat(obs.input(path))
    if attn_in is not None and same(seen[query], attn_in):
        parts: dict[str, Any] = {"q": query, "q_a": None, "q_a_norm": None, "q_b": None, "q_rank": None}
    else:
        q_a_norm = next((n for n in norms if n != kv_a_norm and same(out[n], seen[query])), None)
        q_a = q_a_norm and next((n for n in linears if same(out[n], seen[q_a_norm])), None)
        if q_a is None:
            return f"{query} reads neither the attention input nor a norm of a projection of it"
        q_rank = int(out[q_a].shape[-1])
        parts = {"q": None, "q_a": q_a, "q_a_norm": q_a_norm, "q_b": query, "q_rank": q_rank}
    return Latent(
        kv_a=kv_a, kv_a_norm=kv_a_norm, kv_b=kv_b, d_nope=nope, d_rope=rope, d_head_v=dv, kv_rank=rank,
        deinterleave=deinterleave, rotates=rotates, **parts,
    )  # fmt: skip


def _observe_with(ctx: DraftContext, delta: dict[str, Any]) -> Observation | str:
    """The drafter's tiny model with `delta` applied to its config, observed the same way (or why the config
    refuses it: AXK1's config requires a query latent)."""
    from ..drafter import _observe  # the drafter imports the observers: import when drawing, not at load

    try:
        return _observe(ctx.cls, {**ctx.test_config, **delta})[1]
    except DraftingError as exc:
        return exc.reason[:160]


def _identify_with(ctx: DraftContext, delta: dict[str, Any], path: str) -> tuple[Observation | None, Latent | str]:
    obs = _observe_with(ctx, delta)
    return (None, obs) if isinstance(obs, str) else (obs, identify(obs, path))


def _q_lora_field(ctx: DraftContext, lat: Latent) -> str | None:
    """The config attribute giving the query latent's rank (by value), or, without one, the unset
    attribute named for it."""
    if lat.q_rank is not None:
        return ctx.attr(lat.q_rank, ("q_lora_rank",), ("q_lora",))
    fields = plain_fields(ctx.config)
    return next((n for n, v in fields.items() if v is None and "lora" in n and n.startswith("q")), None)


def _interleave_field(ctx: DraftContext, path: str, lat: Latent) -> str | bool:
    """`rope_deinterleave`: the boolean config attribute whose flip flips what was observed, else the literal."""
    fields = plain_fields(ctx.config)
    for name, value in fields.items():
        if not isinstance(value, bool) or value is not lat.deinterleave or "interleave" not in name:
            continue
        other = _identify_with(ctx, {name: not value}, path)[1]
        if isinstance(other, Latent) and other.deinterleave is not lat.deinterleave:
            if lat.deinterleave:
                ctx.found.setdefault("variants", {})[f"no_{name}"] = {name: False}
            return name
    return lat.deinterleave


def observe_latent(ctx: DraftContext, path: str, spec: dict) -> bool:
    """Write `qkv: {kind: latent, ...}` and `layout` into `spec` (block.attn) for the attention module at `path`;
    False (with a gap recorded) where the observation does not show MLA's data flow."""
    lat = identify(ctx.obs, path)
    if isinstance(lat, str):
        ctx.draft.gap("latent attention", f"{path}: {lat}")
        return False
    q_field = _q_lora_field(ctx, lat)
    other: Latent | str | None = None
    other_obs = ctx.obs
    if q_field is not None:
        delta = {q_field: None if lat.q_rank is not None else _Q_RANK_WHEN_ADDED}
        seen, other = _identify_with(ctx, delta, path)
        if isinstance(other, Latent) and seen is not None:
            other_obs = seen
            ctx.found.setdefault("variants", {})["no_q_lora" if lat.q_rank is not None else "q_lora"] = delta
    if not isinstance(other, Latent):
        ctx.draft.note(f"block.attn.qkv: the other query form (q latent vs plain q) was not observed ({other})")
        other, other_obs = lat, ctx.obs
    with_q_latent, plain = (lat, other) if lat.q_rank is not None else (other, lat)
    qkv: dict[str, Any] = {"kind": "latent"}
    if plain.q is not None:
        qkv["q"] = plain.q
    if with_q_latent.q_a is not None:
        q_obs = ctx.obs if with_q_latent is lat else other_obs
        qkv["q_a"] = with_q_latent.q_a
        qkv["q_a_norm"] = _norm(q_obs, f"{path}.{with_q_latent.q_a_norm}", with_q_latent.q_a_norm, ctx)
        qkv["q_b"] = with_q_latent.q_b
    qkv["kv_a"] = lat.kv_a
    qkv["kv_a_norm"] = _norm(ctx.obs, f"{path}.{lat.kv_a_norm}", lat.kv_a_norm, ctx)
    qkv["kv_b"] = lat.kv_b
    deinterleave = _interleave_field(ctx, path, lat)
    if deinterleave is not False:
        qkv["rope_deinterleave"] = deinterleave
    module = ctx.obs.module(f"{path}.{lat.kv_a}")
    spec["layout"] = "conv1d" if type(module).__name__ == "Conv1D" else "linear"
    spec["qkv"] = qkv
    ctx.found["latent"] = lat
    ctx.found["q_lora_field"] = q_field
    if lat.rotates:
        ctx.found["rotates"] = True
    return True


def _norm(obs: Observation, full: str, name: str, ctx: DraftContext) -> dict[str, str]:
    kind = norm_kind(obs.module(full), obs.input(full), obs.output(full))
    if kind is None:
        ctx.draft.gap("latent norm kind", f"{full}: no registered norm kind reproduces its output")
    return {"path": name, "kind": kind or "rmsnorm"}


def observe_latent_config(ctx: DraftContext) -> None:
    """The normalized latent widths as the config attributes holding the observed numbers (after the generic
    config observer, whose d_head and n_kv_heads do not fit MLA: keys are expanded to every query head)."""
    lat: Latent | None = ctx.found.get("latent")
    if lat is None:
        return
    cfg = ctx.draft.fields.setdefault("config", {})
    cfg.pop("n_kv_heads", None)  # every head gets a key: the normalized default n_heads
    names = {
        "d_head_v": ctx.attr(lat.d_head_v, ("v_head_dim",), ("v_head",)),
        "kv_lora_rank": ctx.attr(lat.kv_rank, ("kv_lora_rank",), ("kv_lora",)),
        "rotary_dim": ctx.attr(lat.d_rope, ("qk_rope_head_dim",), ("rope_head",)),
    }
    nope = ctx.attr(lat.d_nope, ("qk_nope_head_dim",), ("nope",))
    if nope and names["rotary_dim"]:
        cfg["d_head"] = f"{nope} + {names['rotary_dim']}"
    else:
        cfg["d_head"] = ctx.attr(lat.d_nope + lat.d_rope, ("qk_head_dim",), ("qk_head",)) or lat.d_nope + lat.d_rope
    for key in ("d_head_v", "q_lora_rank", "kv_lora_rank", "rotary_dim"):
        value = ctx.found.get("q_lora_field") if key == "q_lora_rank" else names[key]
        if value is None and key == "q_lora_rank":
            ctx.draft.gap("config", "no config attribute gives the query latent's rank")
            continue
        if value is None:
            observed = {"d_head_v": lat.d_head_v, "kv_lora_rank": lat.kv_rank, "rotary_dim": lat.d_rope}[key]
            ctx.draft.gap("config", f"no config attribute gives {key} = {observed}")
            value = observed
        cfg[key] = value
    if not isinstance(cfg["d_head"], str):
        ctx.draft.gap("config", f"no config attribute gives d_head = {cfg['d_head']}")
