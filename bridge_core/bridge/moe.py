"""Mixture-of-experts hook points computed on demand (docs/decisions/0014-mixture-of-experts.md).

transformers 5 stores a layer's experts as fused 3-D parameters and runs them in one module call, so
there is no per-expert module to hook. With no expert hook attached the experts module runs as HF
wrote it. When `blocks.L.mlp.experts.{e}.hook_gate / hook_pre / hook_post` are attached, a forward
hook on the experts module recomputes every expert from the call's own inputs (hidden states, the
selected experts and their weights, as the router handed them over), running the hooks, and the
recomputed output replaces HF's only when a hook edited something.

`hook_expert_weights` (HookedTransformer's softmax over all experts; the sigmoid scores for scoring
`sigmoid`) is computed from the router's logits; an edit there re-routes: selection (on the scores plus any
correction bias; greedy or group-limited), top-k, renormalization and the routed scaling factor are redone by
the spec's routing settings and replace the router's weights and indices.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

import torch
from torch import nn

from ..records import record
from .bound import BoundMoE
from .places import Place, select_output

EXPERT_POINTS = ("gate", "pre", "post")  # experts.{e}.hook_gate / hook_pre / hook_post, in forward order


class MoEPlace(Place):
    """A point the session hands to `moe_output` (on the router or the experts module)."""


@record(frozen=True, eq=False)
class ExpertValue(MoEPlace):
    """`experts.{e}.hook_{which}` `[tokens routed to e, d_mlp]`, recomputed from the experts module's inputs."""

    moe: BoundMoE | None = None
    expert: int = 0
    which: Literal["gate", "pre", "post"] = "pre"
    act: Callable[[torch.Tensor], torch.Tensor] | None = None  # the experts' activation function


@record(frozen=True, eq=False)
class RouterProbs(MoEPlace):
    """`hook_expert_weights` `[tokens, n_experts]`: the softmax of the router logits (HookedTransformer's), or
    their sigmoid where the spec's scoring is `sigmoid`."""

    moe: BoundMoE | None = None


def scores(moe: BoundMoE, logits: torch.Tensor) -> torch.Tensor:
    """Every expert's score from the router logits, in float32: the softmax over all experts
    (HookedTransformer's `hook_expert_weights`), or each logit's sigmoid (scoring `sigmoid`)."""
    return torch.sigmoid(logits.float()) if moe.sigmoid else torch.softmax(logits, dim=-1, dtype=torch.float32)


