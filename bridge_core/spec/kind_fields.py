"""The kind fields of a spec: every place a spec names a registered kind, listed once.

Read by the registry (an unknown kind is refused when a spec is registered) and by the binder (which
looks each one up), so the two never disagree about which fields name kinds.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

from ..errors import UnknownKindError, close_matches

if TYPE_CHECKING:
    from .schema import BlockSpec, NormSpec, Spec

# (extension point table on `Kinds`, what it is called in messages)
_NORM, _POSITION, _MASK, _BIAS, _CROSS, _ACT = (
    ("norms", "norm"),
    ("positions", "position"),
    ("mask_formats", "mask format"),
    ("score_biases", "score bias"),
    ("cross_attentions", "cross attention"),
    ("activations", "activation"),
)


def kind_references(spec: Spec) -> Iterator[tuple[tuple[str, str], str, str]]:
    """Every kind a spec names literally: ((table, what), kind name, dotted field). Read by the registry
    (unknown kinds at registration) and by the binder, so a kind field has one reader."""

    def norm(n: NormSpec | None, field: str):
        if n is not None:
            yield _NORM, n.kind, f"{field}.kind"

    def block(b: BlockSpec, at: str):
        for role in ("ln1", "ln2", "ln1_post", "ln2_post"):
            yield from norm(getattr(b, role), f"{at}.{role}")
        attentions = [(b.attn, f"{at}.attn")]
        if b.cross_attn is not None:
            attentions.append((b.cross_attn.attn, f"{at}.cross_attn.attn"))
        for attn, field in attentions:
            yield from norm(attn.q_norm, f"{field}.q_norm")
            yield from norm(attn.k_norm, f"{field}.k_norm")
            yield from norm(attn.o_norm, f"{field}.o_norm")
            if attn.out_gate is not None:
                yield _ACT, attn.out_gate.act, f"{field}.out_gate.act"
            yield from norm(attn.qkv.q_a_norm, f"{field}.qkv.q_a_norm")  # latent attention
            yield from norm(attn.qkv.kv_a_norm, f"{field}.qkv.kv_a_norm")
        if b.cross_attn is not None:
            yield from norm(b.cross_attn.ln, f"{at}.cross_attn.ln")
            yield _CROSS, b.cross_attn.kind, f"{at}.cross_attn.kind"
        yield from norm(b.mlp.out_norm, f"{at}.mlp.out_norm")
        if b.mlp.act_fn is not None:
            yield _ACT, b.mlp.act_fn, f"{at}.mlp.act_fn"

    yield from norm(spec.embed.norm, "embed.norm")
    yield _POSITION, spec.pos_embed.kind if spec.pos_embed else "none", "pos_embed.kind"
    yield from block(spec.block, "block")
    yield from norm(spec.ln_final, "ln_final")
    yield _MASK, spec.call.mask_format, "call.mask_format"
    if spec.score_bias is not None:
        yield _BIAS, spec.score_bias.kind, "score_bias.kind"
    if spec.encoder is not None:
        yield from block(spec.encoder.block, "encoder.block")
        yield from norm(spec.encoder.ln_final, "encoder.ln_final")
        yield from norm(spec.encoder.embed.norm, "encoder.embed.norm")
        if spec.encoder.pos_embed is not None:
            yield _POSITION, spec.encoder.pos_embed.kind, "encoder.pos_embed.kind"
        if spec.encoder.score_bias is not None:
            yield _BIAS, spec.encoder.score_bias.kind, "encoder.score_bias.kind"


def unknown_kind(spec: Spec, spec_file: str | None, found: Mapping, kind: str, what: str, field: str, plugins: str):
    hint = close_matches(kind, list(found))
    more = f" Did you mean: {', '.join(hint)}?" if hint else ""
    file, line = spec.where(field)
    return UnknownKindError(
        f"unknown {what} kind '{kind}': no installed plugin registers it. Known: "
        f"{', '.join(sorted(found)) or 'none'}.{more} Installed plugins: {plugins}.",
        file=file or spec_file,
        line=line,
        field=field,
    )


def kinds_plugins(kinds: Any) -> list[str]:
    """The plugins that registered kinds, for messages."""
    return sorted(set(kinds.origins.values()))
