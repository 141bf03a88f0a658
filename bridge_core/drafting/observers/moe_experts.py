"""Reading fused experts (3-D parameters) for the MoE observer: which parameter is gate|up and which down, how
they are stored (`[E, out, in]` or `[E, in, out]`), how gate and up share the gate|up outputs (halves or
interleaved), their biases, the activation, and a clamped GLU with an offset on up (GPT-OSS). Every reading is
recomputed through the bridge's own expert math (bridge/moe.py) and kept only where it gives the experts module's
output, on the probed call and on a replay with inputs large enough to reach any clamp."""

from __future__ import annotations

from dataclasses import field
from itertools import product
from types import SimpleNamespace
from typing import Any

import torch
from transformers.activations import ACT2FN

from ...records import record
from ..probe import same

_LIMITS = ("limit", "clamp")  # config floats whose name says so are clamp candidates


@record
class Storage:
    """One reading of the experts' fused parameters."""

    gate_up: str
    down: str
    layout: str  # linear [E, out, in] | conv1d [E, in, out]
    d_mlp: int
    biases: dict[str, str] = field(default_factory=dict)  # gate_up_bias / down_bias -> parameter name


def storages(module: torch.nn.Module, d: int) -> list[Storage]:
    """Every (gate_up, down, layout) whose shapes fit `[E, 2f, d]` / `[E, d, f]` (linear) or their transposes."""
    params = {n: p for n, p in module.named_parameters(recurse=False) if p.dim() == 3}
    if len(params) != 2:
        return []
    found = []
    for (a, pa), (b, pb) in ((x, y) for x in params.items() for y in params.items() if x[0] != y[0]):
        for layout in ("linear", "conv1d"):
            gu, down = (pa.shape[1:], pb.shape[1:]) if layout == "linear" else (pa.shape[2:0:-1], pb.shape[2:0:-1])
            f = down[1]
            if tuple(gu) == (2 * f, d) and down[0] == d:
                found.append(Storage(a, b, layout, f, _biases(module, pa.shape[0], f, d)))
    return found


def _biases(module: torch.nn.Module, n: int, f: int, d: int) -> dict[str, str]:
    """2-D parameters `[E, 2f]` (gate|up bias) and `[E, d]` (down bias) of the experts module."""
    out = {}
    for name, p in module.named_parameters(recurse=False):
        if p.dim() == 2 and p.shape[0] == n:
            if p.shape[1] == 2 * f and "gate_up_bias" not in out:
                out["gate_up_bias"] = name
            elif p.shape[1] == d and "down_bias" not in out:
                out["down_bias"] = name
    return out


def _clamp_candidates(fields: dict[str, Any]) -> list[tuple[str | None, float | None]]:
    floats = [
        (n, float(v))
        for n, v in fields.items()
        if any(k in n for k in _LIMITS) and isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0
    ]
    return [(None, None), *floats]


def _bound(s: Storage, module, split: str, first: bool, limit, offset) -> SimpleNamespace:
    """A stand-in for the bound MoE under one reading, for the bridge's own expert math."""
    return SimpleNamespace(
        storage="fused",
        experts=module,
        gate_up=s.gate_up,
        down=s.down,
        fused_layout=s.layout,
        interleaved=split == "interleaved",
        gate_first=first,
        gate_up_bias=s.biases.get("gate_up_bias"),
        down_bias=s.biases.get("down_bias"),
        clamp_limit=limit,
        up_offset=offset,
    )


def _experts_out(moe, act, hidden, index, weights) -> torch.Tensor:
    from ...bridge.moe import expert_biases, expert_weights, glu

    total = torch.zeros_like(hidden, dtype=torch.float32)
    for slot in range(index.shape[-1]):
        for e in index[:, slot].unique().tolist():
            rows = index[:, slot] == e
            x = hidden[rows].float()
            (wg, wi, wo), (bg, bi, bo) = expert_weights(moe, e), expert_biases(moe, e)
            gate = torch.nn.functional.linear(x, wg.float(), None if bg is None else bg.float())
            up = torch.nn.functional.linear(x, wi.float(), None if bi is None else bi.float())
            out = torch.nn.functional.linear(glu(moe, act, gate, up), wo.float(), None if bo is None else bo.float())
            total[rows] += out * weights[rows, slot, None].float()
    return total


def read_experts(ctx, module, call, hidden, index, weights) -> tuple[Storage, dict[str, Any]] | None:
    """(storage, the spec fields of the first reading that reproduces the experts module) or None. The fields:
    gate_first, and where they differ from the defaults fused_layout, gate_up_split, biases, clamp_limit,
    up_offset; `ctx.found["act"]` is set."""
    from ..shrink import plain_fields

    fields = plain_fields(ctx.config)
    acts = [v for v in fields.values() if isinstance(v, str) and v in ACT2FN] + ["silu", "quick_gelu"]
    replay = _replayed(module, call, hidden, index, weights)
    for s in storages(module, hidden.shape[-1]):
        for act, split, first, (limit_name, limit), offset in product(
            dict.fromkeys(acts), ("halves", "interleaved"), (True, False), _clamp_candidates(fields), (0.0, 1.0)
        ):
            moe = _bound(s, module, split, first, limit, offset)
            fn = ACT2FN[act]
            if not same(_experts_out(moe, fn, hidden, index, weights), call.output.float(), atol=1e-4):
                continue
            if replay is not None and not same(_experts_out(moe, fn, *replay[:3]), replay[3].float(), atol=1e-3):
                continue
            ctx.found["act"] = act
            out: dict[str, Any] = {"gate_first": first}
            if s.layout != "linear":
                out["fused_layout"] = s.layout
            if split != "halves":
                out["gate_up_split"] = split
            out.update(s.biases)
            if limit_name is not None:
                out["clamp_limit"] = limit_name
                _exercise_clamp(ctx, limit_name, moe, hidden)
            if offset:
                out["up_offset"] = offset
            return s, out
    return None


def _replayed(module, call, hidden, index, weights):
    """The experts module on the probed tokens scaled up (x30), so pre-activations pass any clamp a config limit
    sets; None where the module refuses the call."""
    big = hidden * 30
    try:
        with torch.no_grad():
            out = module(big, index, weights)
    except Exception:
        return None
    return (big, index, weights, out) if isinstance(out, torch.Tensor) else None


def _exercise_clamp(ctx, name: str, moe, hidden) -> None:
    """A clamp limit the tiny model's values never reach leaves the clamp unchecked: the draft's test_config sets
    the limit to the probed pre-activations' median magnitude, so conformance sees values on both sides."""
    from ...bridge.moe import expert_biases, expert_weights

    (wg, wi, _), (bg, bi, _) = expert_weights(moe, 0), expert_biases(moe, 0)
    gate = torch.nn.functional.linear(hidden.float(), wg.float(), None if bg is None else bg.float())
    up = torch.nn.functional.linear(hidden.float(), wi.float(), None if bi is None else bi.float())
    limit = float(torch.cat([gate, up]).detach().abs().median())
    value = float(f"{limit:.2g}")
    ctx.test_config[name] = value
    ctx.draft.note(f"test_config: {name} {value} (the tiny model's typical magnitude) so the clamp is exercised")