def routing(moe: BoundMoE, logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(scores over all experts, top-k weights, top-k indices) from router logits, by the spec."""
    probs = scores(moe, logits)
    weights, indices = route_from_probs(moe, probs, logits)
    return probs, weights, indices


def route_from_probs(
    moe: BoundMoE, probs: torch.Tensor, logits: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k weights and indices from the scores over all experts: selection (on the scores plus any
    correction bias; greedy or group-limited), the chosen scores as weights, renormalization, then the
    routed scaling factor. `logits` are the router's, where the bias is added to logits (else the scores'
    inverse sigmoid)."""
    if moe.sparsemixer_eps is not None:  # PhiMoE: its weights come from the logits, not from the scores
        top, indices = sparsemixer(logits.float() if logits is not None else torch.log(probs), moe.sparsemixer_eps)
        top = top / top.sum(dim=-1, keepdim=True) if moe.norm_topk_prob else top
        return top * moe.routed_scaling if moe.routed_scaling != 1.0 else top, indices
    choice = probs
    bias = moe.correction_bias()
    if bias is not None:
        base = probs
        if moe.bias_on_logits:
            base = logits.float() if logits is not None else torch.logit(probs)
        choice = base + bias.to(base.dtype)
    if moe.group_limited:
        choice = _group_limited(moe, choice)
    indices = torch.topk(choice, moe.top_k, dim=-1).indices
    # DeepSeek-V2 takes the weights from the masked scores; with a correction bias (or noaux_tc) they are the
    # plain scores of the chosen experts
    plain = bias is not None or moe.group_score == "top2_sum"
    top = (probs if plain else choice).gather(-1, indices)
    topk_softmax = not moe.softmax_first and not moe.sigmoid  # a softmax over the top-k logits: renormalized
    if moe.norm_topk_prob or topk_softmax:
        top = top / top.sum(dim=-1, keepdim=True)
    return top * moe.routed_scaling if moe.routed_scaling != 1.0 else top, indices


def sparsemixer(logits: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """PhiMoE's sparsemixer as it runs in eval mode: the best expert, weighted by its softmax among the experts
    whose logit is within `2 eps` (relative) of the best; then the best of the others, weighted by its softmax
    among those within `2 eps` of it. Returns ([.., 2] weights, [.., 2] indices)."""
    weights, indices, rest = [], [], logits
    for _ in range(2):
        best, index = rest.max(dim=-1, keepdim=True)
        far = (best - logits) / logits.abs().clamp(min=best) > 2 * eps
        weights.append(torch.softmax(rest.masked_fill(far, float("-inf")), dim=-1).gather(-1, index))
        indices.append(index)
        rest = rest.scatter(-1, index, float("-inf"))
    return torch.cat(weights, dim=-1), torch.cat(indices, dim=-1)


def _group_limited(moe: BoundMoE, choice: torch.Tensor) -> torch.Tensor:
    """`choice` with every expert outside each token's `topk_group` best groups (of `n_group` equal groups,
    ranked by their best expert's score, or by their best two summed for noaux_tc) masked out, so top-k picks
    only inside the kept groups (masked to 0 for group_limited_greedy, as DeepSeek-V2; to -inf for noaux_tc,
    whose corrected scores may be negative)."""
    grouped = choice.reshape(*choice.shape[:-1], moe.n_group, moe.n_experts // moe.n_group)
    if moe.group_score == "top2_sum":
        rank, fill = grouped.topk(2, dim=-1).values.sum(dim=-1), float("-inf")
    else:
        rank, fill = grouped.amax(dim=-1), 0.0
    kept = torch.topk(rank, moe.topk_group, dim=-1).indices
    keep = torch.zeros(grouped.shape[:-1], dtype=torch.bool, device=choice.device).scatter(-1, kept, True)
    return grouped.masked_fill(~keep.unsqueeze(-1), fill).reshape(choice.shape)


def expert_weights(moe: BoundMoE, e: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Expert `e`'s (gate, in/up, out/down) weights in Linear layout `[d_mlp, d]`, `[d_mlp, d]`, `[d, d_mlp]`:
    views of the fused parameters (or the expert modules' own weights)."""
    if moe.storage == "modules":
        w_in, w_gate, w_out = moe.expert_modules[e]
        return w_gate.weight, w_in.weight, w_out.weight
    gate_up, down = getattr(moe.experts, moe.gate_up)[e], getattr(moe.experts, moe.down)[e]
    if moe.fused_layout == "conv1d":  # [in, out] (GPT-OSS): transposed views
        gate_up, down = gate_up.t(), down.t()
    gate, up = _split_gate_up(moe, gate_up)
    return gate, up, down


def expert_biases(moe: BoundMoE, e: int) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
    """Expert `e`'s (gate, up, down) biases `[d_mlp]`, `[d_mlp]`, `[d]`: views of the fused bias parameters, or
    the expert modules' own biases; None where there is none."""
    if moe.storage == "modules":
        w_in, w_gate, w_out = moe.expert_modules[e]
        return getattr(w_gate, "bias", None), getattr(w_in, "bias", None), getattr(w_out, "bias", None)
    down = getattr(moe.experts, moe.down_bias)[e] if moe.down_bias else None
    if not moe.gate_up_bias:
        return None, None, down
    gate, up = _split_gate_up(moe, getattr(moe.experts, moe.gate_up_bias)[e])
    return gate, up, down


def _split_gate_up(moe: BoundMoE, fused: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(gate, up) views of a fused gate|up tensor along dim 0: its halves, or its even and odd rows."""
    first, second = (fused[0::2], fused[1::2]) if moe.interleaved else fused.chunk(2, dim=0)
    return (first, second) if moe.gate_first else (second, first)


def glu(moe: BoundMoE, act: Callable[[torch.Tensor], torch.Tensor], gate: torch.Tensor, up: torch.Tensor):
    """An expert's hook_post from its hook_gate and hook_pre: `act(gate) * up`, or GPT-OSS's clamped form
    `act(min(gate, limit)) * (clamp(up, -limit, limit) + up_offset)`."""
    if moe.clamp_limit is not None:
        gate, up = gate.clamp(max=moe.clamp_limit), up.clamp(-moe.clamp_limit, moe.clamp_limit)
    return act(gate) * (up + moe.up_offset if moe.up_offset else up)


def _experts_inputs(args: tuple, kwargs: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    names = ("hidden_states", "top_k_index", "top_k_weights")
    values = list(args[:3])
    values += [kwargs[n] for n in names[len(values) :]]
    return values[0], values[1], values[2]


def run_experts(
    moe: BoundMoE,
    runs: dict[tuple[int, str], Any],
    act: Callable[[torch.Tensor], torch.Tensor],
    args: tuple,
    kwargs: dict,
    output: torch.Tensor,
) -> torch.Tensor | None:
    """Recompute the experts from their call's inputs, running each expert point's hooks; the new output,
    or None when no hook edited anything (HF's output then stands)."""
    hidden, indices, weights = _experts_inputs(args, kwargs)
    result = torch.zeros_like(hidden)
    edited = False
    # [n_experts, top_k, tokens]: rows in the order HF (and HookedTransformer) take tokens for each expert
    mask = torch.nn.functional.one_hot(indices, num_classes=moe.n_experts).permute(2, 1, 0)
    for e in range(moe.n_experts):
        slot, token = torch.where(mask[e])
        x = hidden[token]
        w_gate, w_in, w_out = expert_weights(moe, e)
        b_gate, b_in, b_out = expert_biases(moe, e)
        values: dict[str, torch.Tensor] = {}

        def point(which: str, tensor: torch.Tensor, e: int = e) -> torch.Tensor:
            nonlocal edited
            run = runs.get((e, which))
            if run is None:
                return tensor
            new, changed = run.apply(tensor.clone() if run.bwd else tensor)
            run.attach_backward(new)
            edited = edited or changed or bool(run.bwd)
            return new

        values["gate"] = point("gate", nn.functional.linear(x, w_gate, b_gate))
        values["pre"] = point("pre", nn.functional.linear(x, w_in, b_in))
        post = point("post", glu(moe, act, values["gate"], values["pre"]))
        out = nn.functional.linear(post, w_out, b_out) * weights[token, slot, None]
        result.index_add_(0, token, out.to(result.dtype))
    return result.to(output.dtype) if edited else None


def run_router_probs(moe: BoundMoE, run: Any, output: Any) -> Any | None:
    """Show the softmax of the router's logits; an edit re-routes (new top-k weights and indices replace the
    router's). The router's new output, or None when unedited."""
    roles = moe.router_output
    logits = select_output(output, roles.index("logits"))
    probs = scores(moe, logits)
    new, edited = run.apply(probs.clone() if run.bwd else probs)
    run.attach_backward(new)
    if not edited:
        return None
    if "weights" not in roles or "indices" not in roles:
        raise NotImplementedError(
            f"editing hook_expert_weights needs a router returning its top-k weights and indices; "
            f"{moe.router_path} returns {', '.join(roles)}"
        )
    # sparsemixer weighs by logits: the edited scores are read back as logits with the router's own normalizer
    raw = None
    if moe.sparsemixer_eps is not None:
        raw = torch.log(new.float()) + torch.logsumexp(logits.float(), -1, keepdim=True)
    top, indices = route_from_probs(moe, new, raw)
    items = list(output)
    old = items[roles.index("weights")]
    items[roles.index("weights")] = top.to(old.dtype)
    items[roles.index("indices")] = indices
    return tuple(items)


def moe_output(place: MoEPlace, run: Any, outputs: list, args: tuple, kwargs: dict, output: Any) -> Any | None:
    """The module's new output for a MoE point (None: unchanged), called by the session's forward hook for each
    point on the module; the experts are recomputed once, at the first expert point, for all of them."""
    if isinstance(place, RouterProbs):
        return run_router_probs(place.moe, run, output)
    experts = [(p, r) for p, r in outputs if isinstance(p, ExpertValue)]
    if not isinstance(place, ExpertValue) or experts[0][0] is not place:
        return None
    runs = {(p.expert, p.which): r for p, r in experts}
    return run_experts(place.moe, runs, place.act, args, kwargs, output)


def moe_points(p: str, mlp: Any, shared_view: Any = None) -> list[tuple[str, Place]]:
    """(name, place) of a MoE MLP's hook points under prefix `p` (`blocks.3`), in the order the forward
    reaches them. `mlp` is a `BoundMLP` whose `moe` is set; `shared_view` shows the shared expert's
    flattened tokens as `[batch, pos, ...]`."""
    from .places import ModuleInput, ModuleOutput

    moe: BoundMoE = mlp.moe
    points: list[tuple[str, Place]] = []
    shared = moe.shared
    if shared is not None:
        at = f"{mlp.path}.shared_expert"
        sp = f"{p}.mlp.shared_expert"
        if shared.w_gate is not None:
            points.append((f"{sp}.hook_pre", ModuleOutput(shared.w_gate, f"{at}.gate", view=shared_view)))
            points.append((f"{sp}.hook_pre_linear", ModuleOutput(shared.w_in, f"{at}.in", view=shared_view)))
        else:
            points.append((f"{sp}.hook_pre", ModuleOutput(shared.w_in, f"{at}.in", view=shared_view)))
        points.append((f"{sp}.hook_post", ModuleInput(shared.w_out, f"{at}.out", kwarg="input", view=shared_view)))
    logits_at = moe.router_output.index("logits")
    points.append((f"{p}.mlp.hook_router_logits", ModuleOutput(moe.router, moe.router_path, index=logits_at)))
    points.append((f"{p}.mlp.hook_expert_weights", RouterProbs(moe.router, moe.router_path, moe=moe)))
    experts = moe.experts_path
    points.append((f"{p}.mlp.hook_expert_indices", ModuleInput(moe.experts, experts, arg=1, kwarg="top_k_index")))
    points.append((f"{p}.mlp.hook_routing_weights", ModuleInput(moe.experts, experts, arg=2, kwarg="top_k_weights")))
    for e in range(moe.n_experts):
        for which in EXPERT_POINTS:
            place = ExpertValue(moe.experts, experts, moe=moe, expert=e, which=which, act=mlp.act)
            points.append((f"{p}.mlp.experts.{e}.hook_{which}", place))
    if shared is not None and shared.gate is not None:
        place = ModuleOutput(shared.gate, shared.gate_path, view=shared_view)
        points.append((f"{p}.mlp.hook_shared_expert_gate", place))
    return points
