"""TransformerLens compatibility mode: a processed copy with folded norms and centered weights.

`processed_copy(bridge)` deep-copies the HF model, rewrites the copy's weights through the weight
views (architecture-neutral) and returns a new bridge over it; the user's model is never touched.
"""

from __future__ import annotations

import copy
import warnings
from typing import Any

import torch
from torch import nn

from ..errors import ProcessingError
from ..transformers_internals import config_objects
from .bound import BoundNorm
from .weights import in_out


class ProcessingSkipped(UserWarning):
    """A transform left at its default was skipped because it is not exact on this model."""


def _meta_check(bridge: Any) -> None:
    if any(p.device.type == "meta" for p in bridge.model.parameters()):
        raise ProcessingError("processed_copy", "the model has offloaded (meta) parameters; load it fully first")


def inexact_transforms(bridge: Any) -> dict[str, str]:
    """Why each transform that is not exact on this model is not (transform name -> reason)."""
    bound = bridge.bound
    post_norm = any(block.kind == "post_norm" for block in bound.blocks)
    reasons: dict[str, str] = {}
    if post_norm:
        reasons["fold_ln"] = "post-norm blocks normalize the residual itself; there is no consumer"
    elif bound.unembed_project is not None or bound.unembed_pre_scale is not None:
        reasons["fold_ln"] = "the final norm does not feed the unembedding directly"
    norms = [bound.ln_final] + [n for b in bound.blocks for n in (b.ln1, b.mlp_norm)]
    if post_norm or any(n is None or not n.kind.centered for n in norms):
        reasons["center_writing_weights"] = (
            "only exact when every norm reading the residual subtracts its mean (LayerNorm); this model has "
            + ("post-norm blocks" if post_norm else "non-centering norms (RMSNorm)")
        )
    elif any(b.ln1_post is not None or b.ln2_post is not None for b in bound.blocks):
        reasons["center_writing_weights"] = "sublayer outputs pass through a norm before the residual"
    elif bound.embed_project is not None:
        reasons["center_writing_weights"] = "the embedding is projected (project_in) before the residual"
    if bound.final_softcap is not None:
        reasons["center_unembed"] = "a final logit softcap is not shift-invariant"
    if any(b.mlp.moe is not None for b in bound.blocks):  # router and 3-D expert weights: not folded yet
        for name in ("fold_ln", "center_writing_weights"):
            reasons.setdefault(name, "not implemented for mixture-of-experts MLPs")
    return reasons


def check_transforms(bridge: Any, fold_ln: bool, center_writing_weights: bool, center_unembed: bool) -> None:
    """Raise `ProcessingError` for the first requested transform that is not exact on this model."""
    _meta_check(bridge)
    reasons = inexact_transforms(bridge)
    requested = {"fold_ln": fold_ln, "center_writing_weights": center_writing_weights, "center_unembed": center_unembed}
    for name, wanted in requested.items():
        if wanted and name in reasons:
            raise ProcessingError(name, reasons[name])


def resolve_transforms(bridge: Any, flags: dict[str, bool | None]) -> dict[str, bool]:
    """Flags left at None become "where exact": True, or False with a `ProcessingSkipped` warning."""
    reasons = inexact_transforms(bridge)
    resolved = {}
    for name, flag in flags.items():
        if flag is None:
            flag = name not in reasons
            if not flag:
                warnings.warn(f"processed_copy: skipping {name}: {reasons[name]}", ProcessingSkipped, stacklevel=3)
        resolved[name] = flag
    return resolved


def processed_copy(
    bridge: Any,
    fold_ln: bool | None = None,
    center_writing_weights: bool | None = None,
    center_unembed: bool | None = None,
    fold_value_biases: bool | None = None,
) -> Any:
    """A new bridge over a processed deep copy of the model; log-probabilities are unchanged.

    fold_ln: each norm's weight (and bias) folded into the projections reading it, the norm left as pure
    normalization; center_writing_weights: everything writing to the residual made mean-zero (LayerNorm
    only); center_unembed: W_U mean-zero over the vocabulary; fold_value_biases: b_V folded into b_O.
    None (the default): applied where exact, else skipped with a `ProcessingSkipped` warning;
    True: applied, or a `ProcessingError` when not exact.
    """
    flags = resolve_transforms(
        bridge,
        {
            "fold_ln": fold_ln,
            "center_writing_weights": center_writing_weights,
            "center_unembed": center_unembed,
            "fold_value_biases": True if fold_value_biases is None else fold_value_biases,
        },
    )
    check_transforms(bridge, flags["fold_ln"], flags["center_writing_weights"], flags["center_unembed"])
    from .bridge import Bridge

    model = copy.deepcopy(bridge.model)
    out = Bridge.from_hf(model, bridge.spec, tokenizer=bridge.tokenizer, registry=bridge.registry)
    out.spec_file = bridge.spec_file
    _untie(out)
    with torch.no_grad():
        if flags["fold_ln"]:
            _fold_ln(out)
        if flags["center_writing_weights"]:
            _center_writing_weights(out)
        if flags["center_unembed"]:
            _center_unembed(out)
        if flags["fold_value_biases"]:
            _fold_value_biases(out)
    out.processing = flags
    return out


