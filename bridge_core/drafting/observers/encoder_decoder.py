"""Observers of an encoder-decoder model's stacks, from the same observed forward as decoder-only drafting.

Each stack (the ModuleList of blocks holding attention calls) is drafted with its own `DraftContext`: the
decoder's is the one whose blocks attend twice (self, then over the encoder output: cross attention). A
stack's token embedding is the embedding under its root called with that stack's ids; its position table is
another table there whose output joins the token embedding (learned, or sinusoidal when row 0 is sin 0 | cos
0); an embedding norm reads their sum (`norm_after_pos`) or the token embedding alone. Norm roles and the
block kind (pre-norm or post-norm) come from where each norm's input and output sit between the block input,
the three sublayers' outputs and the block output.
"""

from __future__ import annotations

import dataclasses
import inspect
import re

import torch
from torch import nn

from ..draft import DraftContext
from ..errors import DraftingError
from ..probe import same, tensor_at
from ..shrink import plain_fields
from .modules import eps_of, is_linear, is_norm, norm_kind, under


def stacks(ctx: DraftContext) -> tuple[str, str]:
    """(encoder blocks, decoder blocks): the two ModuleLists holding attention calls; the decoder's block 0
    holds two attention modules (self and cross)."""
    obs = ctx.obs
    attended = [obs.name(c.module) for c in obs.attention]
    if not attended:
        raise DraftingError(
            "observe",
            "no call reached transformers' AttentionInterface (attention outside it)",
            _outside_gaps(ctx, f"{ctx.cls.__name__} computes its encoder and decoder attention in its own code"),
        )
    lists = [n for n, m in ctx.model.named_modules() if isinstance(m, nn.ModuleList) and len(m) > 0]
    holding = [n for n in lists if any(under(a, f"{n}.0") for a in attended)]
    holding = [n for n in holding if not any(o != n and under(n, o) for o in holding)]  # outermost (T5's layer)
    if len(holding) == 1:
        others = [n for n in lists if n not in holding and not under(n, holding[0]) and not under(holding[0], n)]
        raise DraftingError(
            "observe",
            f"only {holding[0]} reaches transformers' AttentionInterface; the attention of {others or 'another stack'}"
            " is outside it (local / block-sparse attention computed in the module)",
            _outside_gaps(ctx, f"{others[0] if others else 'another stack'} computes its attention in its own code"),
        )
    if len(holding) != 2:
        raise DraftingError("observe", f"expected an encoder and a decoder block list, found {holding}")
    per_block = {n: len({a for a in attended if under(a, f"{n}.0")}) for n in holding}
    decoder = next((n for n in holding if per_block[n] == 2), None)
    encoder = next((n for n in holding if per_block[n] == 1), None)
    if decoder is None or encoder is None:
        raise DraftingError("observe", f"attention modules per block {per_block}: no self + cross decoder block")
    return encoder, decoder


_LOCAL_FIELD = re.compile(r"attention_window|local_radius|block_size|global_tokens|attention_type")
"""Config fields of attention restricted to a window, blocks or global tokens (LED, BigBird-Pegasus, PEGASUS-X,
LongT5): such an encoder attends locally, which the spec's full attention does not state."""


def _outside_gaps(ctx: DraftContext, where: str) -> list[str]:
    """The missing vocabulary when attention is computed outside AttentionInterface in an encoder-decoder: the
    reimplement path (self attention recomputed from the projections) takes no cross attention, and a config
    of windowed / block / global-token attention names attention the spec cannot state at all."""
    gaps = [
        f"cross attention on the reimplement path: {where}; `block.attn.implementation: reimplement` "
        "is refused in an encoder-decoder model: it takes no cross attention (bridge/reimplement.py)"
    ]
    fields = plain_fields(ctx.config)
    local = {k: v for k, v in fields.items() if _LOCAL_FIELD.search(k) and v not in (None, 0, False, [], "")}
    if local:
        seen = ", ".join(f"{k}={v}" for k, v in sorted(local.items())[:3])
        gaps.append(f"local (windowed/global-token) attention: config fields {seen}")
    return gaps


def stack_context(ctx: DraftContext, blocks: str, attention=None) -> DraftContext:
    """A context for one stack (or, with `attention`, for the cross-attention calls only)."""
    from ..draft import Draft

    obs = ctx.obs if attention is None else dataclasses.replace(ctx.obs, attention=attention)
    sub = DraftContext(ctx.cls, ctx.config, obs, ctx.test_config, Draft(notes=ctx.draft.notes))
    sub.draft.gaps = ctx.draft.gaps  # one list of gaps and notes for the whole draft
    sub.blocks, sub.block = blocks, f"{blocks}.0"
    sub.draft.fields["blocks"] = blocks
    return sub


