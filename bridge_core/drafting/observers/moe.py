"""Observer of a mixture-of-experts MLP: the experts module (the child called with token indices), its
storage and gate|up order, the router (the child whose output holds the routing), how the top-k weights
come from the logits, and a shared expert with its sigmoid gate. Each fact is checked against the calls the
probe saw; what cannot be checked is a `# NOTE:` or a gap."""

from __future__ import annotations

from typing import Any

import torch

from ..draft import DraftContext
from ..probe import Call, same
from .modules import is_linear, is_norm, norm_kind
from .moe_experts import read_experts, storages

_N_EXPERTS = ("num_local_experts", "num_experts", "n_routed_experts", "moe_num_experts")
_TOP_K = ("num_experts_per_tok", "top_k", "moe_topk", "moe_k", "num_selected_experts")


def _routed_call(ctx: DraftContext, path: str) -> tuple[str, Call] | None:
    """The child of the MLP called with (hidden [tokens, d], top-k indices (integers), top-k weights)."""
    for name, _ in ctx.obs.module(path).named_children():
        call = ctx.obs.first(f"{path}.{name}")
        args = [*call.args, *call.kwargs.values()] if call else []
        tensors = [a for a in args if isinstance(a, torch.Tensor)]
        if len(tensors) >= 3 and tensors[0].is_floating_point() and any(not t.is_floating_point() for t in tensors):
            return name, call
    return None


def _router(ctx: DraftContext, path: str, n_experts: int) -> tuple[str, list[str], Call] | None:
    """The child whose output is a tuple of logits [tokens, n_experts], top-k weights and integer indices."""
    for name, _ in ctx.obs.module(path).named_children():
        call = ctx.obs.first(f"{path}.{name}")
        out = call.output if call else None
        if not isinstance(out, tuple) or not all(isinstance(t, torch.Tensor) for t in out):
            continue
        roles = []
        for t in out:
            if not t.is_floating_point():
                roles.append("indices")
            elif t.shape[-1] == n_experts and "logits" not in roles:
                roles.append("logits")
            else:
                roles.append("weights")
        if sorted(roles) == ["indices", "logits", "weights"]:
            return name, roles, call
    return None


def observe_moe(ctx: DraftContext, path: str, spec: dict) -> dict | None:
    """Fill `spec` (the MLP's) as kind `moe`; returns the shared expert's MLP spec to fill, or None when the
    experts could not be read (a gap names why)."""
    obs = ctx.obs
    routed = _routed_call(ctx, path)
    if routed is None:
        ctx.draft.gap("MoE", f"{path}: no child is called with token indices (experts not found)")
        return None
    experts, call = routed
    module = obs.module(f"{path}.{experts}")
    if sum(p.dim() == 3 for p in module.parameters(recurse=False)) != 2:
        ctx.draft.gap("MoE expert modules", f"{path}.{experts} keeps no fused 3-D gate|up and down parameters")
        return None
    hidden, index, weights = (t for t in [*call.args, *call.kwargs.values()] if isinstance(t, torch.Tensor))
    fits = storages(module, hidden.shape[-1])
    if not fits:
        shapes = [tuple(p.shape) for p in module.parameters(recurse=False) if p.dim() == 3]
        ctx.draft.gap("MoE expert storage", f"{path}.{experts} stores {shapes}, not [E, 2*d_mlp, d] and [E, d, d_mlp]")
        return None
    read = read_experts(ctx, module, call, hidden, index, weights)
    storage, wiring = read if read is not None else (fits[0], {"gate_first": True})
    n_experts, d_mlp = getattr(module, storage.gate_up).shape[0], storage.d_mlp
    top_k = index.shape[-1]
    moe: dict[str, Any] = {"router": "FILL_ME", "experts": experts, "storage": "fused", "gate_up": storage.gate_up}
    moe["down"] = storage.down
    if read is None:
        ctx.draft.gap("MoE expert wiring", f"no activation and gate|up order reproduces {path}.{experts}'s output")
    moe.update(wiring)
    moe["n_experts"] = ctx.attr(n_experts, _N_EXPERTS, ("expert",)) or n_experts
    moe["top_k"] = ctx.attr(top_k, _TOP_K, ("top", "per_tok")) or top_k
    router = _router(ctx, path, n_experts)
    if router is None:
        ctx.draft.gap("MoE router", f"no child of {path} returns (logits, weights, indices)")
    else:
        name, roles, rcall = router
        moe["router"], moe["router_output"] = name, roles
        _router_weight(ctx, moe, path, name, n_experts)
        out = _replayed(obs.module(f"{path}.{name}"), rcall)
        logits, got = out[roles.index("logits")], out[roles.index("weights")]
        _scoring(ctx, moe, path, logits, got, out[roles.index("indices")], top_k)
    ctx.found["d_mlp"] = d_mlp
    _post_norm(ctx, path, spec["path"])
    spec.update(kind="moe", layout="linear", moe=moe)
    spec.pop("flat_tokens", None)
    return _shared(ctx, path, moe, {experts, moe["router"]})