def _untie(bridge: Any) -> None:
    """Give the copy's unembedding its own weight, so transforms of W_E and W_U stay separate."""
    unembed, embed = bridge.bound.unembed, bridge.bound.embed
    if unembed.weight is embed.weight:
        unembed.weight = nn.Parameter(embed.weight.detach().clone(), requires_grad=embed.weight.requires_grad)
    for config in config_objects(bridge.model):
        if getattr(config, "tie_word_embeddings", False):
            config.tie_word_embeddings = False


def _bias(module: nn.Module, layout: str) -> torch.Tensor:
    """The module's bias, created (zeros) when it has none: folding may give it a non-zero one."""
    if getattr(module, "bias", None) is None:
        weight = module.weight
        width = in_out(module, layout).shape[1]
        module.bias = nn.Parameter(torch.zeros(width, dtype=weight.dtype, device=weight.device))
    return module.bias


def _fold_into(module: nn.Module, layout: str, w: torch.Tensor, b: torch.Tensor | None) -> None:
    """`W' = diag(w) W`, `b' = b_module + b @ W` on a projection reading the norm's output."""
    W = in_out(module, layout)  # [in, out], a view of the parameter
    if b is not None:
        shift = (b.float() @ W.float()).to(W.dtype)
        _bias(module, layout).add_(shift)
    W.copy_((W.float() * w.float()[:, None]).to(W.dtype))


def _fold_ln(bridge: Any) -> None:
    bound = bridge.bound
    consumers: dict[int, tuple[BoundNorm, list[tuple[nn.Module, str]]]] = {}

    def add(norm: BoundNorm | None, modules: list[nn.Module], layout: str) -> None:
        if norm is not None:
            consumers.setdefault(id(norm.module), (norm, []))[1].extend((m, layout) for m in modules)

    for block in bound.blocks:
        add(block.ln1, list(block.attn.qkv.values()), block.attn.layout)
        mlp = block.mlp
        # a fused gate/up module (Phi-3) is both w_in and w_gate: fold into it once
        add(block.mlp_norm, [m for m in dict.fromkeys((mlp.w_in, mlp.w_gate)) if m is not None], mlp.layout)
    add(bound.ln_final, [bound.unembed], "linear")
    for norm, modules in consumers.values():  # a norm shared by attention and MLP is folded into both, then reset
        weight, bias = norm.kind.weight(norm.module), norm.kind.bias(norm.module)
        w = weight + norm.kind.weight_offset if weight is not None else None
        for module, layout in modules:
            _fold_into(module, layout, w if w is not None else torch.ones(in_out(module, layout).shape[0]), bias)
        if weight is not None:
            weight.fill_(1.0 - norm.kind.weight_offset)
        if bias is not None:
            bias.zero_()


def _center(tensor: torch.Tensor) -> None:
    tensor.sub_(tensor.mean(-1, keepdim=True))


def _center_writing_weights(bridge: Any) -> None:
    bound = bridge.bound
    _center(bound.embed.weight)
    if bound.pos_embed is not None and bridge.position_kind.has_table:
        _center(getattr(bound.pos_embed, bridge.position_kind.table_attr))
    for block in bound.blocks:
        for module, layout in ((block.attn.o, block.attn.layout), (block.mlp.w_out, block.mlp.layout)):
            _center(in_out(module, layout))
            if getattr(module, "bias", None) is not None:
                _center(module.bias)


def _center_unembed(bridge: Any) -> None:
    unembed = bridge.bound.unembed
    _center(in_out(unembed, "linear"))  # W_U [d_model, d_vocab]: mean over the vocabulary
    if getattr(unembed, "bias", None) is not None:
        _center(unembed.bias)
    if bridge.bound.unembed_bias is not None:  # BART's final_logits_bias: logits are shift-invariant per position
        _center(bridge.bound.unembed_bias)


def _fold_value_biases(bridge: Any) -> None:
    """Pattern rows sum to one, so b_V reaches the output as `Σ_h b_V[h] @ W_O[h]`: move it into b_O."""
    for weights, block in zip(bridge.blocks, bridge.bound.blocks, strict=True):
        raw = weights.attn.raw_bias("v")
        if raw is None:
            continue
        if block.attn.o_norm is not None:  # a norm between z and W_O: b_V does not reach the output linearly
            raise ProcessingError("fold_value_biases", f"{block.attn.o_norm.path} normalizes z before W_O")
        shift = torch.einsum("hd,hdm->m", weights.attn.b_V.float(), weights.attn.W_O.float())
        _bias(block.attn.o, block.attn.layout).add_(shift.to(raw.dtype))
        raw.zero_()
