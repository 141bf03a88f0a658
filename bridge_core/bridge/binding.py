"""Binding a spec to a model: resolve every module path once, and lay out the hook points.

Called once when a bridge is built. Everything per-call (which modules to hook, which views to
apply) is decided here, so a forward does no path lookups, no signature inspection.
"""

from __future__ import annotations

from torch import nn

from ..errors import BindError, SpecError, close_matches
from ..plugin_host import Kinds
from ..spec.config import BridgeConfig, evaluate_field, spec_error
from ..spec.schema import BLOCK_KINDS, ModulePath, NormSpec, Spec
from .bound import (
    BoundAttention,
    BoundBlock,
    BoundCrossAttention,
    BoundMLP,
    BoundModel,
    BoundNorm,
    BoundStack,
)
from .layout import lay_out_points

__all__ = [
    "BoundAttention",
    "BoundBlock",
    "BoundCrossAttention",
    "BoundMLP",
    "BoundModel",
    "BoundNorm",
    "BoundStack",
    "bind",
    "resolve_path",
]


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
        kind = evaluate_field(spec_file, "block.kind", kind, hf_config, spec)
    if kind not in BLOCK_KINDS:
        raise spec_error(
            f"evaluates to {kind!r}; expected one of {', '.join(BLOCK_KINDS)}", spec, spec_file, "block.kind"
        )
    return kind


def _bind_blocks(
    model: nn.Module,
    path: ModulePath,
    field_name: str,
    n_layers: int,
    block_spec,
    kinds: Kinds,
    kind: str,
    spec: Spec | None = None,
) -> list[BoundBlock]:
    blocks_list, blocks_path = resolve_path(model, path, field_name)
    if not isinstance(blocks_list, (nn.ModuleList, nn.Sequential)):
        raise BindError(
            f"'{blocks_path}' is a {type(blocks_list).__name__}, not a ModuleList of blocks",
            spec_path=field_name,
            module_path=blocks_path,
        )
    if len(blocks_list) != n_layers:
        count_field = "config.n_encoder_layers" if field_name.startswith("encoder") else "config.n_layers"
        raise BindError(
            f"{count_field} evaluates to {n_layers} but '{blocks_path}' holds {len(blocks_list)} blocks",
            spec_path=count_field,
            module_path=blocks_path,
        )
    return [
        _bind_block(
            i,
            block,
            f"{blocks_path}.{i}.",
            block_spec,
            kinds,
            kind,
            field_name.replace("blocks", "block"),
            model.config,
            spec,
        )
        for i, block in enumerate(blocks_list)
    ]


def bind(model: nn.Module, spec: Spec, cfg: BridgeConfig, kinds: Kinds, spec_file: str | None = None) -> BoundModel:
    embed, _ = resolve_path(model, spec.embed.path, "embed.path")
    embed_project = _optional(model, spec.embed.project, "embed.project")
    pos_embed = None
    if spec.pos_embed is not None and spec.pos_embed.path is not None:
        pos_embed, _ = resolve_path(model, spec.pos_embed.path, "pos_embed.path")
    kind = block_kind(spec, model.config, spec_file)
    blocks = _bind_blocks(model, spec.blocks, "blocks", cfg.n_layers, spec.block, kinds, kind, spec)
    ln_final = _bind_norm(model, spec.ln_final, "ln_final", "", kinds)
    unembed, unembed_path = resolve_path(model, spec.unembed.path, "unembed.path")
    unembed_project = _optional(model, spec.unembed.project, "unembed.project")
    score_bias = (
        resolve_path(model, spec.score_bias.path, "score_bias.path")[0]
        if spec.score_bias and spec.score_bias.path
        else None
    )
    encoder = None
    if spec.encoder is not None:
        enc = spec.encoder
        n_encoder = cfg.extra.get("n_encoder_layers")
        if not isinstance(n_encoder, int):
            raise spec_error("an encoder stack needs the normalized field n_encoder_layers", spec, spec_file, "config")
        encoder = BoundStack(
            embed=resolve_path(model, enc.embed.path, "encoder.embed.path")[0],
            blocks=_bind_blocks(model, enc.blocks, "encoder.blocks", n_encoder, enc.block, kinds, "sequential", spec),
            ln_final=_bind_norm(model, enc.ln_final, "encoder.ln_final", "", kinds),
            score_bias=resolve_path(model, enc.score_bias.path, "encoder.score_bias.path")[0]
            if enc.score_bias and enc.score_bias.path
            else None,
        )
    bound = BoundModel(
        embed, pos_embed, blocks, ln_final, unembed, unembed_path, embed_project, unembed_project, score_bias, encoder
    )
    bound.embed_norm = _bind_norm(model, spec.embed.norm, "embed.norm", "", kinds)
    position_kind = kinds.positions[spec.pos_embed.kind if spec.pos_embed else "none"]
    bound.points = lay_out_points(bound, spec, cfg, position_kind, kinds)
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