def cross_calls(ctx: DraftContext) -> list:
    """Attention calls whose module is a decoder block's second attention module (cross attention)."""
    obs, out = ctx.obs, []
    for i in range(len(obs.module(ctx.blocks))):
        here = [obs.name(c.module) for c in obs.attention]
        names = list(dict.fromkeys(n for n in here if under(n, f"{ctx.blocks}.{i}")))
        out += [c for c in obs.attention if len(names) > 1 and obs.name(c.module) == names[1]]
    return out


def mlp_path(ctx: DraftContext, attention: list[str]) -> str:
    """The smallest module of block 0 holding every projection outside the attention modules."""
    block = ctx.obs.module(ctx.block)
    names = [
        n for n, m in block.named_modules() if is_linear(m) and not any(under(f"{ctx.block}.{n}", a) for a in attention)
    ]
    if not names:
        raise DraftingError("observe", f"{ctx.block} has no projection outside attention (no MLP)")
    parts = [n.split(".")[:-1] for n in names]
    common = []
    for level in zip(*parts, strict=False):
        if len(set(level)) != 1:
            break
        common.append(level[0])
    return ".".join([ctx.block, *common])


def _sum(a: torch.Tensor | None, b: torch.Tensor | None) -> torch.Tensor | None:
    return None if a is None or b is None or a.shape != b.shape else a + b


def observe_cross_block(ctx: DraftContext, cross: str) -> dict:
    """Norm roles and block kind of a decoder block with cross attention (module path `cross`); returns the
    cross-attention norm's spec (or None) and writes ln1 / ln2 / kind into the block spec."""
    obs, block, attn, mlp = ctx.obs, ctx.block, ctx.found["attn"], ctx.found["mlp"]
    spec = ctx.draft.fields["block"]
    x, out_raw = obs.input(block), obs.first(block).output
    out = tensor_at(out_raw)
    spec["output_index"] = 0 if isinstance(out_raw, tuple) else None
    mlp_spec = spec["mlp"]
    m_in = obs.input(mlp if mlp != block else f"{block}.{mlp_spec['in']}")
    m_out = obs.output(mlp if mlp != block else f"{block}.{mlp_spec['out']}")
    s_in, s_out = obs.input(attn), obs.output(attn)
    c_in, c_out = obs.input(cross), obs.output(cross)
    inside = [attn, cross] + ([mlp] if mlp != block else [])
    norms = [f"{block}.{n}" for n, m in obs.module(block).named_modules() if is_norm(m)]
    norms = [n for n in norms if not any(under(n, p) for p in inside)]
    roles: dict[str, str] = {}
    if any(same(obs.output(n), s_in) for n in norms):  # pre-norm: norms feed the sublayers
        kind = "sequential"
        for n in norms:
            for role, target in (("ln1", s_in), ("cross", c_in), ("ln2", m_in)):
                if same(obs.output(n), target):
                    roles.setdefault(role, n)
        mid = _sum(x, s_out)
        mid_cross = _sum(mid, c_out)
        expected = _sum(mid_cross, m_out)
        checks = [("cross", mid), ("ln2", mid_cross)]
    elif same(s_in, x):  # post-norm: norms read the sums after each residual add
        kind = "post_norm"
        prev = x
        for role, branch in (("ln1", s_out), ("cross", c_out), ("ln2", m_out)):
            found = next((n for n in norms if same(obs.input(n), _sum(prev, branch))), None)
            if found is None:
                break
            roles[role] = found
            prev = obs.output(found)
        expected = obs.output(roles["ln2"]) if "ln2" in roles else None
        checks = []
    else:
        raise DraftingError("observe", f"{block}: self attention reads neither a norm's output nor the block input")
    for role, want in checks:
        if role in roles and not same(obs.input(roles[role]), want):
            ctx.draft.gap("residual", f"{roles[role]} does not read the residual sum before it")
    if expected is None or not same(expected, out):
        ctx.draft.gap("residual", f"the decoder block output is not the {kind} sum of its three sublayers")
    stray = [n for n in norms if n not in roles.values()]
    if stray:
        ctx.draft.gap("norm placement", f"norms {stray} feed no sublayer the vocabulary describes")
    spec["kind"] = kind
    ctx.found["block_kind"] = kind
    for role in ("ln1", "ln2"):
        if role in roles:
            spec[role] = norm_spec(ctx, roles[role])
    return norm_spec(ctx, roles["cross"]) if "cross" in roles else None


