"""Binding a spec to a model: resolve every module path once, and lay out the hook points.

Called once when a bridge is built. Everything per-call (which modules to hook, which views to
apply) is decided here, so a forward does no path lookups, no signature inspection.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import nn

from ..errors import BindError, SpecError, close_matches
from ..kinds import NormKind, PositionKind
from ..plugin_host import Kinds
from ..spec.config import BridgeConfig, evaluate_field
from ..spec.schema import BLOCK_KINDS, ModulePath, NormSpec, Spec
from .hook_points import HookPoint
from .places import (
    AttentionValue,
    FlatTokens,
    HeadResult,
    HeadsFirst,
    ModuleInput,
    ModuleOutput,
    NormValue,
    SplitHeads,
    TokenShape,
    qkv_views,
)


@dataclass
class BoundNorm:
    module: nn.Module
    path: str
    kind: NormKind


@dataclass
class BoundAttention:
    module: nn.Module
    path: str
    qkv: dict[str, nn.Module]  # "qkv" (fused) or "q", "k", "v"
    o: nn.Module
    layout: str
    order: str
    q_norm: BoundNorm | None = None
    k_norm: BoundNorm | None = None


@dataclass
class BoundMLP:
    module: nn.Module
    path: str
    w_in: nn.Module
    w_gate: nn.Module | None
    w_out: nn.Module
    layout: str


@dataclass
class BoundBlock:
    index: int
    module: nn.Module
    path: str
    kind: str  # sequential | parallel | post_norm, evaluated for this model
    ln1: BoundNorm | None
    attn: BoundAttention
    ln2: BoundNorm | None
    mlp: BoundMLP
    ln1_post: BoundNorm | None = None
    ln2_post: BoundNorm | None = None


@dataclass
class BoundModel:
    """The model's modules as the spec names them, and the hook points laid over them."""

    embed: nn.Module
    pos_embed: nn.Module | None
    blocks: list[BoundBlock]
    ln_final: BoundNorm | None
    unembed: nn.Module
    unembed_path: str
    embed_project: nn.Module | None = None
    unembed_project: nn.Module | None = None
    points: dict[str, HookPoint] = field(default_factory=dict)


def resolve_path(root: nn.Module, path: ModulePath, spec_field: str, prefix: str = "") -> tuple[nn.Module, str]:
    """The module at `path` under `root` (first existing alternative), or a BindError with suggestions."""
    alternatives = [path] if isinstance(path, str) else list(path)
    for candidate in alternatives:
        module = _get(root, candidate)
        if module is not None:
            return module, f"{prefix}{candidate}"
    shown = " or ".join(f"{prefix}{a}" for a in alternatives)
    names = [n for n, _ in root.named_modules() if n]
    suggestions = []
    for candidate in alternatives:
        suggestions += [f"{prefix}{s}" for s in close_matches(candidate, names)]
        suggestions += [f"{prefix}{n}" for n in names if n.split(".")[-1] == candidate.split(".")[-1]][:3]
    raise BindError(
        f"The model ({type(root).__name__} at '{prefix.rstrip('.') or '<root>'}') has no module {shown}",
        spec_path=spec_field,
        module_path=shown,
        suggestions=list(dict.fromkeys(suggestions))[:5],
    )


def _get(root: nn.Module, dotted: str) -> nn.Module | None:
    if dotted in ("", "."):
        return root
    module: nn.Module | None = root
    for part in dotted.split("."):
        if module is None:
            return None
        children = module._modules
        module = children.get(part) if part in children else None
    return module


def block_kind(spec: Spec, hf_config: object, spec_file: str | None = None) -> str:
    """The block kind for this model: a literal, or an expression over the HF config."""
    kind = spec.block.kind
    if kind not in BLOCK_KINDS:
        kind = evaluate_field(spec_file, "block.kind", kind, hf_config)
    if kind not in BLOCK_KINDS:
        raise SpecError(
            f"evaluates to {kind!r}; expected one of {', '.join(BLOCK_KINDS)}", file=spec_file, field="block.kind"
        )
    return kind


def bind(model: nn.Module, spec: Spec, cfg: BridgeConfig, kinds: Kinds, spec_file: str | None = None) -> BoundModel:
    embed, _ = resolve_path(model, spec.embed.path, "embed.path")
    embed_project = _optional(model, spec.embed.project, "embed.project")
    pos_embed = None
    if spec.pos_embed is not None and spec.pos_embed.path is not None:
        pos_embed, _ = resolve_path(model, spec.pos_embed.path, "pos_embed.path")
    blocks_list, blocks_path = resolve_path(model, spec.blocks, "blocks")
    if not isinstance(blocks_list, (nn.ModuleList, nn.Sequential)):
        raise BindError(
            f"'{blocks_path}' is a {type(blocks_list).__name__}, not a ModuleList of blocks",
            spec_path="blocks",
            module_path=blocks_path,
        )
    if len(blocks_list) != cfg.n_layers:
        raise BindError(
            f"config.n_layers evaluates to {cfg.n_layers} but '{blocks_path}' holds {len(blocks_list)} blocks",
            spec_path="config.n_layers",
            module_path=blocks_path,
        )
    kind = block_kind(spec, model.config, spec_file)
    blocks = [_bind_block(i, block, f"{blocks_path}.{i}.", spec, kinds, kind) for i, block in enumerate(blocks_list)]
    ln_final = _bind_norm(model, spec.ln_final, "ln_final", "", kinds)
    unembed, unembed_path = resolve_path(model, spec.unembed.path, "unembed.path")
    unembed_project = _optional(model, spec.unembed.project, "unembed.project")
    bound = BoundModel(embed, pos_embed, blocks, ln_final, unembed, unembed_path, embed_project, unembed_project)
    position_kind = kinds.positions[spec.pos_embed.kind if spec.pos_embed else "none"]
    bound.points = _lay_out_points(bound, spec, cfg, position_kind)
    return bound