def _post_norm(ctx: DraftContext, path: str, rel: str) -> None:
    """A norm child of the MoE MLP whose output is the MLP's (A.X-K1's `post_mlp_layernorm` on routed + shared):
    the block's `ln2_post`, at a path inside the MLP; optional where dense layers have no such norm."""
    obs = ctx.obs
    out = obs.output(path)
    for name, module in obs.module(path).named_children():
        full = f"{path}.{name}"
        if not is_norm(module) or obs.first(full) is None or not same(obs.output(full), out):
            continue
        kind = norm_kind(module, obs.input(full), obs.output(full))
        if kind is None:
            ctx.draft.gap("norm kind", f"{full} ({type(module).__name__}) matches no registered norm")
            kind = "rmsnorm"
        norm: dict[str, Any] = {"path": f"{rel}.{name}" if rel != "." else name, "kind": kind}
        if ctx.found.get("moe_layers"):
            norm["optional"] = True  # the dense layers' MLPs have none
        ctx.draft.fields.setdefault("block", {})["ln2_post"] = norm
        return


def _router_weight(ctx: DraftContext, moe: dict, path: str, router: str, n_experts: int) -> None:
    """`router_weight` where the router keeps its weight in a linear child (HunYuan-MoE's `gate.wg`)."""
    module = ctx.obs.module(f"{path}.{router}")
    weight = getattr(module, "weight", None)
    if isinstance(weight, torch.Tensor) and weight.dim() == 2 and weight.shape[0] == n_experts:
        return
    linears = ((n, m) for n, m in module.named_modules() if n and isinstance(m, torch.nn.Linear))
    found = [n for n, m in linears if m.out_features == n_experts]
    if len(found) == 1:
        moe["router_weight"] = f"{router}.{found[0]}"
    else:
        message = f"{path}.{router} has no weight and {len(found)} linear children to n_experts"
        ctx.draft.gap("MoE router weight", message)


def _replayed(router: torch.nn.Module, call: Call, tokens: int = 512) -> tuple:
    """The router's output on `tokens` fresh random hidden states (its other arguments as probed): a few probed
    tokens can route alike under two readings (a bias on scores or on logits); many tell them apart."""
    args = list(call.args)
    first = args[0] if args else next(iter(call.kwargs.values()))
    generator = torch.Generator().manual_seed(0)
    d = first.shape[-1]
    hidden = torch.randn(tokens, d, generator=generator, dtype=torch.float32) * first.float().std()
    hidden = hidden.to(first.dtype)
    kwargs = dict(call.kwargs)
    if args:
        args[0] = hidden
    else:
        kwargs[next(iter(kwargs))] = hidden
    try:
        with torch.no_grad():
            out = router(*args, **kwargs)
    except Exception:
        return call.output  # a router that refuses other shapes: the probed call is the evidence
    return out if isinstance(out, tuple) and len(out) == len(call.output) else call.output


