"""`bridge-core validate`: every problem of a spec at once, not only the first.

Schema errors come from loading (file:line:field). Then every module path of the spec is resolved
against a tiny model built from its `test_config`, each on its own, so one typo does not hide the
next; only when all paths exist is the spec bound for real (shapes, layouts, kinds).
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from .bridge.binding import resolve_path
from .errors import BindError
from .spec.schema import AttentionSpec, BlockSpec, ModulePath, NormSpec, Spec


@dataclass(frozen=True)
class PathProblem:
    """A module path of the spec that does not exist on the model."""

    field: str
    file: str | None
    line: int | None
    error: BindError

    def __str__(self) -> str:
        where = f"{self.file or '<spec>'}{f':{self.line}' if self.line else ''}"
        return f"{where}: {self.error}"


def missing_paths(spec: Spec, model: nn.Module) -> list[PathProblem]:
    """Every module path of `spec` that `model` lacks, each with the nearest real names."""
    problems: list[PathProblem] = []

    def check(root: nn.Module, path: ModulePath | None, field: str, prefix: str = "") -> nn.Module | None:
        if path is None:
            return None
        try:
            return resolve_path(root, path, field, prefix)[0]
        except BindError as exc:
            file, line = spec.where(field)
            problems.append(PathProblem(field, file, line, exc))
            return None

    def norm(root: nn.Module, n: NormSpec | None, field: str, prefix: str) -> None:
        if n is not None and not n.optional:
            check(root, n.path, f"{field}.path", prefix)

    def attention(block: nn.Module, a: AttentionSpec, field: str, prefix: str) -> None:
        module = check(block, a.path, f"{field}.path", prefix)
        if module is None:
            return
        inner = prefix + (a.path if isinstance(a.path, str) else a.path[0]) + "."
        if a.qkv.kind == "fused":
            check(module, a.qkv.path, f"{field}.qkv.path", inner)
        else:
            for n in "qkv":
                check(module, getattr(a.qkv, n), f"{field}.qkv.{n}", inner)
        check(module, a.o, f"{field}.o", inner)
        norm(module, a.q_norm, f"{field}.q_norm", inner)
        norm(module, a.k_norm, f"{field}.k_norm", inner)

    def block(blocks_path: ModulePath, b: BlockSpec, field: str) -> None:
        blocks = check(model, blocks_path, field.replace("block", "blocks"))
        if blocks is None or not len(blocks):
            return
        first, prefix = blocks[0], f"{blocks_path if isinstance(blocks_path, str) else blocks_path[0]}.0."
        for role in ("ln1", "ln2", "ln1_post", "ln2_post"):
            norm(first, getattr(b, role), f"{field}.{role}", prefix)
        attention(first, b.attn, f"{field}.attn", prefix)
        mlp = check(first, b.mlp.path, f"{field}.mlp.path", prefix)
        if mlp is not None:
            inner = prefix if mlp is first else prefix + str(b.mlp.path) + "."
            for role, path in (("in", b.mlp.in_), ("gate", b.mlp.gate), ("out", b.mlp.out)):
                if role != "gate" or b.mlp.kind == "gated":
                    check(mlp, path, f"{field}.mlp.{role}", inner)
        for role in ("resid_mid_at", "attn_out_at", "mlp_out_at"):
            check(first, getattr(b, role), f"{field}.{role}", prefix)
        if b.cross_attn is not None:
            attention(first, b.cross_attn.attn, f"{field}.cross_attn.attn", prefix)
            norm(first, b.cross_attn.ln, f"{field}.cross_attn.ln", prefix)
            check(first, b.cross_attn.residual_at, f"{field}.cross_attn.residual_at", prefix)

    check(model, spec.embed.path, "embed.path")
    norm(model, spec.embed.norm, "embed.norm", "")
    if spec.pos_embed is not None:
        check(model, spec.pos_embed.path, "pos_embed.path")
    block(spec.blocks, spec.block, "block")
    norm(model, spec.ln_final, "ln_final", "")
    check(model, spec.unembed.path, "unembed.path")
    if spec.score_bias is not None:
        check(model, spec.score_bias.path, "score_bias.path")
    if spec.encoder is not None:
        enc = spec.encoder
        check(model, enc.embed.path, "encoder.embed.path")
        block(enc.blocks, enc.block, "encoder.block")
        norm(model, enc.ln_final, "encoder.ln_final", "")
        if enc.score_bias is not None:
            check(model, enc.score_bias.path, "encoder.score_bias.path")
    return problems
