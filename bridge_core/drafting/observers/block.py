"""Observers of one block's data flow: which norm feeds which sublayer, where the residual is added
(block kind sequential / parallel / post_norm), and the MLP's projections and activation."""

from __future__ import annotations

import torch
from transformers.activations import ACT2FN

from ..draft import DraftContext
from ..probe import same, tensor_at
from .modules import eps_of, is_linear, is_norm, kind_without_eps, layout, norm_kind, under
from .moe import observe_moe, observe_moe_mix


def _sum(*tensors: torch.Tensor | None) -> torch.Tensor | None:
    if any(t is None for t in tensors):
        return None
    return sum(tensors[1:], tensors[0])


def observe_mlp(ctx: DraftContext) -> None:
    """The MLP: a child of the block (or the block itself) holding the projections outside attention."""
    obs, block = ctx.obs, ctx.block
    attn = ctx.found["attn"]
    children = [
        (f"{block}.{n}", m)
        for n, m in obs.module(block).named_children()
        if not under(f"{block}.{n}", attn) and not is_norm(m) and _has_projections(m)
    ]
    children = [(n, m) for n, m in children if not _never_called(ctx, n)]
    if children and all(is_linear(m) for _, m in children):
        children = []  # the projections sit in the block itself (OPT)
    path = children[0][0] if len(children) == 1 else block
    if len(children) > 1:
        ctx.draft.gap("block layout", f"several sublayers besides attention: {[n for n, _ in children]}")
    mlp = obs.module(path)
    spec: dict = {"path": ctx.relative(path, block) if path != block else "."}
    ctx.found["mlp"] = path
    if ctx.found.get("moe_layers"):
        observe_moe_mix(ctx, spec, _wire)
        ctx.draft.fields.setdefault("block", {})["mlp"] = spec
        return
    if any("expert" in n.lower() for n, _ in mlp.named_modules()):
        shared = observe_moe(ctx, path, spec)
        if spec.get("kind") == "moe":
            if shared is not None:  # the MLP spec's in/gate/out name the shared expert's projections
                act, d_mlp = ctx.found.get("act"), ctx.found["d_mlp"]
                _wire(ctx, shared["path"], spec)
                if spec["kind"] != "gated":
                    ctx.draft.gap("MoE shared expert", f"{shared['path']} is not a gated MLP")
                ctx.found["act"], ctx.found["d_mlp"], spec["kind"] = act or ctx.found["act"], d_mlp, "moe"
                spec.pop("flat_tokens", None)
            ctx.draft.fields.setdefault("block", {})["mlp"] = spec
            return
    _wire(ctx, path, spec)
    ctx.draft.fields.setdefault("block", {})["mlp"] = spec


def _never_called(ctx: DraftContext, path: str) -> bool:
    """A module with parameters that the observed forward never called (TrOCR's cross attention and its norm
    in the causal-LM forward, which hands no encoder states): noted and left out of the roles. Its parameters
    change nothing the bridge or HF compute, so no check can miss them."""
    module = ctx.obs.module(path)
    if ctx.obs.first(path) is not None or any(ctx.obs.first(f"{path}.{n}") for n, _ in module.named_modules() if n):
        return False
    if next(module.parameters(), None) is None:
        return False
    ctx.draft.note(
        f"{ctx.relative(path, ctx.block)} ({type(module).__name__}) is never called in the observed forward "
        "(TrOCR's cross attention: the causal-LM forward hands no encoder states): left out of the block's roles; "
        "its parameters change nothing the forward computes"
    )
    return True


def _has_projections(module: torch.nn.Module) -> bool:
    """Linear layers, or experts stored as 3-D parameters (a MoE whose router is a bare weight)."""
    return any(is_linear(x) for x in module.modules()) or any(p.dim() == 3 for p in module.parameters())


