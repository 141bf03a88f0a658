"""Mutation testing of a spec: plausible mistakes made on purpose, each run through the catalogue.

`mutants(data)` derives wrong specs from a spec's merged data (module paths of one role swapped, norm
roles swapped, kinds flipped, optional fields dropped, literals and expression operands perturbed,
conditional branches forced); `mutate(spec)` runs conformance on each and reports the check that
killed it, or that it survived. The suite is worth its kill rate. Used by `bridge-core conform --mutate`.
"""

from __future__ import annotations

import ast
import copy
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import field
from pathlib import Path
from typing import Any

from ..errors import BridgeCoreError
from ..records import record
from ..registry import Registry, default_registry
from ..spec.loader import RawSpec, read_raw_spec, resolve_extends, validate_spec
from ..spec.schema import BLOCK_KINDS, Spec

Data = dict[str, Any]

# Kinds a mistaken author could have written instead of the right one, by extension point.
_NORM_KINDS = ("layernorm", "rmsnorm", "rmsnorm_offset", "rmsnorm_cast_last")
# Norm kinds that differ only in where half precision rounds (the weight before or after the cast back): the
# float32 test models cannot tell them apart, tests/reliability/test_norm_dtypes.py does; no mutant trades them.
_SAME_IN_FLOAT32 = ({"rmsnorm", "rmsnorm_cast_last"},)
_ACTIVATIONS = ("gelu", "gelu_new", "gelu_pytorch_tanh", "relu", "silu")
# Names of one function (GELU's tanh approximation, written two ways): trading one for the other is no
# mistake, only float rounding (~1e-7), so such a mutant is not generated.
_SAME_FUNCTION = ({"gelu_new", "gelu_pytorch_tanh"},)
_MASK_FORMATS = ("2d", "4d_additive", "4d_bool", "none")
_POSITIONS = (
    "learned",
    "rotary",
    "rotary_interleaved",
    "rotary_interleaved_table",
    "rotary_interleaved_halves",
    "rotary_reversed",
    "none",
)
_ROTARY_OUTPUTS = ("cos_sin", "sin_cos")  # the order of the rotary module's pair (cos_sin when not given)

# Optional fields whose absence is a plausible mistake (paths relative to a block, or to the spec).
_BLOCK_OPTIONAL = (
    ("ln1_post",), ("ln2_post",), ("attn", "q_norm"), ("attn", "k_norm"), ("attn", "softcap"),
    ("attn", "residual_kwarg"), ("attn", "q_prescaled"), ("resid_mid_at",), ("attn_out_at",), ("mlp_out_at",),
    ("mlp", "flat_tokens"), ("output_index",),
)  # fmt: skip
_SPEC_OPTIONAL = (
    ("embed", "norm"), ("embed", "project"), ("unembed", "project"), ("unembed", "pre_scale"),
    ("unembed", "softcap"), ("pos_embed",), ("score_bias",), ("call", "window"), ("call", "position_ids_kwarg"),
    ("call", "position_bias_kwarg"), ("call", "attention_mask_kwarg"), ("call", "rotary_args"),
    ("pos_embed", "offset"), ("unembed", "bias"), ("encoder", "pos_embed"), ("encoder", "embed", "norm"),
    ("encoder", "pos_embed", "offset"),
)  # fmt: skip
_REQUIRED_CONFIG = ("n_layers", "d_model", "n_heads", "d_head", "d_mlp", "d_vocab")


@record(frozen=True)
class Mutant:
    """One deliberate mistake: which operator made it, at which field, and the mutated spec data."""

    name: str
    operator: str
    field: str
    description: str
    data: Data = field(repr=False, compare=False)


@record
class MutantResult:
    mutant: Mutant
    killed_by: str | None  # the first failing check, "schema" when the spec no longer validates
    message: str = ""
    seconds: float = 0.0

    @property
    def killed(self) -> bool:
        return self.killed_by is not None

    def to_dict(self) -> dict[str, Any]:
        m = self.mutant
        return {"name": m.name, "operator": m.operator, "field": m.field, "description": m.description,
                "killed_by": self.killed_by, "message": self.message, "seconds": round(self.seconds, 3)}  # fmt: skip


