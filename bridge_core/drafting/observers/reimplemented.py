"""Attention computed in the model's own code (no call reaches transformers' AttentionInterface): found by value.

For each block of a block list, the attention module is the module under the block holding an output
projection whose output is the module's output, and projections whose outputs, split into heads, give that
projection's input as softmax(q k^T * scale + mask) v. Which projections are q, k and v (separate, or one
fused [q | k | v] or per-head [q k v] projection), the head count, the scale (d_head**-0.5, 1 or 1/d_head),
rotary positions the block receives, and which mask (the one the module is handed, or plain causal) are all
tried and kept only when the recomputation matches the module's own. What matched becomes one synthetic
`AttentionCall` per block, so the attention observers read it as they read a probed call; the spec takes
`block.attn.implementation: reimplement`. Nothing is guessed: a module that no candidate reproduces is
reported with what was tried, and with the candidates the search leaves out that the observation points to
(k/v projections narrower than q: grouped kv heads; a rotary pair not reproduced rotate-half: adjacent-pair
rotary). A match is written with a `# NOTE:` of the search's limits (one unpadded input). An attention that
returns its output bias separately for the block to add (GPT-NeoX Japanese's last layer) is the named gap
`attention output bias returned separately`.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import torch
from torch import nn

from ..draft import DraftContext
from ..probe import AttentionCall, Call, same, tensor_at
from .modules import is_linear

_HEAD_FIELDS = ("num_attention_heads", "n_head", "num_heads", "n_heads", "attention_heads", "decoder_attention_heads")
_MASK_KWARGS = ("attention_mask", "mask", "causal_mask")


def synthesize_attention(ctx: DraftContext) -> str | None:
    """Append one synthetic AttentionCall per block to `ctx.obs.attention`; None when done, else why not."""
    obs, model = ctx.obs, ctx.model
    lists = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.ModuleList) and len(m) > 1]
    lists.sort(key=lambda item: item[0].count("."))
    tried: list[str] = []
    for path, blocks in lists:
        if obs.first(f"{path}.0") is None:
            continue
        found = [_attention_in(ctx, f"{path}.{i}") for i in range(len(blocks))]
        if all(isinstance(f, AttentionCall) for f in found):
            obs.attention.extend(found)  # type: ignore[arg-type]
            ctx.found["reimplement"] = True
            return None
        tried.extend(f"{path}.{i}: {f}" for i, f in enumerate(found) if not isinstance(f, AttentionCall))
    return "; ".join(tried[:2]) if tried else "no block list with attention projections"


LIMITS = (
    "the candidates were found on one unpadded input; grouped kv heads (k/v narrower than q) and adjacent-pair "
    "(interleaved) rotary are not among them"
)


def untried(widths: dict[str, int], width: int, rotary: bool) -> list[str]:
    """Candidates the search leaves out that the observed module points to: projections narrower than the
    attention width by a whole number of heads (grouped kv heads), and a rotary pair the block received that
    rotate-half did not reproduce (adjacent pairs)."""
    missed = []
    narrow = sorted(n for n, w in widths.items() if w < width and width % w == 0)
    if narrow:
        missed.append(f"grouped kv heads were not tried ({narrow} narrower than {width})")
    if rotary:
        missed.append("adjacent-pair (interleaved) rotary was not tried (only rotate-half)")
    return missed


def separate_output_biases(ctx: DraftContext, attn: str) -> None:
    """A gap for every block whose attention module returns one of its own 1-D parameters beside its output:
    an output bias the block adds after the module returns (GPT-NeoX Japanese's `dense_bias`, last layer
    only). hook_attn_out would miss it and the residual would not add up, so the draft says so."""
    obs = ctx.obs
    for i in range(len(ctx.obs.module(ctx.blocks))):
        path = f"{ctx.blocks}.{i}.{attn}"
        call = obs.first(path)
        if call is None or not isinstance(call.output, (tuple, list)):
            continue
        own = [(n, p.detach()) for n, p in obs.module(path).named_parameters(recurse=False) if p.dim() == 1]
        for index, item in enumerate(call.output[1:], start=1):  # the probe keeps detached copies: by value
            name = next((n for n, p in own if isinstance(item, torch.Tensor) and same(item, p)), None)
            if name is not None:
                ctx.draft.gap(
                    "attention output bias returned separately",
                    f"{path} returns its parameter {name} as output {index}; the block adds it to the "
                    "attention output (no spec field binds it into hook_attn_out)",
                )


def _attention_in(ctx: DraftContext, block: str) -> AttentionCall | str:
    """The attention call reproduced inside `block`, or why none was."""
    obs = ctx.obs
    why = "no module under it has an output projection and q/k/v projections"
    for name, module in obs.module(block).named_modules():
        full = f"{block}.{name}" if name else block
        if not name or obs.first(full) is None:
            continue
        linears = [(n, m) for n, m in module.named_modules() if n and is_linear(m)]
        out = tensor_at(obs.first(full).output)
        o = next((n for n, _ in linears if out is not None and same(obs.output(f"{full}.{n}"), out)), None)
        if o is None or len(linears) < 2:
            continue
        found = _reproduce(ctx, block, full, module, o, [n for n, _ in linears if n != o])
        if isinstance(found, AttentionCall):
            return found
        why = f"{full}: {found}"
    return why


def _reproduce(
    ctx: DraftContext, block: str, path: str, module: nn.Module, o: str, others: list[str]
) -> AttentionCall | str:
    obs = ctx.obs
    target = obs.input(f"{path}.{o}")
    if target is None or target.dim() != 3:
        return f"{o} reads no [batch, pos, width] input"
    b, s, width = target.shape
    call = obs.first(path)
    masks = list(_masks(call, b, s, target.dtype))
    rotary = _rotary_pair(call, obs.first(block))
    for heads in _head_counts(ctx, width):
        d = width // heads
        for q, k, v in _splits(obs, path, others, b, s, heads, d):
            for rq, rk in _rotations(q, k, rotary):
                for scale in (d**-0.5, 1.0, 1.0 / d):
                    for mask in masks:
                        attended = _attend(rq, rk, v, scale, mask)
                        if same(attended.transpose(1, 2).reshape(b, s, width), target, atol=1e-4):
                            kwargs = {"scaling": scale}
                            output = target.reshape(b, s, heads, d)
                            return AttentionCall(module, rq, rk, v, kwargs, output, mask)
    widths = {n: t.shape[-1] for n in others if (t := obs.output(f"{path}.{n}")) is not None and t.dim() == 3}
    missed = untried(widths, width, rotary is not None)
    why = f"no q/k/v split of {others}, head count, scale or mask reproduces what {o} reads"
    return why + (f" ({'; '.join(missed)})" if missed else "")


def _head_counts(ctx: DraftContext, width: int) -> list[int]:
    fields = [getattr(ctx.config, f, None) for f in _HEAD_FIELDS]
    counts = [h for h in fields if isinstance(h, int) and not isinstance(h, bool) and h > 0 and width % h == 0]
    return list(dict.fromkeys(counts))


def _splits(obs, path: str, others: list[str], b: int, s: int, h: int, d: int) -> Iterator[tuple]:
    """(q, k, v) as [b, h, s, d] from three projections of width h*d, or one fused of width 3*h*d."""
    outs = {n: obs.output(f"{path}.{n}") for n in others}
    outs = {n: t for n, t in outs.items() if t is not None and t.dim() == 3 and t.shape[:2] == (b, s)}

    def heads(t: torch.Tensor) -> torch.Tensor:
        return t.reshape(b, s, h, d).transpose(1, 2)

    wide = [n for n, t in outs.items() if t.shape[-1] == h * d]
    for trio in itertools.permutations(wide, 3):
        yield tuple(heads(outs[n]) for n in trio)
    for t in (t for t in outs.values() if t.shape[-1] == 3 * h * d):
        yield tuple(heads(part) for part in t.split(h * d, dim=-1))  # [q | k | v]
        per_head = t.reshape(b, s, h, 3, d)  # [q k v] per head
        yield tuple(per_head[..., i, :].transpose(1, 2) for i in range(3))


def _masks(call: Call, b: int, s: int, dtype: torch.dtype) -> Iterator[torch.Tensor | None]:
    """The mask the module is handed (as it is), then plain causal: the module masks future keys itself."""
    given = next((call.kwargs[k] for k in _MASK_KWARGS if isinstance(call.kwargs.get(k), torch.Tensor)), None)
    if given is not None and given.dim() == 4:
        yield given
    yield torch.full((s, s), torch.finfo(dtype).min, dtype=dtype).triu(1)[None, None]


def _rotary_pair(call: Call, block_call: Call | None) -> tuple[torch.Tensor, torch.Tensor] | None:
    for source in (call, block_call):
        pair = source.kwargs.get("position_embeddings") if source is not None else None
        if isinstance(pair, tuple) and len(pair) == 2 and all(isinstance(t, torch.Tensor) for t in pair):
            return pair
    return None


def _rotations(q: torch.Tensor, k: torch.Tensor, pair) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """q and k as they are, then rotated rotate-half over the rotary table's width (GPT-NeoX Japanese)."""
    yield q, k
    if pair is None:
        return
    cos, sin = (t.unsqueeze(1).to(q.dtype) for t in pair)
    r = cos.shape[-1]
    if r > q.shape[-1] or cos.shape[-2] != q.shape[-2]:
        return

    def turn(x: torch.Tensor) -> torch.Tensor:
        part, rest = x[..., :r], x[..., r:]
        half = torch.cat((-part[..., r // 2 :], part[..., : r // 2]), dim=-1)
        return torch.cat((part * cos + half * sin, rest), dim=-1)

    yield turn(q), turn(k)


def _attend(q, k, v, scale: float, mask: torch.Tensor | None) -> torch.Tensor:
    scores = q @ k.transpose(-1, -2) * scale
    if mask is not None:
        scores = scores + mask[..., : scores.shape[-1]]
    return torch.softmax(scores.float(), dim=-1).to(v.dtype) @ v