def _wire(ctx: DraftContext, path: str, spec: dict) -> None:
    """The projections of the MLP at `path` (or the block itself): in, gate, out and the activation."""
    obs, block = ctx.obs, ctx.block
    attention = ctx.found.get("attn_paths") or [ctx.found["attn"]]  # self and cross attention (encoder-decoders)
    mlp = obs.module(path)
    linears = [
        (n, m)
        for n, m in mlp.named_modules()
        if is_linear(m) and not any(under(f"{path}.{n}" if n else path, a) for a in attention)
    ]
    full = {n: f"{path}.{n}" for n, _ in linears}
    out = obs.output(path) if path != block else None
    down = next((n for n in full if out is not None and same(obs.output(full[n]), out)), None)
    if down is None and linears:
        down = linears[-1][0]
        ctx.draft.note(f"block.mlp.out: '{down}' (the last projection) guessed")
    rest = [n for n, _ in linears if n != down]
    down_in = obs.input(full[down]) if down else None
    act, kind, proj = _activation(ctx, rest, full, down_in, path)
    spec["kind"] = kind
    if proj.get("act_module"):  # the MLP's own activation module (learned parameters)
        spec["act_module"] = proj["act_module"]
    spec["layout"] = layout(mlp.get_submodule(down)) if down else "linear"
    fused = proj.get("gate_up")
    if fused is not None:  # gate and up in one module (Phi-3): HF chunks its output in two
        spec["gate_up"] = {"path": fused, "order": proj["order"]}
    else:
        spec["in"] = proj.get("in", "FILL_ME")
        if kind == "gated":
            spec["gate"] = proj.get("gate", "FILL_ME")
    spec["out"] = down or "FILL_ME"
    out_norm = ctx.found.pop("out_norm", None)
    if out_norm is not None:
        spec["out_norm"] = out_norm
    first = fused or spec["in"]  # the projection that reads the MLP's input
    width = obs.output(full[first]).shape[-1] if first in full else None
    ctx.found["d_mlp"] = width // 2 if fused is not None and width is not None else width
    ctx.found["act"] = act
    if mlp is block or path == block:
        spec["flat_tokens"] = bool(obs.input(full[first]).dim() == 2) if first in full else False


def _activation(ctx, rest, full, down_in, path=None):
    """Which activation and wiring reproduce the down projection's input: act(in) or act(gate) * in."""
    obs = ctx.obs
    from ..shrink import plain_fields

    declared = [v for v in plain_fields(ctx.config).values() if isinstance(v, str) and v in ACT2FN]
    names = [*declared, "silu", "gelu", "gelu_new", "gelu_pytorch_tanh", "relu", "gelu_fast", "quick_gelu", "relu2"]
    from ...registry import default_registry

    known = default_registry().plugins.kinds.activations
    names = [n for n in dict.fromkeys(names) if n in known]  # an unregistered name could not bind
    outs = {n: obs.output(full[n]) for n in rest}
    for act in names:
        fn = ACT2FN[act]
        for a in rest:
            if down_in is not None and outs[a] is not None and same(fn(outs[a]), down_in, atol=1e-6):
                return act, "plain", {"in": a}
            for g in rest:
                pair = g != a and down_in is not None and outs[a] is not None and outs[g] is not None
                if pair and outs[a].shape == outs[g].shape and same(fn(outs[g]) * outs[a], down_in, atol=1e-6):
                    return act, "gated", {"in": a, "gate": g}
        for a in rest:
            out = outs[a]
            if down_in is not None and out is not None and out.shape[-1] == 2 * down_in.shape[-1]:
                x, y = out.chunk(2, dim=-1)
                if same(fn(x) * y, down_in, atol=1e-4):  # [gate | up] (Phi-3, GLM)
                    return act, "gated", {"gate_up": a, "order": "gate_up"}
                if same(fn(y) * x, down_in, atol=1e-4):
                    return act, "gated", {"gate_up": a, "order": "up_gate"}
    fields = plain_fields(ctx.config)
    unknown = [v for k, v in fields.items() if "act" in k and isinstance(v, str) and v not in known]
    own = _own_activation(ctx, path, rest, full, down_in) if unknown and path else None
    if own is not None:
        ctx.draft.note(
            f"block.mlp.act_module: the MLP's own '{own[1]['act_module']}' module (the config's activation "
            f"{unknown[0]!r} is no registered kind; it holds learned parameters)"
        )
        return None, *own
    if unknown:
        ctx.draft.gap("activation kind", f"the config's activation {unknown[0]!r} is no registered activation")
    else:
        normed = _mlp_sub_norm(ctx, down_in)
        if normed is not None:  # the wiring is read at the sub-norm's input instead
            return _activation(ctx, rest, full, normed, path)
        ctx.draft.gap("MLP wiring", f"no known activation of {rest} reproduces the output projection's input")
    return None, "plain", {"in": rest[0]} if rest else {}