@record
class MutationReport:
    spec: str
    results: list[MutantResult] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def survivors(self) -> list[MutantResult]:
        return [r for r in self.results if not r.killed]

    @property
    def kill_rate(self) -> float:
        return 1.0 if not self.results else 1 - len(self.survivors) / len(self.results)

    def to_dict(self) -> dict[str, Any]:
        return {"spec": self.spec, "mutants": len(self.results), "killed": len(self.results) - len(self.survivors),
                "kill_rate": round(self.kill_rate, 4), "seconds": round(self.seconds, 2),
                "results": [r.to_dict() for r in self.results]}  # fmt: skip


# ----------------------------------------------------------------------------- generating mutants
def _get(data: Data, path: Sequence[str]) -> Any:
    node: Any = data
    for key in path:
        if not isinstance(node, dict) or key not in node:
            return None
        node = node[key]
    return node


def _with(data: Data, path: Sequence[str], value: Any, *, drop: bool = False) -> Data:
    out = copy.deepcopy(data)
    node = out
    for key in path[:-1]:
        node = node[key]
    if drop:
        del node[path[-1]]
    else:
        node[path[-1]] = value
    return out


def _blocks(data: Data) -> Iterator[tuple[str, ...]]:
    yield ("block",)
    if isinstance(data.get("encoder"), dict):
        yield ("encoder", "block")


def _swaps(data: Data) -> Iterator[Mutant]:
    """Two module paths of the same role exchanged (same shapes, so only values can tell)."""
    for at in _blocks(data):
        b = _get(data, at)
        groups = [
            [(("attn", "qkv", n), "path") for n in "qkv" if _get(b, ("attn", "qkv", n)) is not None],
            [(("mlp", n), "path") for n in ("in", "gate") if _get(b, ("mlp", n)) is not None],
            [((role, "path"), "norm") for role in ("ln1", "ln2", "ln1_post", "ln2_post") if _get(b, (role,))]
            + ([(("cross_attn", "ln", "path"), "norm")] if _get(b, ("cross_attn", "ln")) else []),
        ]
        if _get(b, ("attn", "qkv", "kind")) == "latent":  # latent attention: its projections, its two latent norms
            latent = ("q", "q_a", "q_b", "kv_a", "kv_b")
            groups.append([(("attn", "qkv", n), "path") for n in latent if _get(b, ("attn", "qkv", n)) is not None])
            groups.append([(("attn", "qkv", n, "path"), "norm") for n in ("q_a_norm", "kv_a_norm")
                           if _get(b, ("attn", "qkv", n))])  # fmt: skip
        if _get(b, ("attn", "q_norm")) and _get(b, ("attn", "k_norm")):
            groups.append([(("attn", "q_norm", "path"), "norm"), (("attn", "k_norm", "path"), "norm")])
        for group in groups:
            for i, (first, _) in enumerate(group):
                for second, _ in group[i + 1 :]:
                    a, c = (*at, *first), (*at, *second)
                    va, vc = _get(data, a), _get(data, c)
                    if va == vc:
                        continue
                    mutated = _with(_with(data, a, vc), c, va)
                    label = f"{'.'.join(a)} <-> {'.'.join(c)}"
                    yield Mutant(f"swap {label}", "swap", ".".join(a), f"swapped {label}", mutated)