def _bind_attention(block: nn.Module, spec_attn, field_name: str, prefix: str, kinds: Kinds) -> BoundAttention:
    module, path = resolve_path(block, spec_attn.path, f"{field_name}.path", prefix)
    inner = f"{path}."
    if spec_attn.qkv.kind == "fused":
        qkv = {"qkv": resolve_path(module, spec_attn.qkv.path, f"{field_name}.qkv.path", inner)[0]}
    else:
        qkv = {n: resolve_path(module, getattr(spec_attn.qkv, n), f"{field_name}.qkv.{n}", inner)[0] for n in "qkv"}
    return BoundAttention(
        module,
        path,
        qkv,
        resolve_path(module, spec_attn.o, f"{field_name}.o", inner)[0],
        spec_attn.layout,
        spec_attn.qkv.order,
        q_norm=_bind_norm(module, spec_attn.q_norm, f"{field_name}.q_norm", inner, kinds),
        k_norm=_bind_norm(module, spec_attn.k_norm, f"{field_name}.k_norm", inner, kinds),
    )


def mlp_kind(block_spec, hf_config: object, field: str = "block", spec: Spec | None = None) -> str:
    kind = block_spec.mlp.kind
    if kind not in ("plain", "gated"):
        kind = evaluate_field(None, f"{field}.mlp.kind", kind, hf_config, spec)
    if kind not in ("plain", "gated"):
        raise spec_error(f"evaluates to {kind!r}; expected 'plain' or 'gated'", spec, None, f"{field}.mlp.kind")
    return kind


def _bind_block(
    index: int,
    block: nn.Module,
    prefix: str,
    b,
    kinds: Kinds,
    kind: str,
    field: str,
    hf_config: object,
    spec: Spec | None = None,
) -> BoundBlock:
    attn = _bind_attention(block, b.attn, f"{field}.attn", prefix, kinds)
    mlp_module, mlp_path = resolve_path(block, b.mlp.path, f"{field}.mlp.path", prefix)
    mlp_prefix = f"{mlp_path}." if mlp_module is not block else prefix
    w_in, _ = resolve_path(mlp_module, b.mlp.in_, f"{field}.mlp.in", mlp_prefix)
    gated = mlp_kind(b, hf_config, field, spec) == "gated"
    if gated and b.mlp.gate is None:
        raise SpecError("the MLP is gated for this config but the spec names no 'gate'", field=f"{field}.mlp.gate")
    w_gate = resolve_path(mlp_module, b.mlp.gate, f"{field}.mlp.gate", mlp_prefix)[0] if gated else None
    w_out, _ = resolve_path(mlp_module, b.mlp.out, f"{field}.mlp.out", mlp_prefix)
    mlp = BoundMLP(mlp_module, mlp_path.rstrip("."), w_in, w_gate, w_out, b.mlp.layout)
    cross = None
    if b.cross_attn is not None:
        c = b.cross_attn
        cross = BoundCrossAttention(
            attn=_bind_attention(block, c.attn, f"{field}.cross_attn.attn", prefix, kinds),
            ln=None,  # bound with the block's other norms below
            residual_at=resolve_path(block, c.residual_at, f"{field}.cross_attn.residual_at", prefix)[0]
            if c.residual_at
            else None,
        )
    norms = {
        "ln1": b.ln1, "ln2": b.ln2, "ln1_post": b.ln1_post, "ln2_post": b.ln2_post,
        "cross_attn.ln": b.cross_attn.ln if b.cross_attn else None,
    }  # fmt: skip
    bound_norms = {role: _bind_norm(block, n, f"{field}.{role}", prefix, kinds) for role, n in norms.items()}
    seen: dict[int, str] = {}
    for role, norm in bound_norms.items():
        if norm is None:
            continue
        if id(norm.module) in seen:
            raise BindError(
                f"{field}.{role} and {field}.{seen[id(norm.module)]} name the same module; each norm is one module",
                spec_path=f"{field}.{role}.path",
                module_path=norm.path,
            )
        seen[id(norm.module)] = role
    if cross is not None:
        cross.ln = bound_norms["cross_attn.ln"]
    return BoundBlock(
        index,
        block,
        prefix.rstrip("."),
        kind,
        bound_norms["ln1"],
        attn,
        bound_norms["ln2"],
        mlp,
        bound_norms["ln1_post"],
        bound_norms["ln2_post"],
        cross,
        resolve_path(block, b.resid_mid_at, f"{field}.resid_mid_at", prefix)[0] if b.resid_mid_at else None,
        resolve_path(block, b.attn_out_at, f"{field}.attn_out_at", prefix)[0] if b.attn_out_at else None,
        resolve_path(block, b.mlp_out_at, f"{field}.mlp_out_at", prefix)[0] if b.mlp_out_at else None,
    )