def norm_spec(ctx: DraftContext, full: str) -> dict:
    obs = ctx.obs
    module = obs.module(full)
    kind = norm_kind(module, obs.input(full), obs.output(full))
    if kind is None:
        ctx.draft.gap("norm kind", f"{full} ({type(module).__name__}) matches no registered norm")
    elif eps_of(module) is None:
        ctx.draft.gap("norm without eps attribute", f"{full} ({type(module).__name__}) keeps no eps")
    return {"path": ctx.relative(full, ctx.block) if under(full, ctx.block) else full, "kind": kind or "rmsnorm"}


def _root(blocks: str) -> str:
    return blocks.rsplit(".", 1)[0] if "." in blocks else ""


def observe_stack_embedding(ctx: DraftContext, ids: torch.Tensor) -> tuple[dict, dict | None]:
    """The stack's token embedding, its position table, embedding norm and scale: (embed spec, pos spec)."""
    obs, root = ctx.obs, _root(ctx.blocks)
    tables = [
        (n, m)
        for n, m in ctx.model.named_modules(remove_duplicate=False)
        if isinstance(m, nn.Embedding) and under(n, root) and not under(n, ctx.blocks)
    ]
    token = next((n for n, m in tables if any(_called_with(c, ids) for c in _calls(obs, m))), None)
    if token is None:
        raise DraftingError("observe", f"no embedding under {root or 'the model'} is called with the stack's ids")
    raw = obs.module(token).weight.detach()[ids]
    tok_out = next(tensor_at(c.output) for c in _calls(obs, obs.module(token)) if _called_with(c, ids))
    x0 = obs.input(ctx.block)
    embed: dict = {"path": token}
    pos, pos_out = None, None
    for name, module in tables:
        calls = _calls(obs, module)
        out = tensor_at(calls[0].output) if calls else None
        if out is None or module is obs.module(token):
            continue
        table = module.weight.detach()
        offset = _offset(table, out)
        pos = {"kind": "sinusoidal" if _sinusoidal_row(table[offset]) else "learned", "path": name}
        if offset:
            pos["offset"] = offset
        pos_out = out
        ctx.found["n_ctx_rows"] = table.shape[0] - offset
        break
    if pos is None:
        pos, pos_out = _position_module(ctx, root, x0, token)
    tok_part = _embed_norm(ctx, embed, x0, pos_out)
    scale, at_module = _ratio(raw, tok_part), _ratio(raw, tok_out)
    if scale is None:
        ctx.draft.gap("embedding", f"{token}'s rows, scaled, are not what the first block of {ctx.blocks} reads")
    elif abs(scale - 1.0) > 1e-6:
        if at_module is not None and abs(at_module - 1.0) < 1e-6:
            embed["scale_at"] = "forward"
        ctx.found["embed_scale"] = scale
    ctx.found["embed"] = token
    return embed, pos


def _position_module(ctx: DraftContext, root: str, x0: torch.Tensor, token: str) -> tuple[dict | None, object]:
    """A module outside the blocks, not an embedding table, whose output has the shape of the positions the
    first block reads (M2M100's table computed from the token ids). Called with `input_ids` and with its table
    in a `weights` buffer whose rows from some offset on are its output, it is `sinusoidal_from_ids`;
    otherwise a gap."""
    obs = ctx.obs
    for name, module in ctx.model.named_modules():
        if not name or not under(name, root) or under(name, ctx.blocks) or under(name, token) or is_norm(module):
            continue
        out = obs.output(name)
        if not (
            isinstance(out, torch.Tensor)
            and out.shape[-2:] == x0.shape[-2:]
            and "posit" in type(module).__name__.lower()
        ):
            continue
        table = getattr(module, "weights", None)
        # counted from the token ids (M2M100), not from position ids (XGLM's module: no padding awareness)
        reads_ids = next(iter(inspect.signature(module.forward).parameters), None) == "input_ids"
        if reads_ids and isinstance(table, torch.Tensor) and table.dim() == 2 and table.shape[-1] == out.shape[-1]:
            offset = _offset(table.detach(), out)
            rows = out.reshape(-1, *out.shape[-2:])[0]
            end = offset + rows.shape[0]
            if offset and end <= table.shape[0] and same(table[offset:end], rows):
                ctx.found["n_ctx_rows"] = table.shape[0] - offset
                return {"kind": "sinusoidal_from_ids", "path": name, "offset": offset}, out
        ctx.draft.gap("position module", f"{name} ({type(module).__name__}) adds positions but is no embedding table")
        break
    return None, None