def _kinds(data: Data) -> Iterator[Mutant]:
    """A kind replaced by another registered one of the same extension point."""

    def flip(path: tuple[str, ...], choices: Sequence[str], operator: str = "kind") -> Iterator[Mutant]:
        current = _get(data, path)
        if current is None:
            return
        for other in choices:
            if other != current:
                dotted = ".".join(path)
                yield Mutant(f"{dotted}: {current} -> {other}", operator, dotted, f"{dotted} {current!r} -> {other!r}",
                             _with(data, path, other))  # fmt: skip

    norms = [("ln_final",), ("embed", "norm")]
    if isinstance(data.get("encoder"), dict):
        norms += [("encoder", "ln_final"), ("encoder", "embed", "norm")]
    for at in _blocks(data):
        for role in (
            "ln1",
            "ln2",
            "ln1_post",
            "ln2_post",
            ("attn", "q_norm"),
            ("attn", "k_norm"),
            ("cross_attn", "ln"),
            ("attn", "qkv", "q_a_norm"),
            ("attn", "qkv", "kv_a_norm"),
        ):
            norms.append((*at, *((role,) if isinstance(role, str) else role)))
        block = _get(data, at)
        if block.get("kind", "sequential") in BLOCK_KINDS and (at == ("block",) or "kind" in block):
            yield from flip((*at, "kind"), BLOCK_KINDS)
        mlp_kind = _get(block, ("mlp", "kind"))
        if mlp_kind in ("plain", "gated") and _get(block, ("mlp", "gate")) is not None:
            yield from flip((*at, "mlp", "kind"), ("plain", "gated"))
        gate_up = _get(block, ("mlp", "gate_up"))
        if isinstance(gate_up, dict):  # which half of a fused gate/up module is the gate (gate_up when not given)
            order = gate_up.get("order", "gate_up")
            other = "up_gate" if order == "gate_up" else "gate_up"
            dotted = ".".join((*at, "mlp", "gate_up", "order"))
            yield Mutant(f"{dotted}: {order} -> {other}", "kind", dotted, f"{dotted} {order!r} -> {other!r}",
                         _with(data, (*at, "mlp", "gate_up", "order"), other))  # fmt: skip
        if _get(block, ("attn", "qkv", "kind")) == "fused":
            yield from flip((*at, "attn", "qkv", "order"), ("qkv", "per_head_interleaved"))
        attn = block.get("attn", {})
        yield from flip((*at, "attn", "softmax_dtype"), ("input", "float32"), "setting")
        if attn.get("q_norm") is not None:
            yield from flip((*at, "attn", "qk_norm_layout"), ("bhsd", "bshd", "flat"), "setting")
        yield from _rotary_per_layer(data, at, attn)
        act = _get(block, ("mlp", "act_fn"))
        if act is not None:
            yield from flip((*at, "mlp", "act_fn"), [a for a in _ACTIVATIONS if not _same_function({a}, {act})])
        moe = (*at, "mlp", "moe")
        if isinstance(_get(data, moe), dict):  # a mixture of experts: routing settings and the fused half order
            if _get(data, (*moe, "norm_topk_prob")) is not True:  # renormalized, both scorings are one function
                yield from flip((*moe, "scoring"), ("softmax_then_topk", "topk_then_softmax"), "setting")
            yield from flip((*moe, "gate_first"), (True, False), "setting")
            yield from flip((*moe, "norm_topk_prob"), (True, False), "setting")
            yield from _moe_routing(data, moe)
            yield from _moe_experts(data, moe)
    for path in norms:
        if isinstance(_get(data, path), dict):
            current = _get(data, (*path, "kind"))
            same = set().union(*(group for group in _SAME_IN_FLOAT32 if current in group))
            yield from flip((*path, "kind"), [k for k in _NORM_KINDS if k == current or k not in same])
    config_act = _get(data, ("config", "act_fn"))
    if config_act is not None:  # an activation chosen by the config: force a wrong literal one
        for other in _ACTIVATIONS:
            mutated = _with(data, ("config", "act_fn"), repr(other))
            yield Mutant(f"config.act_fn -> {other}", "kind", "config.act_fn", f"activation forced to {other!r}",
                         mutated)  # fmt: skip
    yield from flip(("call", "mask_format"), _MASK_FORMATS)
    for stack in ((), ("encoder",)):
        if isinstance(_get(data, (*stack, "pos_embed")), dict):
            # latent attention: HF rotates q/k itself and the bridge reads the rotated tensors, so the kind only
            # says whether positions rotate q/k; flips between rotary forms would be equivalent mutants
            latent = _get(data, (*stack, "block", "attn", "qkv", "kind")) == "latent"
            choices = [k for k in _POSITIONS if not (latent and k.startswith("rotary"))] if latent else _POSITIONS
            yield from flip((*stack, "pos_embed", "kind"), choices)
    pos = data.get("pos_embed")
    latent = _get(data, ("block", "attn", "qkv", "kind")) == "latent"
    if isinstance(pos, dict) and str(pos.get("kind")).startswith("rotary") and not latent:  # pair order flipped
        order = pos.get("rotary_output", _ROTARY_OUTPUTS[0])
        other = _ROTARY_OUTPUTS[1 - _ROTARY_OUTPUTS.index(order)]
        yield Mutant(f"pos_embed.rotary_output: {order} -> {other}", "setting", "pos_embed.rotary_output",
                     f"pos_embed.rotary_output {order!r} -> {other!r}",
                     _with(data, ("pos_embed", "rotary_output"), other))  # fmt: skip