def _optional(root: nn.Module, path: ModulePath | None, spec_field: str) -> nn.Module | None:
    """A module that some configs of the family have and others lack (OPT's project_in)."""
    if path is None:
        return None
    alternatives = [path] if isinstance(path, str) else path
    return next((m for a in alternatives if (m := _get(root, a)) is not None), None)


def _bind_norm(root: nn.Module, norm: NormSpec | None, spec_field: str, prefix: str, kinds: Kinds) -> BoundNorm | None:
    if norm is None:
        return None
    if norm.optional:
        module = _optional(root, norm.path, spec_field)
        if module is None:
            return None
        path = prefix + (norm.path if isinstance(norm.path, str) else norm.path[0])
    else:
        module, path = resolve_path(root, norm.path, f"{spec_field}.path", prefix)
    return BoundNorm(module, path, kinds.norms[norm.kind])


def _bind_block(index: int, block: nn.Module, prefix: str, spec: Spec, kinds: Kinds, kind: str) -> BoundBlock:
    b = spec.block
    attn_module, attn_path = resolve_path(block, b.attn.path, "block.attn.path", prefix)
    attn_prefix = f"{attn_path}."
    if b.attn.qkv.kind == "fused":
        qkv = {"qkv": resolve_path(attn_module, b.attn.qkv.path, "block.attn.qkv.path", attn_prefix)[0]}
    else:
        qkv = {
            name: resolve_path(attn_module, getattr(b.attn.qkv, name), f"block.attn.qkv.{name}", attn_prefix)[0]
            for name in ("q", "k", "v")
        }
    o, _ = resolve_path(attn_module, b.attn.o, "block.attn.o", attn_prefix)
    attn = BoundAttention(
        attn_module,
        attn_path,
        qkv,
        o,
        b.attn.layout,
        b.attn.qkv.order,
        q_norm=_bind_norm(attn_module, b.attn.q_norm, "block.attn.q_norm", attn_prefix, kinds),
        k_norm=_bind_norm(attn_module, b.attn.k_norm, "block.attn.k_norm", attn_prefix, kinds),
    )
    mlp_module, mlp_path = resolve_path(block, b.mlp.path, "block.mlp.path", prefix)
    mlp_prefix = f"{mlp_path}." if mlp_module is not block else prefix
    w_in, _ = resolve_path(mlp_module, b.mlp.in_, "block.mlp.in", mlp_prefix)
    w_gate = resolve_path(mlp_module, b.mlp.gate, "block.mlp.gate", mlp_prefix)[0] if b.mlp.gate else None
    w_out, _ = resolve_path(mlp_module, b.mlp.out, "block.mlp.out", mlp_prefix)
    mlp = BoundMLP(mlp_module, mlp_path.rstrip("."), w_in, w_gate, w_out, b.mlp.layout)
    return BoundBlock(
        index,
        block,
        prefix.rstrip("."),
        kind,
        _bind_norm(block, b.ln1, "block.ln1", prefix, kinds),
        attn,
        _bind_norm(block, b.ln2, "block.ln2", prefix, kinds),
        mlp,
        _bind_norm(block, b.ln1_post, "block.ln1_post", prefix, kinds),
        _bind_norm(block, b.ln2_post, "block.ln2_post", prefix, kinds),
    )