_SCALING = ("routed_scaling_factor", "router_scaling_factor", "moe_routed_scaling_factor")
_GROUPS = (("n_group", "topk_group"), ("num_expert_group", "topk_group"))


def _bias_buffers(ctx: DraftContext, path: str, n_experts: int) -> list[str | None]:
    """Candidate selection-only correction biases: floating buffers `[n_experts]` under the MLP (paths relative
    to it), or frozen parameters (AFMoE's `expert_bias`, Laguna's `e_score_correction_bias`: `requires_grad=False`),
    and None. The drafter's model has them perturbed, as conformance's, so each reroutes differently."""
    module = ctx.obs.module(path)
    frozen = [(n, p) for n, p in module.named_parameters() if not p.requires_grad]
    found = [
        name
        for name, buffer in [*module.named_buffers(), *frozen]
        if buffer.shape in ((n_experts,), (1, n_experts)) and buffer.is_floating_point()  # ERNIE: [1, n_experts]
    ]
    return [None, *found]


def _route(ctx, path, scoring, renorm, bias, on_logits, groups, top_k, logits, eps=None):
    """The bridge's own routing (bridge/moe.py) under one candidate reading of the router."""
    from types import SimpleNamespace

    from ...bridge.moe import routing

    owner, _, name = (bias or "").rpartition(".")
    n_group, topk_group = groups or (1, 1)
    moe = SimpleNamespace(
        sigmoid=scoring == "sigmoid",
        sparsemixer_eps=eps if scoring == "sparsemixer" else None,
        softmax_first=scoring == "softmax_then_topk",
        norm_topk_prob=renorm,
        routed_scaling=1.0,
        top_k=top_k,
        n_experts=logits.shape[-1],
        group_limited=groups is not None,
        n_group=n_group,
        topk_group=topk_group,
        group_score="top2_sum",
        bias_on_logits=on_logits,
        correction_bias=lambda: None if bias is None else getattr(ctx.obs.module(path).get_submodule(owner), name),
    )
    _, weights, indices = routing(moe, logits.float())
    order = indices.argsort(dim=-1)
    return weights.gather(-1, order), indices.gather(-1, order)


def _scoring(ctx: DraftContext, moe: dict, path: str, logits: torch.Tensor, got: torch.Tensor, index, k) -> None:
    """Which scoring (softmax then top-k, top-k then softmax, sigmoid), renormalization, selection-only
    correction bias, expert groups and routed scaling reproduce the router's own experts and weights."""
    order = index.argsort(dim=-1)
    got, index = got.float().gather(-1, order), index.gather(-1, order)
    fields = {}
    from ..shrink import plain_fields

    fields = plain_fields(ctx.config)
    groups = [
        (a, b, fields[a], fields[b])
        for a, b in _GROUPS
        if isinstance(fields.get(a), int) and isinstance(fields.get(b), int) and fields[a] > 1
    ]
    found = []
    for scoring in ("softmax_then_topk", "topk_then_softmax", "sigmoid"):
        for renorm in (True, False) if scoring != "topk_then_softmax" else (True,):
            for bias in _bias_buffers(ctx, path, logits.shape[-1]):
                for on_logits in (False, True) if bias else (False,):
                    for group in [None, *groups]:
                        weights, indices = _route(
                            ctx, path, scoring, renorm, bias, on_logits, group and group[2:], k, logits
                        )
                        if not torch.equal(indices, index):
                            continue
                        scale = float(got.sum() / weights.sum()) if weights.sum() else 1.0
                        if same(weights * scale, got, atol=1e-4):
                            found.append((scoring, renorm, bias, on_logits, group, scale))
    if not found and k == 2:
        eps = _sparsemixer(ctx, path, fields, logits, got, index)
        if eps is not None:
            moe["scoring"], moe["jitter_eps"], moe["norm_topk_prob"] = "sparsemixer", eps, False
            return
    if not found:
        ctx.draft.gap("MoE scoring", "the router's weights are none of the registered scorings of its logits")
        return
    # the fewest extras that fit: no bias before a bias, no groups before groups; a bias that fits is taken
    # over none only when none does not fit
    scoring, renorm, bias, on_logits, group, scale = found[0]
    moe["scoring"] = scoring
    if scoring != "topk_then_softmax":
        field = ctx.attr(renorm, ("norm_topk_prob",), ("norm_topk",))
        if field:
            moe["norm_topk_prob"] = field
        else:
            moe["norm_topk_prob"] = renorm
            ctx.draft.note(f"block.mlp.moe.norm_topk_prob: {renorm} observed; no config field holds it")
    if bias is not None:
        moe["correction_bias"] = bias
        if on_logits:
            moe["correction_bias_on"] = "logits"
    if group is not None:
        moe["selection"], moe["n_group"], moe["topk_group"] = "noaux_tc", group[0], group[1]
    if abs(scale - 1.0) > 1e-4:
        moe["routed_scaling"] = ctx.attr(scale, _SCALING, ("scaling_factor",)) or round(scale, 6)
        if not isinstance(moe["routed_scaling"], str):
            ctx.draft.note(f"block.mlp.moe.routed_scaling: {scale:.6g} observed; no config field holds it")
    if len({f[:2] for f in found}) > 1:
        ctx.draft.note(f"block.mlp.moe.scoring: {sorted({f[0] for f in found})} all fit the observed routing")