def _moe_routing(data: Data, moe: tuple[str, ...]) -> Iterator[Mutant]:
    """DeepSeek-style routing mistakes: plain top-k where the selection is group-limited (or the reverse), the
    routed scaling factor or the experts' own width left out, the two group counts swapped."""
    selection = _get(data, (*moe, "selection"))
    if selection is not None:
        other = "group_limited_greedy" if selection == "greedy" else "greedy"
        dotted = ".".join((*moe, "selection"))
        yield Mutant(f"{dotted}: {selection} -> {other}", "setting", dotted, f"{dotted} {selection!r} -> {other!r}",
                     _with(data, (*moe, "selection"), other))  # fmt: skip
    for name in ("routed_scaling", "d_mlp"):
        if _get(data, (*moe, name)) not in (None, 1):
            dotted = ".".join((*moe, name))
            mutated = _with(data, (*moe, name), None, drop=True)
            yield Mutant(f"drop {dotted}", "drop", dotted, f"{dotted} left out", mutated)
    groups = _get(data, (*moe, "n_group")), _get(data, (*moe, "topk_group"))
    if None not in groups and groups[0] != groups[1]:
        dotted = ".".join(moe)
        mutated = _with(_with(data, (*moe, "n_group"), groups[1]), (*moe, "topk_group"), groups[0])
        yield Mutant(f"swap {dotted}.n_group <-> topk_group", "swap", f"{dotted}.n_group",
                     f"swapped {dotted}.n_group <-> topk_group", mutated)  # fmt: skip


def _moe_experts(data: Data, moe: tuple[str, ...]) -> Iterator[Mutant]:
    """GPT-OSS-style expert storage mistakes: interleaved gate|up read as halves (or the reverse), `[E, in, out]`
    read as `[E, out, in]`, an expert bias, the GLU's clamp or its up offset left out."""
    for name, values in (("gate_up_split", ("halves", "interleaved")), ("fused_layout", ("linear", "conv1d"))):
        current = _get(data, (*moe, name))
        if current is not None and current != values[0]:  # only where the spec departs from the default
            dotted = ".".join((*moe, name))
            yield Mutant(f"{dotted}: {current} -> {values[0]}", "setting", dotted,
                         f"{dotted} {current!r} -> {values[0]!r}", _with(data, (*moe, name), values[0]))  # fmt: skip
    for name in ("gate_up_bias", "down_bias", "clamp_limit", "up_offset"):
        if _get(data, (*moe, name)) not in (None, 0):
            dotted = ".".join((*moe, name))
            mutated = _with(data, (*moe, name), None, drop=True)
            yield Mutant(f"drop {dotted}", "drop", dotted, f"{dotted} left out", mutated)


def _drops(data: Data) -> Iterator[Mutant]:
    """An optional field left out."""
    paths = [(*at, *rest) for at in _blocks(data) for rest in _BLOCK_OPTIONAL] + list(_SPEC_OPTIONAL)
    paths += [("config", key) for key in data.get("config", {}) if key not in _REQUIRED_CONFIG]
    for path in paths:
        if path[-1] == "output_index" and _get(data, path) == 0:
            continue  # null selects element 0 as well: the same spec
        if _get(data, path) is not None and path[-1] in (_get(data, path[:-1]) or {}):
            dotted = ".".join(path)
            yield Mutant(f"drop {dotted}", "drop", dotted, f"left out {dotted}", _with(data, path, None, drop=True))


