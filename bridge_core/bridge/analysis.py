"""Residual-stream analysis over a cache: logit lens, decompositions, direct logit attribution.

The functions behind `ActivationCache.accumulated_resid`, `decompose_resid`, `stack_head_results`,
`apply_ln_to_stack` and `logit_attrs`, with TransformerLens's argument names and output shapes.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from ..errors import AnalysisError
from ..kinds import NormKind
from .weights import materialize

if TYPE_CHECKING:
    from .cache import ActivationCache

PosSlice = int | slice | list[int] | torch.Tensor | None


def apply_slice(tensor: torch.Tensor, index: PosSlice, dim: int) -> torch.Tensor:
    """TransformerLens's `Slice`: None keeps all, an int selects one entry (dropping the dim), a slice or a
    list / tensor of indices keeps those entries."""
    if index is None:
        return tensor
    if isinstance(index, int):
        return tensor.select(dim, index)
    if isinstance(index, slice):
        return tensor[(slice(None),) * (dim % tensor.dim()) + (index,)]
    return tensor.index_select(dim, torch.as_tensor(index, device=tensor.device))


def _stack(parts: list[torch.Tensor], pos_slice: PosSlice) -> torch.Tensor:
    # hook_pos_embed is [1, pos, d_model] (shared by the batch): broadcast before stacking
    return torch.stack(torch.broadcast_tensors(*[apply_slice(p, pos_slice, -2) for p in parts]))


def _bridge(cache: ActivationCache) -> Any:
    if cache.bridge is None:
        raise AnalysisError("this cache holds no bridge; analysis needs the model's structure and weights")
    return cache.bridge


def _final_layer(bridge: Any, layer: int | None) -> int:
    n = bridge.cfg.n_layers
    if layer is None or layer == -1:
        return n
    if not 0 <= layer <= n:
        raise AnalysisError(f"layer={layer} is outside [0, {n}] (or -1 / None for the final residual)")
    return layer


def _additive_stream(bridge: Any, what: str) -> None:
    """Refuse post-norm blocks: their residual is renormalized after each sublayer, so nothing adds up."""
    if any(block.kind == "post_norm" for block in bridge.bound.blocks):
        raise AnalysisError(
            f"{what} needs an additive residual stream; this model's blocks are post-norm (each sublayer's "
            "output is normalized into the residual), so the stream is not a sum of component outputs"
        )


def _parallel(bridge: Any) -> bool:
    return any(block.kind == "parallel" for block in bridge.bound.blocks)


def norm_for(bridge: Any, layer: int | None, mlp_input: bool = False) -> tuple[str, NormKind]:
    """The `hook_scale` name and kind of the norm reading the residual at `layer` (final norm at n_layers)."""
    _additive_stream(bridge, "apply_ln_to_stack")
    layer = _final_layer(bridge, layer)
    if layer == bridge.cfg.n_layers:
        if bridge.bound.ln_final is None:
            raise AnalysisError("this model has no final norm, so there is no final scale to apply")
        return "ln_final.hook_scale", bridge.bound.ln_final.kind
    block = bridge.bound.blocks[layer]
    norm, which = (block.ln2, "ln2") if mlp_input else (block.ln1, "ln1")
    if mlp_input and norm is None and block.mlp_norm is not None:  # one norm feeds both (GPT-J, Phi)
        norm, which = block.mlp_norm, block.mlp_norm.name
    if norm is None:
        raise AnalysisError(f"block {layer} has no {which} norm")
    return f"blocks.{layer}.{which}.hook_scale", norm.kind


def apply_ln_to_stack(
    cache: ActivationCache,
    residual_stack: torch.Tensor,
    layer: int | None = None,
    mlp_input: bool = False,
    pos_slice: PosSlice = None,
    batch_slice: PosSlice = None,
    has_batch_dim: bool | None = None,
) -> torch.Tensor:
    """Each component `[..., (batch,) (pos,) d_model]` centered (LayerNorm kinds) and divided by the cached scale.

    The norm's weight and bias are not applied (as in TransformerLens: fold them with `processed_copy`).
    """
    name, kind = norm_for(_bridge(cache), layer, mlp_input)
    if name not in cache:
        raise AnalysisError(f"the cache has no '{name}': run run_with_cache with that hook included")
    scale = apply_slice(cache[name], pos_slice, -2)
    has_batch_dim = cache.has_batch_dim if has_batch_dim is None else has_batch_dim
    if batch_slice is not None and has_batch_dim:
        scale = apply_slice(scale, batch_slice, 0)
    if kind.centered:
        residual_stack = residual_stack - residual_stack.mean(-1, keepdim=True)
    try:
        return (residual_stack / scale.to(residual_stack.device)).to(residual_stack.dtype)
    except RuntimeError:
        raise AnalysisError(
            f"the stack {tuple(residual_stack.shape)} does not line up with the cached scale {tuple(scale.shape)} "
            f"of '{name}': pass the same pos_slice (and batch_slice) the stack was sliced with"
        ) from None


def accumulated_resid(
    cache: ActivationCache,
    layer: int | None = None,
    incl_mid: bool = False,
    apply_ln: bool = False,
    pos_slice: PosSlice = None,
    mlp_input: bool = False,
    return_labels: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, list[str]]:
    """The residual stream entering blocks 0..layer, stacked: `[n_components, batch, pos, d_model]` (logit lens).

    `layer=None` or -1 ends with the final residual (`final_post`); `incl_mid` adds each `hook_resid_mid`.
    Parallel blocks have no mid residual: `incl_mid` raises, and `mlp_input` adds nothing (the MLP reads
    `hook_resid_pre`).
    """
    bridge = _bridge(cache)
    _additive_stream(bridge, "accumulated_resid")
    n = bridge.cfg.n_layers
    layer = _final_layer(bridge, layer)
    parallel = _parallel(bridge)
    if incl_mid and parallel:
        raise AnalysisError("incl_mid: parallel blocks have no hook_resid_mid (attention and MLP both read resid_pre)")
    parts, labels = [], []
    for index in range(layer + 1):
        if index == n:
            parts.append(cache[f"blocks.{n - 1}.hook_resid_post"])
            labels.append("final_post")
            continue
        parts.append(cache[f"blocks.{index}.hook_resid_pre"])
        labels.append(f"{index}_pre")
        if not parallel and ((incl_mid and index < layer) or (mlp_input and index == layer)):
            parts.append(cache[f"blocks.{index}.hook_resid_mid"])
            labels.append(f"{index}_mid")
    stack = _stack(parts, pos_slice)
    if apply_ln and layer == n and bridge.bound.ln_final is not None:
        # the logit lens: each residual through the final norm itself (weights included), as HookedTransformer 3.9
        final = bridge.bound.ln_final.module
        stack = torch.stack([final(part).to(part.dtype) for part in stack])
    elif apply_ln:
        stack = apply_ln_to_stack(cache, stack, layer, mlp_input, pos_slice)
    return (stack, labels) if return_labels else stack


def _embed_names(bridge: Any) -> list[tuple[str, str]]:
    points = bridge._points
    first = "hook_project_in" if "hook_project_in" in points else "hook_embed"  # what enters the residual
    names = [(first, "embed")]
    if "hook_pos_embed" in points:
        names.append(("hook_pos_embed", "pos_embed"))
    return names


def decompose_resid(
    cache: ActivationCache,
    layer: int | None = None,
    mlp_input: bool = False,
    mode: str = "all",
    apply_ln: bool = False,
    pos_slice: PosSlice = None,
    incl_embeds: bool = True,
    return_labels: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, list[str]]:
    """The residual entering block `layer` split into embeddings and each block's attention / MLP output.

    `[n_components, batch, pos, d_model]`; with every component (`mode="all"`, `incl_embeds`) the sum is the
    residual itself. `mode` is "all", "attn" or "mlp". `mlp_input` adds block `layer`'s attention output
    (not on parallel blocks, whose MLP does not read it).
    """
    bridge = _bridge(cache)
    _additive_stream(bridge, "decompose_resid")
    if mode not in ("all", "attn", "mlp"):
        raise AnalysisError(f"mode must be 'all', 'attn' or 'mlp', got {mode!r}")
    layer = _final_layer(bridge, layer)
    parts, labels = [], []
    if incl_embeds:
        for name, label in _embed_names(bridge):
            parts.append(cache[name])
            labels.append(label)
    for index in range(layer):
        if mode != "mlp":
            parts.append(cache[f"blocks.{index}.hook_attn_out"])
            labels.append(f"{index}_attn_out")
        if mode != "attn":
            parts.append(cache[f"blocks.{index}.hook_mlp_out"])
            labels.append(f"{index}_mlp_out")
    if mlp_input and mode != "mlp" and not _parallel(bridge) and layer < bridge.cfg.n_layers:
        parts.append(cache[f"blocks.{layer}.hook_attn_out"])
        labels.append(f"{layer}_attn_out")
    if not parts:
        raise AnalysisError("no components selected (incl_embeds=False and layer 0)")
    stack = _stack(parts, pos_slice)
    if apply_ln:
        stack = apply_ln_to_stack(cache, stack, layer, mlp_input, pos_slice)
    return (stack, labels) if return_labels else stack


def _times(bridge: Any, layer: int, spot: str = "attn_out") -> float:
    """The residual multiplier HF applies to block `layer`'s attention (or MLP) output before the add (Granite;
    1 elsewhere): per-head and per-neuron results are the projections' own, their contributions are times it."""
    return getattr(bridge.bound.blocks[layer], spot).scale or 1.0