def _own_activation(ctx: DraftContext, mlp: str, rest: list[str], full: dict[str, str], down_in: torch.Tensor | None):
    """The MLP's own activation module (Apertus's xIELU, learned parameters): (kind, projections with
    `act_module`) where its observed call turns a projection's output into the output projection's input,
    alone or times another projection's; None otherwise."""
    obs = ctx.obs
    if down_in is None or not rest:
        return None
    outs = {n: obs.output(full[n]) for n in rest}
    for name, module in obs.module(mlp).named_children():
        seen_in, seen_out = obs.input(f"{mlp}.{name}"), obs.output(f"{mlp}.{name}")
        if is_linear(module) or is_norm(module) or seen_in is None or seen_out is None:
            continue
        for a in rest:
            if not same(seen_in, outs[a]):
                continue
            if same(seen_out, down_in, atol=1e-6):
                return "plain", {"in": a, "act_module": name}
            for g in rest:  # the module read the gate: act(gate) * in
                if g != a and outs[g] is not None and same(seen_out * outs[g], down_in, atol=1e-6):
                    return "gated", {"in": g, "gate": a, "act_module": name}
    return None


def _mlp_sub_norm(ctx: DraftContext, down_in: torch.Tensor | None) -> torch.Tensor | None:
    """A norm inside the MLP whose output is the down projection's input (BitNet's ffn_sub_norm), kept for
    `block.mlp.out_norm`: its input, or None."""
    obs = ctx.obs
    mlp = ctx.found.get("mlp")
    if down_in is None or not mlp:
        return None
    for name, module in obs.module(mlp).named_modules():
        if name and is_norm(module) and same(obs.output(f"{mlp}.{name}"), down_in):
            seen = obs.input(f"{mlp}.{name}")
            kind = norm_kind(module, seen, down_in)
            if kind is None:
                ctx.draft.gap("norm kind", f"{mlp}.{name} (before the MLP's output projection) is no registered kind")
            else:  # block.mlp.out_norm, written by _wire
                ctx.found["out_norm"] = {"path": name, "kind": kind}
            return seen
    return None


def observe_norms_and_kind(ctx: DraftContext) -> None:
    """Assign each of the block's norms a role by data flow and tell the block kind from where the residual
    is added."""
    obs, block, attn, mlp = ctx.obs, ctx.block, ctx.found["attn"], ctx.found["mlp"]
    spec = ctx.draft.fields.setdefault("block", {})
    call = obs.first(block)
    x = obs.input(block)
    out_raw = call.output
    out = tensor_at(out_raw)
    spec["output_index"] = 0 if isinstance(out_raw, (tuple, list)) else None
    attn_call = obs.first(attn)
    attn_in = obs.input(attn)
    attn_out = tensor_at(attn_call.output)
    ctx.found["attn_output_index"] = 0 if isinstance(attn_call.output, (tuple, list)) else None
    mlp_in = obs.input(mlp) if mlp != block else obs.input(_mlp_in_proj(ctx))
    mlp_out = obs.output(mlp) if mlp != block else obs.output(_mlp_out_proj(ctx))
    norms = [
        (n, m)
        for n, m in obs.module(block).named_modules()
        if is_norm(m)
        and not under(f"{block}.{n}", attn)
        and (mlp == block or not under(f"{block}.{n}", mlp))
        and not _never_called(ctx, f"{block}.{n}")
    ]
    roles: dict[str, str] = {}
    for name, _ in norms:
        full = f"{block}.{name}"
        nin, nout = obs.input(full), obs.output(full)
        if same(nout, attn_in):
            roles.setdefault("ln1", name)
        if same(nout, _flat_like(mlp_in, nout)):
            roles.setdefault("ln2", name)
        if same(nin, attn_out):
            roles.setdefault("ln1_post", name)
        if same(nin, _flat_like(mlp_out, nin)):
            roles.setdefault("ln2_post", name)
    kind = "sequential"
    a_contrib = obs.output(f"{block}.{roles['ln1_post']}") if "ln1_post" in roles else attn_out
    if ctx.found.get("residual_inside"):
        a_contrib = obs.output(ctx.found["o"])
    mid = _sum(x, a_contrib)
    if "ln1" in roles and roles.get("ln1") == roles.get("ln2"):
        del roles["ln2"]  # one shared norm: a parallel block with ln1 and no ln2 (GPT-J, Phi)
        kind = "parallel"
    elif "ln2" in roles and same(_flat_like(obs.input(f"{block}.{roles['ln2']}"), x), x):
        kind = "parallel"
    elif "ln1" not in roles and same(attn_in, x):
        for name, _ in norms:  # post-norm: norms read the sums after each residual add
            full = f"{block}.{name}"
            if same(obs.input(full), mid):
                roles["ln1"] = name
            elif same(obs.input(full), _sum(obs.output(f"{block}.{roles.get('ln1', '')}"), mlp_out)):
                roles["ln2"] = name
        if "ln1" in roles:
            kind = "post_norm"
    elif "ln2" in roles and not same(_flat_like(obs.input(f"{block}.{roles['ln2']}"), mid), mid):
        _residual_gap(ctx, _flat_like(obs.input(f"{block}.{roles['ln2']}"), x), x, a_contrib)
        if "residual_multiplier" in ctx.found and a_contrib is not None:
            mid = _sum(x, a_contrib * ctx.found["residual_multiplier"])
    # norms only on the sublayer outputs (OLMo 2) need nothing more: ln1_post / ln2_post without ln1 / ln2
    placed = set(roles.values())
    stray = [n for n, _ in norms if n not in placed]
    if stray:
        ctx.draft.gap("norm placement", f"norms {stray} feed no sublayer the vocabulary describes")
    spec["kind"] = kind
    ctx.found["block_kind"] = kind
    for role in ("ln1", "ln2", "ln1_post", "ln2_post"):
        if role in roles:
            full = f"{block}.{roles[role]}"
            module, nin, nout = obs.module(full), obs.input(full), obs.output(full)
            spec[role] = {"path": roles[role], "kind": norm_kind(module, nin, nout)}
            if spec[role]["kind"] is None and eps_of(module) is None and kind_without_eps(module, nin, nout):
                spec[role]["kind"] = kind_without_eps(module, nin, nout)
                ctx.draft.gap("norm without eps attribute", f"{full} ({type(module).__name__}) keeps no eps")
            if spec[role]["kind"] is None:
                ctx.draft.gap("norm kind", f"{full} ({type(module).__name__}) matches no registered norm")
                spec[role]["kind"] = "rmsnorm"
    _check_output(ctx, kind, x, mid, out, mlp_out, roles)