def _lay_out_points(
    bound: BoundModel, spec: Spec, cfg: BridgeConfig, position_kind: PositionKind
) -> dict[str, HookPoint]:
    """Every hook point, in the order the forward reaches them (the order of `hook_names()`)."""
    points: dict[str, HookPoint] = {}

    def add(name: str, place) -> None:
        points[name] = HookPoint(name, place)

    def add_norm(prefix: str, norm: BoundNorm | None, view=None) -> None:
        if norm is None:
            return
        for which in ("scale", "normalized"):
            add(f"{prefix}.hook_{which}", NormValue(norm.module, norm.path, which=which, kind=norm.kind, view=view))

    add("hook_embed", ModuleOutput(bound.embed, "embed"))
    if bound.embed_project is not None:
        add("hook_project_in", ModuleOutput(bound.embed_project, "embed.project"))
    if bound.pos_embed is not None and position_kind.has_table:
        add("hook_pos_embed", ModuleOutput(bound.pos_embed, "pos_embed"))
    rotary = position_kind.rotates_qk
    h, d = cfg.n_heads, cfg.d_head
    b = spec.block
    for block in bound.blocks:
        p = f"blocks.{block.index}"
        flat = None
        if b.mlp.flat_tokens:
            flat = FlatTokens(TokenShape(), block.module)
        add(f"{p}.hook_resid_pre", ModuleInput(block.module, block.path, arg=0, kwarg=b.hidden_states_kwarg))
        if block.kind != "post_norm":
            add_norm(f"{p}.ln1", block.ln1)
        attn = block.attn
        views = qkv_views(h, cfg.n_kv_heads, d, "qkv" in attn.qkv, attn.order)
        modules = dict.fromkeys("qkv", attn.qkv["qkv"]) if "qkv" in attn.qkv else attn.qkv
        for n in "qkv":
            add(f"{p}.attn.hook_{n}", ModuleOutput(modules[n], f"{attn.path}.{n}", view=views[n]))
        norm_view = HeadsFirst() if b.attn.qk_norm_layout == "bhsd" else None
        add_norm(f"{p}.attn.q_norm", attn.q_norm, norm_view)
        add_norm(f"{p}.attn.k_norm", attn.k_norm, norm_view)
        if rotary:
            add(f"{p}.attn.hook_rot_q", AttentionValue(attn.module, attn.path, which="rot_q"))
            add(f"{p}.attn.hook_rot_k", AttentionValue(attn.module, attn.path, which="rot_k"))
        add(f"{p}.attn.hook_attn_scores", AttentionValue(attn.module, attn.path, which="scores"))
        add(f"{p}.attn.hook_pattern", AttentionValue(attn.module, attn.path, which="pattern"))
        add(f"{p}.attn.hook_z", ModuleInput(attn.o, f"{attn.path}.o", view=SplitHeads(h, d), kwarg="input"))
        add(
            f"{p}.attn.hook_result",
            HeadResult(attn.o, f"{attn.path}.o", n_heads=h, d_head=d, layout=attn.layout),
        )
        if block.ln1_post is not None:
            add_norm(f"{p}.ln1_post", block.ln1_post)
            add(f"{p}.hook_attn_out", ModuleOutput(block.ln1_post.module, block.ln1_post.path))
        else:
            add(f"{p}.hook_attn_out", ModuleOutput(attn.module, attn.path, index=b.attn.output_index))
        if block.kind == "sequential" and block.ln2 is not None:
            # HF adds the attention output to the residual and hands that one tensor both to ln2 and,
            # as `residual`, to the add after the MLP: an edit must be made in place to reach both.
            add(f"{p}.hook_resid_mid", ModuleInput(block.ln2.module, block.ln2.path, in_place=True, view=flat))
            add_norm(f"{p}.ln2", block.ln2, flat)
        elif block.kind == "parallel":
            add_norm(f"{p}.ln2", block.ln2, flat)
        else:  # post_norm: ln1 normalizes the mid residual, ln2 the block output
            add(f"{p}.hook_resid_mid", ModuleInput(block.ln1.module, block.ln1.path))
            add_norm(f"{p}.ln1", block.ln1)
        mlp = block.mlp
        if mlp.w_gate is not None:
            add(f"{p}.mlp.hook_pre", ModuleOutput(mlp.w_gate, f"{mlp.path}.gate", view=flat))
            add(f"{p}.mlp.hook_pre_linear", ModuleOutput(mlp.w_in, f"{mlp.path}.in", view=flat))
        else:
            add(f"{p}.mlp.hook_pre", ModuleOutput(mlp.w_in, f"{mlp.path}.in", view=flat))
        add(f"{p}.mlp.hook_post", ModuleInput(mlp.w_out, f"{mlp.path}.out", kwarg="input", view=flat))
        if block.ln2_post is not None:
            add_norm(f"{p}.ln2_post", block.ln2_post)
            add(f"{p}.hook_mlp_out", ModuleOutput(block.ln2_post.module, block.ln2_post.path))
        elif mlp.module is block.module:  # no MLP module of its own (OPT): its output projection's output
            add(f"{p}.hook_mlp_out", ModuleOutput(mlp.w_out, f"{mlp.path}.out", view=flat))
        else:
            add(f"{p}.hook_mlp_out", ModuleOutput(mlp.module, mlp.path, view=flat))
        if block.kind == "post_norm":
            add(f"{p}.hook_resid_post", ModuleInput(block.ln2.module, block.ln2.path))
            add_norm(f"{p}.ln2", block.ln2)
            add(f"{p}.hook_normalized_resid_post", ModuleOutput(block.module, block.path, index=b.output_index))
        else:
            add(f"{p}.hook_resid_post", ModuleOutput(block.module, block.path, index=b.output_index))
    add_norm("ln_final", bound.ln_final)
    if bound.unembed_project is not None:
        add("hook_project_out", ModuleOutput(bound.unembed_project, "unembed.project"))
    add("hook_unembed", ModuleOutput(bound.unembed, bound.unembed_path))
    return points