def _sparsemixer(ctx: DraftContext, path: str, fields: dict, logits, got, index) -> str | None:
    """PhiMoE's sparsemixer (top 2, each weighted by a softmax masked around it): the config field holding its ε
    (a float whose name says jitter) under which the bridge's sparsemixer reproduces the router's routing."""
    for name, value in fields.items():
        if "jitter" not in name or isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        weights, indices = _route(ctx, path, "sparsemixer", False, None, False, None, 2, logits, float(value))
        if torch.equal(indices, index) and same(weights, got, atol=1e-4):
            return name
    return None


def _shared(ctx: DraftContext, path: str, moe: dict, used: set[str]) -> dict | None:
    """A child run on every token besides router and experts (the shared expert), and a Linear d -> 1 whose
    sigmoid scales it (its gate). Returns the shared expert's path for the MLP observer to wire."""
    rest = [(n, m) for n, m in ctx.obs.module(path).named_children() if n not in used]
    gate = next((n for n, m in rest if is_linear(m) and getattr(m, "out_features", None) == 1), None)
    shared = [(n, m) for n, m in rest if n != gate and any(is_linear(x) for x in m.modules())]
    if len(shared) > 1:
        ctx.draft.gap("MoE shared experts", f"several modules besides router and experts: {[n for n, _ in shared]}")
    if not shared:
        return None
    moe["shared_expert"] = shared[0][0]
    if gate:
        moe["shared_expert_gate"] = gate
        ctx.draft.note(f"block.mlp.moe.shared_expert_gate: '{gate}' (a Linear d -> 1) scales the shared expert")
    return {"path": f"{path}.{shared[0][0]}"}


def moe_layers(blocks: torch.nn.ModuleList) -> list[bool] | None:
    """Which blocks hold fused experts (3-D parameters), when that is all that tells them apart: the blocks
    of each kind built alike. None when the blocks differ otherwise (or do not mix)."""
    is_moe = [any(p.dim() == 3 for p in block.parameters()) for block in blocks]
    if len(set(is_moe)) < 2:
        return None
    shapes = [sorted((n, type(m).__name__) for n, m in block.named_modules()) for block in blocks]
    for kind in (True, False):
        alike = [shape for shape, moe in zip(shapes, is_moe, strict=True) if moe is kind]
        if any(shape != alike[0] for shape in alike):
            return None
    return is_moe