def _expression_fields(data: Data) -> Iterator[tuple[tuple[str, ...], Any]]:
    """Every config value and every other scalar setting that may hold an expression or a literal."""
    for key, value in data.get("config", {}).items():
        yield ("config", key), value
    for at in _blocks(data):
        block = _get(data, at)
        for path in (("kind",), ("mlp", "kind"), ("attn", "softcap")):
            if _get(block, path) is not None:
                yield (*at, *path), _get(block, path)
    for path in (
        ("unembed", "pre_scale"),
        ("unembed", "softcap"),
        ("call", "window"),
        ("pos_embed", "offset"),
        ("encoder", "pos_embed", "offset"),
        ("embed", "norm_after_pos"),
        ("encoder", "embed", "norm_after_pos"),
    ):
        if _get(data, path) is not None:
            yield path, _get(data, path)
    for key, value in (_get(data, ("call", "rotary_args")) or {}).items():
        yield ("call", "rotary_args", key), value
    for stack in (("score_bias",), ("encoder", "score_bias")):
        for key, value in (_get(data, (*stack, "params")) or {}).items():
            yield (*stack, "params", key), value


def _parse(value: Any) -> ast.Expression | None:
    """A spec expression's syntax tree (None for literals and for text that is not an expression)."""
    if not isinstance(value, str):
        return None
    try:
        return ast.parse(value, mode="eval")
    except SyntaxError:
        return None


def _perturbed(value: Any) -> list[tuple[str, Any]]:
    """(description, new value) for a literal, or for each numeric operand of an expression."""
    if isinstance(value, bool):
        return [(f"{value} -> {not value}", not value)]
    if isinstance(value, int):
        return [(f"{value} -> {value + 1}", value + 1)]
    if isinstance(value, float):
        new = value * 1.5 if value else 1.0
        return [(f"{value} -> {new}", new)]
    tree = _parse(value)
    if tree is None:
        return []
    out = []
    constants = [n for n in ast.walk(tree) if isinstance(n, ast.Constant) and type(n.value) in (int, float)]
    for index in range(len(constants)):
        mutated = copy.deepcopy(tree)
        node = [n for n in ast.walk(mutated) if isinstance(n, ast.Constant) and type(n.value) in (int, float)][index]
        old = node.value
        node.value = old + 1 if isinstance(old, int) else (old * 1.5 if old else 1.0)
        out.append((f"operand {old} -> {node.value} in '{value}'", ast.unparse(mutated)))
    return out


def _branches(value: Any) -> list[tuple[str, Any]]:
    """The expression with one conditional forced to its `if` or its `else` side."""
    tree = _parse(value)
    if tree is None:
        return []
    out = []
    count = sum(isinstance(n, ast.IfExp) for n in ast.walk(tree))
    for index in range(count):
        for side in ("body", "orelse"):
            mutated = copy.deepcopy(tree)
            node = [n for n in ast.walk(mutated) if isinstance(n, ast.IfExp)][index]
            text = ast.unparse(_Force(node, getattr(node, side)).visit(mutated))
            out.append((f"'{value}' forced to its {'if' if side == 'body' else 'else'} side", text))
    return out


class _Force(ast.NodeTransformer):
    """Replaces one conditional node by one of its sides."""

    def __init__(self, node: ast.IfExp, side: ast.expr) -> None:
        self.node, self.side = node, side

    def visit_IfExp(self, n: ast.IfExp) -> ast.AST:
        return self.side if n is self.node else self.generic_visit(n)


def _values(data: Data) -> Iterator[Mutant]:
    for path, value in _expression_fields(data):
        dotted = ".".join(path)
        for description, new in _perturbed(value):
            yield Mutant(f"perturb {dotted}: {description}", "perturb", dotted, description, _with(data, path, new))
        for description, new in _branches(value):
            yield Mutant(f"branch {dotted}: {description}", "branch", dotted, description, _with(data, path, new))


OPERATORS: dict[str, Callable[[Data], Iterator[Mutant]]] = {
    "swap": _swaps,
    "kind": _kinds,
    "drop": _drops,
    "perturb": _values,
}


def mutants(data: Data, operators: Sequence[str] | None = None) -> list[Mutant]:
    """Every mutant of merged spec data, named uniquely, in a stable order."""
    found: dict[str, Mutant] = {}
    for name, operator in OPERATORS.items():
        if operators is None or name in operators:
            for mutant in operator(data):
                found.setdefault(mutant.name, mutant)
    return list(found.values())


# ----------------------------------------------------------------------------- running them
def merged_data(spec: str | Path, registry: Registry | None = None) -> RawSpec:
    """The spec's raw data with `extends:` applied (a registered name or a YAML path)."""
    registry = registry or default_registry()
    text = str(spec)
    raw = read_raw_spec(text) if text.endswith((".yaml", ".yml")) or Path(text).is_file() else registry.entry(text).raw
    return resolve_extends(raw, registry.raw_spec)