def _residual_gap(ctx: DraftContext, seen: torch.Tensor, x: torch.Tensor, branch: torch.Tensor | None) -> None:
    """Name what the MLP's norm reads when it is not x + attention: x + s * attention with s a config field."""
    if branch is not None and seen is not None and seen.shape == x.shape == branch.shape:
        s = float(((seen - x) * branch).sum() / (branch * branch).sum())
        if same(x + s * branch, seen):
            name = ctx.attr(s, keyword=("mult", "scale"))
            if name is None:
                ctx.draft.gap("residual multiplier", f"sublayer outputs scaled by {s:.4g}, no config field holds it")
            else:  # Granite: x + residual_multiplier * sublayer(x)
                ctx.draft.fields.setdefault("config", {})["residual_multiplier"] = name
                ctx.found["residual_multiplier"] = s
            return
        for name, param in ctx.obs.module(ctx.block).named_parameters(recurse=False):  # Doge: w * x + attention
            if param.shape == x.shape[-1:] and same(x * param.detach() + branch, seen):
                ctx.draft.gap("learned residual scale", f"{ctx.block}.{name} multiplies the residual before the add")
                return
    ctx.draft.gap("residual", "the MLP's norm reads neither the block input nor input + attention output")


def _check_output(ctx, kind, x, mid, out, mlp_out, roles) -> None:
    obs, block = ctx.obs, ctx.block
    m_contrib = obs.output(f"{block}.{roles['ln2_post']}") if "ln2_post" in roles else mlp_out
    m_contrib = _flat_like(m_contrib, out)
    if "residual_multiplier" in ctx.found and m_contrib is not None:
        m_contrib = m_contrib * ctx.found["residual_multiplier"]
    if kind == "sequential" or kind == "parallel":
        expected = _sum(mid, m_contrib)
    else:
        expected = obs.output(f"{block}.{roles['ln2']}") if "ln2" in roles else None
    if expected is not None and not same(expected, out):
        ctx.draft.gap("residual", f"the block output is not the {kind} sum of its sublayers (multipliers? gates?)")


def _flat_like(t: torch.Tensor | None, like: torch.Tensor | None) -> torch.Tensor | None:
    if t is None or like is None or t.shape == like.shape or t.numel() != like.numel():
        return t
    return t.reshape(like.shape)


def _mlp_in_proj(ctx: DraftContext) -> str:
    spec = ctx.draft.fields["block"]["mlp"]
    return f"{ctx.block}.{spec['gate_up']['path'] if 'gate_up' in spec else spec['in']}"


def _mlp_out_proj(ctx: DraftContext) -> str:
    spec = ctx.draft.fields["block"]["mlp"]
    return f"{ctx.block}.{spec['out']}"