# per-layer MLP kinds transformers configs write, as spec expressions over `layer` and the config
_MIX = (
    ("mlp_layer_types", "'moe' if mlp_layer_types[layer] == {sparse!r} else {dense!r}"),
    ("first_k_dense_replace", "{dense!r} if layer < first_k_dense_replace else 'moe'"),
    ("num_dense_layers", "{dense!r} if layer < num_dense_layers else 'moe'"),  # AFMoE
    ("mlp_only_layers", "{dense!r} if layer in mlp_only_layers or (layer + 1) % decoder_sparse_step != 0 else 'moe'"),
    ("moe_layer_freq", "'moe' if layer % moe_layer_freq == 0 else {dense!r}"),
    ("moe_layers", "'moe' if layer in moe_layers else {dense!r}"),
    (
        "moe_layer_start_index",
        "'moe' if (layer + 1) % moe_layer_interval == 0 and layer >= moe_layer_start_index "
        "and layer <= moe_layer_end_index else {dense!r}",
    ),
)


def mix_expression(ctx: DraftContext, is_moe: list[bool], dense: str) -> str | None:
    """An expression over `layer` and the config whose value per layer is the observed kind (`moe` or `dense`),
    or None (a gap). Each candidate is evaluated by the spec's own evaluator; where several fit, a note."""
    from ...spec.expressions import evaluate
    from ..shrink import plain_fields

    fields = plain_fields(ctx.config)
    types = fields.get("mlp_layer_types")
    sparse = types[is_moe.index(True)] if isinstance(types, list) and len(types) == len(is_moe) else "sparse"
    want = ["moe" if moe else dense for moe in is_moe]
    fits = []
    for name, form in _MIX:
        if name not in fields:
            continue
        expression = form.format(sparse=sparse, dense=dense)
        try:
            got = [evaluate(expression, {**fields, "layer": i}) for i in range(len(is_moe))]
        except Exception:
            continue
        if got == want:
            fits.append(expression)
    if len(fits) > 1:
        ctx.draft.note(f"block.mlp.kind: {fits[1:]} fit the observed layers too")
    return fits[0] if fits else None


def observe_moe_mix(ctx: DraftContext, spec: dict, wire: Any) -> None:
    """Dense and MoE layers mixed: the dense MLP wired at a dense block (`wire`, the block observer's), the
    mixture of experts at a MoE block, and `kind` an expression over `layer` giving each its own."""
    is_moe = ctx.found["moe_layers"]
    rel = spec["path"]
    at = {moe: f"{ctx.blocks}.{is_moe.index(moe)}" + ("" if rel == "." else f".{rel}") for moe in (True, False)}
    wire(ctx, at[False], spec)
    dense, act, d_mlp = spec["kind"], ctx.found["act"], ctx.found["d_mlp"]
    found: dict = {"path": rel}
    shared = observe_moe(ctx, at[True], found)
    if found.get("kind") != "moe":
        return  # observe_moe named the gap; the draft describes the dense layers
    width, experts_act = ctx.found["d_mlp"], ctx.found["act"]  # the experts'; wiring the shared expert resets them
    if shared is not None:  # the shared expert's projections are the MLP spec's in/gate/out, the dense MLP's too
        wired: dict = {}
        wire(ctx, shared["path"], wired)
        if any(wired.get(k) != spec.get(k) for k in ("in", "gate", "out", "kind")):
            ctx.draft.gap("MoE shared expert", f"{shared['path']} is wired unlike the dense MLP ({wired} vs {spec})")
    if experts_act != act:
        ctx.draft.gap("MoE experts activation", f"experts use {experts_act}, the dense MLP {act}")
    if width != d_mlp:
        keys = ("moe_intermediate_size", "expert_intermediate_size")
        found["moe"]["d_mlp"] = ctx.attr(width, keys, ("moe", "expert")) or width
    kind = mix_expression(ctx, is_moe, dense)
    if kind is None:
        moe_at = [i for i, moe in enumerate(is_moe) if moe]
        ctx.draft.gap("per-layer structure", f"no config field gives the MoE layers {moe_at} (dense elsewhere)")
        kind = "moe"
    spec.update(kind=kind, moe=found["moe"])
    ctx.found["act"], ctx.found["d_mlp"] = act, d_mlp