def head_results(cache: ActivationCache, layer: int) -> torch.Tensor:
    """Per-head outputs `[batch, pos, n_heads, d_model]`: cached `hook_result`, else `hook_z @ W_O` per head."""
    name = f"blocks.{layer}.attn.hook_result"
    if name in cache:
        return cache[name]
    z = cache[f"blocks.{layer}.attn.hook_z"]
    W_O = _bridge(cache).blocks[layer].attn.W_O.detach().to(z.device, z.dtype)
    return torch.einsum("...hd,hdm->...hm", z, W_O)


def stack_head_results(
    cache: ActivationCache,
    layer: int = -1,
    return_labels: bool = False,
    incl_remainder: bool = False,
    pos_slice: PosSlice = None,
    apply_ln: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, list[str]]:
    """Every head's output in blocks 0..layer-1: `[n_layers * n_heads (+1), batch, pos, d_model]`, labels `L{l}H{h}`.

    Each is the head's contribution to the residual: `hook_result` times the residual multiplier where HF has one.

    `incl_remainder` appends the residual minus all heads (embeddings, MLPs, biases) as "remainder".
    """
    bridge = _bridge(cache)
    layer = _final_layer(bridge, layer)
    heads = [apply_slice(head_results(cache, index), pos_slice, -3) * _times(bridge, index) for index in range(layer)]
    labels = [f"L{index}H{h}" for index in range(layer) for h in range(bridge.cfg.n_heads)]
    if heads:
        stack = torch.cat(heads, dim=-2).movedim(-2, 0)
    else:
        like = apply_slice(cache["blocks.0.hook_resid_pre"], pos_slice, -2)
        stack = like.new_zeros((0, *like.shape))
    if incl_remainder:
        _additive_stream(bridge, "incl_remainder")
        name = f"blocks.{layer - 1}.hook_resid_post" if layer > 0 else "blocks.0.hook_resid_pre"
        remainder = apply_slice(cache[name], pos_slice, -2) - stack.sum(0)
        stack = torch.cat([stack, remainder[None]])
        labels.append("remainder")
    if apply_ln:
        stack = apply_ln_to_stack(cache, stack, layer, False, pos_slice)
    return (stack, labels) if return_labels else stack