def _embed_norm(ctx: DraftContext, embed: dict, x0: torch.Tensor, pos: torch.Tensor | None) -> torch.Tensor:
    """A norm outside the blocks of this stack: on embeddings + positions (BART: `norm_after_pos`), on the
    token embedding with positions added after it (BlenderbotSmall's decoder), or with no positions (BLOOM).
    Returns the token embedding's contribution as the first block reads it (before any norm)."""
    obs, root = ctx.obs, _root(ctx.blocks)
    pos = None if pos is None else pos.reshape(-1, *x0.shape[-2:])
    for name, module in ctx.model.named_modules():
        if not is_norm(module) or not under(name, root) or under(name, ctx.blocks) or obs.output(name) is None:
            continue
        nin, nout = obs.input(name), obs.output(name)
        spec = {"path": name, "kind": norm_kind(module, nin, nout) or "layernorm"}
        if same(nout, x0):
            embed["norm"] = spec
            if pos is not None:
                embed["norm_after_pos"] = True
            ctx.found["embed_norm"] = name
            return nin - pos if pos is not None else nin
        if pos is not None and nout.shape == x0.shape and same(nout + pos, x0):
            embed["norm"] = spec  # norm_after_pos stays false: positions join the norm's output
            ctx.found["embed_norm"] = name
            return nin
    return x0 - pos if pos is not None else x0


def _calls(obs, module: nn.Module) -> list:
    """The calls the probe saw of `module`, under whichever of its names it was hooked."""
    return obs.calls.get(obs.name(module), [])


def _called_with(call, ids: torch.Tensor) -> bool:
    first = call.args[0] if call.args else call.kwargs.get("input_ids")
    return isinstance(first, torch.Tensor) and first.shape == ids.shape and torch.equal(first, ids)


def _ratio(a: torch.Tensor, b: torch.Tensor | None) -> float | None:
    if b is None or a.shape != b.shape:
        return None
    s = float((a * b).sum() / (a * a).sum())
    return s if same(a * s, b) else None


def _offset(table: torch.Tensor, out: torch.Tensor) -> int:
    row = out.reshape(-1, out.shape[-1])[0]
    return next((i for i in range(min(8, table.shape[0])) if same(table[i], row)), 0)


def _sinusoidal_row(row: torch.Tensor) -> bool:
    """Position 0 of a sinusoidal table: sin(0) = 0 in one half, cos(0) = 1 in the other."""
    half = row.shape[-1] // 2
    zeros, ones = row[:half].abs().max(), (row[half:] - 1).abs().max()
    return bool(zeros < 1e-6 and ones < 1e-6)


def observe_stack_final(ctx: DraftContext, stack_out: torch.Tensor | None) -> dict | None:
    """The stack's final norm: a norm under its root, outside the blocks, reading the last block's output."""
    obs, root = ctx.obs, _root(ctx.blocks)
    last = tensor_at(obs.first(f"{ctx.blocks}.{len(obs.module(ctx.blocks)) - 1}").output)
    for name, module in ctx.model.named_modules():
        outside = is_norm(module) and under(name, root) and not under(name, ctx.blocks)
        if outside and same(obs.input(name), last) and (stack_out is None or same(obs.output(name), stack_out)):
            return {"path": name, "kind": norm_kind(module, obs.input(name), obs.output(name)) or "layernorm"}
    return None


def block_param(module: nn.Module, call, test) -> str | None:
    """The name of the forward parameter of `module` whose observed value passes `test` (positional or keyword)."""
    params = [p for p in inspect.signature(module.forward).parameters if p not in ("self", "args", "kwargs")]
    values = dict(zip(params, call.args, strict=False))
    values.update(call.kwargs)
    return next((k for k, v in values.items() if isinstance(v, torch.Tensor) and test(v)), None)


def mask_param(module: nn.Module) -> str | None:
    """The first forward parameter of `module` named as a mask (read from the signature: the tiny forward
    passes no padding mask to observe)."""
    params = inspect.signature(module.forward).parameters
    return next((p for p in params if "mask" in p and "encoder" not in p and "cross" not in p), None)