def first_failure(spec: Spec, registry: Registry) -> tuple[str | None, str]:
    """The first check that fails on any of the spec's test models (base, variants, eager), stopping
    there: (`check[variant]`, its message), or (None, "") when every check passes on every model."""
    from .catalogue import catalogue
    from .runner import build_context, run_check, variants_of

    for variant in variants_of(spec):
        ctx = build_context(spec, registry=registry, variant=variant)
        for item in catalogue():
            result = run_check(item, ctx)
            if result.status == "fail":
                return (item.name if variant is None else f"{item.name}[{variant}]"), result.message
    return None, ""


def _same_function(named: set[str], acts: set[str]) -> bool:
    """Whether two sets of activation names denote one function (equal, or aliases of each other)."""
    return named == acts or any(named | acts <= group for group in _SAME_FUNCTION)


def _activations(spec: Spec) -> set[str]:
    """The activation names the spec's `config.act_fn` gives on each of its test models."""
    from ..bridge import loading
    from ..spec.config import normalize_config
    from .runner import variants_of

    names = set()
    for variant in variants_of(spec):
        kwargs = {"attn_implementation": "eager"} if variant not in (None, *spec.variants) else {"variant": variant}
        names.add(str(normalize_config(spec, loading.random_model(spec, tiny=True, **kwargs).config).act_fn))
    return names


def mutate(
    spec: str | Path,
    *,
    registry: Registry | None = None,
    operators: Sequence[str] | None = None,
    progress: Callable[[MutantResult], None] | None = None,
    only: Callable[[Mutant], bool] | None = None,
) -> MutationReport:
    """Run every mutant of `spec` through the catalogue; each is killed by its first failing check.
    `only` keeps the mutants it accepts (tests mutate a spec that `extends` another on its own fields)."""
    registry = registry or default_registry()
    raw = merged_data(spec, registry)
    report = MutationReport(raw.name)
    start = time.perf_counter()
    spec_ = validate_spec(raw)
    original, acts = spec_.model_dump(), _activations(spec_)
    for mutant in mutants(raw.data, operators):
        if only is not None and not only(mutant):
            continue
        began = time.perf_counter()
        try:
            candidate = validate_spec(RawSpec(raw.file, mutant.data, raw.lines))
        except BridgeCoreError as exc:
            result = MutantResult(mutant, "schema", str(exc))
        else:
            if candidate.model_dump() == original:
                continue  # e.g. a dropped field that held its default: the same spec, not a mistake
            named = candidate.config.get("act_fn") if mutant.operator == "kind" else None
            if (
                mutant.field == "config.act_fn"
                and isinstance(named, str)
                and _same_function({named.strip("'\"")}, acts)
            ):
                continue  # the activation every test model already uses, named literally: not a mistake
            killed_by, message = first_failure(candidate, registry)
            result = MutantResult(mutant, killed_by, message)
        result.seconds = time.perf_counter() - began
        report.results.append(result)
        if progress is not None:
            progress(result)
    report.seconds = time.perf_counter() - start
    return report


def _rotary_per_layer(data: dict, at: tuple[str, ...], attn: dict) -> Iterator[Mutant]:
    """Where rotary positions meet the q/k norms in the other order, and every layer rotated (NoPE layers lost)."""
    pos = data.get("pos_embed")
    if not (isinstance(pos, dict) and str(pos.get("kind")).startswith("rotary")):
        return
    dotted = ".".join((*at, "attn"))
    if attn.get("q_norm") is not None:
        now = attn.get("qk_norm_at", "before_rotary")
        other = "after_rotary" if now == "before_rotary" else "before_rotary"
        yield Mutant(f"{dotted}.qk_norm_at: {now} -> {other}", "setting", f"{dotted}.qk_norm_at",
                     f"q/k norms {other}", _with(data, (*at, "attn", "qk_norm_at"), other))  # fmt: skip
    if isinstance(attn.get("rotary"), str):
        yield Mutant(f"{dotted}.rotary -> true", "setting", f"{dotted}.rotary", "rotary on every layer",
                     _with(data, (*at, "attn", "rotary"), True))  # fmt: skip