def stack_activation(
    cache: ActivationCache, activation_name: str, layer: int = -1, sublayer_type: str | None = None
) -> torch.Tensor:
    """One activation of every block 0..layer-1 stacked: `stack_activation("pattern")` is `[n_layers, ...]`."""
    layer = _final_layer(_bridge(cache), layer)
    return torch.stack([cache[(activation_name, index, sublayer_type)] for index in range(layer)])


def residual_directions(bridge: Any, tokens: Any) -> torch.Tensor:
    """Unembedding columns for tokens: `[d_model]` for one token, `[..., d_model]` for a tensor of them."""
    if isinstance(tokens, str):
        from .tokens import to_single_token

        tokens = to_single_token(bridge, tokens)
    W_U = materialize(bridge.bound.unembed, "weight").detach()  # [d_vocab, d_model]: W_U transposed
    return W_U[torch.as_tensor(tokens, device=W_U.device)]


def logit_attrs(
    cache: ActivationCache,
    residual_stack: torch.Tensor,
    tokens: Any,
    incorrect_tokens: Any = None,
    pos_slice: PosSlice = None,
    batch_slice: PosSlice = None,
    has_batch_dim: bool | None = None,
) -> torch.Tensor:
    """Direct logit attribution: each component, scaled by the final norm, dotted with `W_U[:, tokens]`.

    With `incorrect_tokens`, with `W_U[:, tokens] - W_U[:, incorrect_tokens]` (a logit difference).
    `residual_stack [..., batch, d_model]`: slice positions first (`pos_slice`); b_U is not included.
    Times `cfg.logit_scale` where HF scales the logits (W_U is the raw weight), so the attributions add up
    to the logits the model returns (before a final softcap).
    """
    bridge = _bridge(cache)
    directions = residual_directions(bridge, tokens)
    if incorrect_tokens is not None:
        wrong = residual_directions(bridge, incorrect_tokens)
        if wrong.shape != directions.shape:
            raise AnalysisError(
                f"tokens and incorrect_tokens differ in shape: {tuple(directions.shape)[:-1]} vs "
                f"{tuple(wrong.shape)[:-1]}"
            )
        directions = directions - wrong
    scaled = apply_ln_to_stack(cache, residual_stack, None, False, pos_slice, batch_slice, has_batch_dim)
    attrs = (scaled * directions.to(scaled.device, scaled.dtype)).sum(-1)
    # the logits HF returns are the unembedding's output times the logit scale (Cohere, Granite): so are these
    scale = bridge.bound.logit_scale
    return attrs if scale is None else attrs * scale


def compute_head_results(cache: ActivationCache) -> None:
    """Store `blocks.{l}.attn.hook_result` (each head's `z @ W_O`, no b_O) for every block, unless cached."""
    bridge = _bridge(cache)
    for layer in range(bridge.cfg.n_layers):
        name = f"blocks.{layer}.attn.hook_result"
        if name not in cache.cache_dict:
            cache.cache_dict[name] = head_results(cache, layer)


def neuron_results(
    cache: ActivationCache, layer: int, neuron_slice: PosSlice = None, pos_slice: PosSlice = None
) -> torch.Tensor:
    """Each neuron's write to the residual, `hook_post[..., n] * W_out[n]`: `[batch, pos, d_mlp, d_model]`."""
    post = apply_slice(cache[f"blocks.{layer}.mlp.hook_post"], pos_slice, -2)
    W_out = _bridge(cache).blocks[layer].mlp.W_out.detach().to(post.device, post.dtype)
    post, W_out = apply_slice(post, neuron_slice, -1), apply_slice(W_out, neuron_slice, 0)
    return post[..., None] * W_out


def stack_neuron_results(
    cache: ActivationCache,
    layer: int,
    pos_slice: PosSlice = None,
    neuron_slice: PosSlice = None,
    return_labels: bool = False,
    incl_remainder: bool = False,
    apply_ln: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, list[str]]:
    """Every neuron's output in blocks 0..layer-1, `[layer * n_neurons (+1), batch, pos, d_model]`, labels `L{l}N{n}`.

    `incl_remainder` appends the residual after block `layer - 1` minus all neurons as "remainder".
    """
    bridge = _bridge(cache)
    layer = _final_layer(bridge, layer)
    neurons = apply_slice(torch.arange(bridge.cfg.d_mlp), neuron_slice, 0).reshape(-1).tolist()
    labels = [f"L{index}N{n}" for index in range(layer) for n in neurons]
    parts = []
    for index in range(layer):
        result = neuron_results(cache, index, neuron_slice, pos_slice) * _times(bridge, index, "mlp_out")
        parts.append(result[..., None, :] if isinstance(neuron_slice, int) else result)
    if parts:
        stack = torch.cat(parts, dim=-2).movedim(-2, 0)
    else:
        like = apply_slice(cache["hook_embed"], pos_slice, -2)
        stack = like.new_zeros((0, *like.shape))
    if incl_remainder:
        _additive_stream(bridge, "incl_remainder")
        resid = apply_slice(cache[f"blocks.{layer - 1}.hook_resid_post"], pos_slice, -2)
        stack = torch.cat([stack, (resid - stack.sum(0))[None]])
        labels.append("remainder")
    if apply_ln:
        stack = apply_ln_to_stack(cache, stack, layer, False, pos_slice)
    return (stack, labels) if return_labels else stack


def accumulated_bias(bridge: Any, layer: int, mlp_input: bool, include_mlp_biases: bool) -> torch.Tensor:
    """The biases written to the residual before block `layer` (b_O, and b_out if asked; + this b_O for its MLP)."""
    total = torch.zeros(bridge.cfg.d_model)
    for index in range(layer):
        total = total + bridge.blocks[index].attn.b_O.detach().float().cpu() * _times(bridge, index)
        if include_mlp_biases:
            total = total + bridge.blocks[index].mlp.b_out.detach().float().cpu() * _times(bridge, index, "mlp_out")
    if mlp_input:
        if layer >= bridge.cfg.n_layers:
            raise AnalysisError("mlp_input: the final residual feeds no MLP")
        total = total + bridge.blocks[layer].attn.b_O.detach().float().cpu() * _times(bridge, layer)
    return total


def full_resid_decomposition(
    cache: ActivationCache,
    layer: int | None = None,
    mlp_input: bool = False,
    expand_neurons: bool = True,
    apply_ln: bool = False,
    pos_slice: PosSlice = None,
    return_labels: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, list[str]]:
    """The residual entering `layer` as every head, every neuron (or MLP layer), the embeddings and the summed
    biases, in TransformerLens's order; on sequential blocks the components sum to the residual."""
    bridge = _bridge(cache)
    _additive_stream(bridge, "get_full_resid_decomposition")
    layer = _final_layer(bridge, layer)
    heads, labels = stack_head_results(cache, layer + (1 if mlp_input else 0), True, False, pos_slice)
    parts = [heads]
    if layer > 0:
        if expand_neurons:
            neurons, more = stack_neuron_results(cache, layer, pos_slice, None, True)
        else:
            neurons, more = decompose_resid(cache, layer, mlp_input, "mlp", False, pos_slice, False, True)
        parts.append(neurons)
        labels = [*labels, *more]
    for name, label in _embed_names(bridge):
        parts.append(_stack([cache[name]], pos_slice).expand(1, *heads.shape[1:]))
        labels.append(label)
    bias = accumulated_bias(bridge, layer, mlp_input, expand_neurons).to(heads.device, heads.dtype)
    parts.append(bias.expand(1, *heads.shape[1:]))
    labels.append("bias")
    stack = torch.cat(parts)
    if apply_ln:
        stack = apply_ln_to_stack(cache, stack, layer, mlp_input, pos_slice)
    return (stack, labels) if return_labels else stack
