"""Observers of the model's layout: the block list, embedding, unembedding, final norm and positions."""

from __future__ import annotations

import torch
from torch import nn

from ..draft import DraftContext
from ..errors import DraftingError, OutOfScopeError
from ..probe import same
from .modules import is_norm, norm_kind, under
from .moe import moe_layers


def observe_blocks(ctx: DraftContext) -> None:
    """The ModuleList holding the attention modules the probe saw; every block must have attention."""
    obs, model = ctx.obs, ctx.model
    if not obs.attention:  # attention in the model's own code: found by value (observers/reimplemented.py)
        from .reimplemented import synthesize_attention

        why = synthesize_attention(ctx)
        if why is not None and any("attn" in n.lower() or "attention" in n.lower() for n, _ in model.named_modules()):
            raise DraftingError(
                "observe",
                f"no call reached transformers' AttentionInterface, and no recomputation reproduced the model's "
                f"own attention (reimplement path): {why}",
            )
    attended = [obs.name(call.module) for call in obs.attention]
    lists = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.ModuleList) and len(m) > 1]
    holding = [(n, m) for n, m in lists if any(under(a, n) for a in attended)]
    if not attended:
        if not any("attn" in n.lower() or "attention" in n.lower() for n, _ in model.named_modules()):
            raise OutOfScopeError("no attention (state-space / recurrent model)")
        raise DraftingError("observe", "no call reached transformers' AttentionInterface (attention outside it)")
    if not holding:
        raise DraftingError("observe", f"no ModuleList holds the attention modules {attended[:2]}")
    if len(holding) > 1:
        ctx.draft.gap("encoder-decoder drafting", f"attention in several block lists {[n for n, _ in holding]}")
    path, blocks = min(holding, key=lambda item: item[0].count("."))  # the outermost list
    if getattr(ctx.config, "is_encoder_decoder", False):
        path, blocks = holding[-1]
    missing = [i for i, _ in enumerate(blocks) if not any(under(a, f"{path}.{i}") for a in attended)]
    if missing:
        raise OutOfScopeError(f"hybrid: blocks {missing} of {path} call no attention (Mamba / linear-attention layers)")
    _one_stream(ctx, path)
    ctx.blocks, ctx.block = path, f"{path}.0"
    ctx.draft.fields["blocks"] = path
    shapes = [sorted((n, type(m).__name__) for n, m in block.named_modules()) for block in blocks]
    differ = [i for i, shape in enumerate(shapes) if shape != shapes[0]]
    ctx.found["moe_layers"] = moe_layers(blocks) if differ else None  # dense and MoE layers mixed
    if differ and ctx.found["moe_layers"] is None:
        ctx.draft.gap("per-layer structure", f"blocks {differ} are built differently from block 0 (dense/MoE mix?)")


def _one_stream(ctx: DraftContext, path: str) -> None:
    """Blocks must read the one residual stream the embedding gives: hyper-connections (DeepSeek V4, HY V4) carry
    several streams ([batch, pos, streams, d_model]) mixed by learned weights, which no spec field describes."""
    obs = ctx.obs
    x, embedded = obs.input(f"{path}.0"), obs.output(obs.name(ctx.model.get_input_embeddings()))
    if x is None or embedded is None or x.dim() != embedded.dim() + 1:
        return
    detail = f"{path}.0 reads {x.shape[-2]} residual streams {list(x.shape)} where the embedding gives one"
    raise DraftingError("observe", detail, gaps=[f"hyper-connection residual streams: {detail}"])


def observe_embedding(ctx: DraftContext) -> None:
    """The input embedding, a scale on its output and a norm between it and the first block."""
    obs, model = ctx.obs, ctx.model
    embed = model.get_input_embeddings()
    path = obs.name(embed)
    ctx.found["embed"] = path
    spec: dict = {"path": path}
    out = obs.output(path)
    block_in = obs.input(ctx.block)
    ctx.found["embed_out"] = out
    for name, module in model.named_modules():
        if is_norm(module) and not under(name, ctx.blocks) and same(obs.input(name), out):
            kind = norm_kind(module, obs.input(name), obs.output(name))
            spec["norm"] = {"path": name, "kind": kind or "layernorm"}
            ctx.found["embed_norm"] = name
            out = obs.output(name)
    ctx.draft.fields["embed"] = spec
    ctx.found["embed_final"] = out
    raw = embed.weight.detach()[obs.inputs["input_ids"]]
    scale = _ratio(raw, block_in) or _ratio(raw, out)
    at_module = _ratio(raw, obs.output(path))
    if scale is not None and abs(scale - 1.0) > 1e-6 and at_module is not None and abs(at_module - 1.0) < 1e-6:
        spec["scale_at"] = "forward"  # the module returns the raw table; the model's forward scales it (Granite)
    if scale is not None and abs(scale - 1.0) > 1e-6:
        d_model = ctx.attr(raw.shape[-1], ("hidden_size", "n_embd", "d_model"))
        if d_model and abs(scale - raw.shape[-1] ** 0.5) < 1e-3 * scale:
            ctx.draft.fields.setdefault("config", {})["embed_scale"] = f"{d_model} ** 0.5"
        else:
            found = ctx.attr(scale, keyword=("mult", "scale"))
            if found is None:
                ctx.draft.gap("embedding multiplier", f"embeddings scaled by {scale:.4g}, no config field holds it")
            else:
                ctx.draft.fields.setdefault("config", {})["embed_scale"] = found


def _ratio(a: torch.Tensor, b: torch.Tensor | None) -> float | None:
    """s with a * s == b, or None."""
    if b is None or a.shape != b.shape:
        return None
    s = float((a * b).sum() / (a * a).sum())
    return s if same(a * s, b) else None


def observe_positions(ctx: DraftContext) -> None:
    """Learned table (an embedding added to the token embedding) or a model-level rotary module whose output
    the blocks receive; what the attention observer saw of rotation decides between them."""
    obs, model = ctx.obs, ctx.model
    embed = ctx.found["embed"]
    block_kwargs = obs.first(ctx.block).kwargs if obs.first(ctx.block) else {}
    for name, module in model.named_modules():
        if under(name, ctx.blocks) or not name:
            continue
        out = obs.output(name)
        if isinstance(module, nn.Embedding) and name != embed and out is not None:
            offset = _table_offset(module, out)
            ctx.draft.fields["pos_embed"] = {"kind": "learned", "path": name, "offset": offset}
            ctx.found["n_ctx_rows"] = module.weight.shape[0] - offset
            _norm_after_positions(ctx, out)
            return
        buffered = _buffer_table(module, out)
        if buffered is not None:  # XGLM: a fixed `weights` buffer read at the position ids
            ctx.draft.fields["pos_embed"] = {"kind": "sinusoidal_from_positions", "path": name, "offset": buffered}
            ctx.draft.note(
                f"pos_embed.kind: {name} reads its `weights` buffer from row {buffered} at the position "
                "ids (observed without padding; a padding-aware module would be sinusoidal_from_ids)"
            )
            ctx.found["n_ctx_rows"] = module.weights.shape[0] - buffered
            return
        outputs = [c.output for c in obs.calls.get(name, []) if isinstance(c.output, tuple) and len(c.output) == 2]
        if outputs:
            for key, value in block_kwargs.items():
                if isinstance(value, tuple) and len(value) == 2 and any(_same_pair(o, value) for o in outputs):
                    ctx.draft.fields["pos_embed"] = _rotary_kind(ctx, name, module, value)
                    ctx.draft.fields.setdefault("call", {})["position_embeddings_kwarg"] = key
                    ctx.found["rotary_module"] = name
                    _rotary_args(ctx, name, module, key)
                    return
        calls = obs.calls.get(name, [])
        complex_tables = [c.output for c in calls if torch.is_tensor(c.output) and c.output.is_complex()]
        key = next((k for k, v in block_kwargs.items() if any(same(t, v) for t in complex_tables)), None)
        if key is not None:  # one complex table the blocks receive (DeepSeek V2's freqs_cis): HF rotates itself
            ctx.draft.fields["pos_embed"] = {"kind": "rotary", "path": name}
            ctx.draft.fields.setdefault("call", {})["position_embeddings_kwarg"] = key
            ctx.found["rotary_module"] = name
            return
    if ctx.found.get("rotates"):
        ctx.draft.gap(
            "rotary inside attention", "queries are rotated but no model-level rotary module feeds the blocks"
        )
    ctx.draft.fields["pos_embed"] = {"kind": "none"}
    raw = model.get_input_embeddings().weight.detach()[obs.inputs["input_ids"]]
    block_in, embedded = obs.input(ctx.block), ctx.found.get("embed_final")
    if embedded is not None and _ratio(raw, block_in) is None and not same(embedded, block_in):
        ctx.draft.gap(  # CTRL adds a sinusoidal buffer of the model in its forward
            "positions outside a module",
            "the first block's input is the embedding plus something no module returned (a position table buffer?)",
        )


def _norm_after_positions(ctx: DraftContext, pos: torch.Tensor) -> None:
    """A norm outside the blocks reading token embedding + learned positions, whose output the first block
    reads (TrOCR's `layernorm_embedding`): `embed.norm` with `norm_after_pos`."""
    obs, embed = ctx.obs, ctx.draft.fields["embed"]
    summed = None if ctx.found.get("embed_out") is None else ctx.found["embed_out"] + pos
    if "norm" in embed or summed is None:
        return
    for name, module in ctx.model.named_modules():
        feeds_blocks = same(obs.output(name), obs.input(ctx.block))
        if is_norm(module) and not under(name, ctx.blocks) and same(obs.input(name), summed) and feeds_blocks:
            embed["norm"] = {"path": name, "kind": norm_kind(module, summed, obs.output(name)) or "layernorm"}
            embed["norm_after_pos"] = True
            ctx.found["embed_norm"] = name
            return


def _buffer_table(module: nn.Module, out: torch.Tensor | None) -> int | None:
    """The row offset at which a module's 2-D `weights` buffer (not a parameter) holds its output, one row per
    position (XGLM's sinusoidal module), or None."""
    table = getattr(module, "weights", None)
    if not isinstance(table, torch.Tensor) or isinstance(table, nn.Parameter) or table.dim() != 2:
        return None
    if out is None or out.dim() != 3 or out.shape[-1] != table.shape[-1]:
        return None
    rows = out[0]
    for offset in range(min(8, table.shape[0] - rows.shape[0] + 1)):
        if same(table[offset : offset + rows.shape[0]], rows):
            return offset
    return None


def _rotary_kind(ctx: DraftContext, name: str, module: nn.Module, pair: tuple) -> dict:
    """Rotate-half or adjacent pairs (what the attention observer saw turn), read from a table of positions
    or computed (a 2-D buffer with one row per position of the context), and the order of the pair the
    module returns: at position 0 the cosine is 1 and the sine 0."""
    if not ctx.found.get("rotary_interleaved"):
        return {"kind": "rotary_reversed" if _turns_backwards(ctx, pair) else "rotary", "path": name}
    spec: dict = {"kind": "rotary_interleaved", "path": name}
    rows = {b.shape[0] for b in module.buffers() if b.dim() == 2}
    if any(ctx.attr(r, ("max_position_embeddings", "n_positions", "n_ctx"), ("position",)) for r in rows):
        spec["kind"] = "rotary_interleaved_table"
        ctx.draft.note(f"pos_embed.kind: {name} reads a table of context positions, so longer inputs cannot run")
    first, second = (t.reshape(-1, t.shape[-1])[0] for t in pair)
    if bool((first.abs() < 1e-6).all()) and bool(((second - 1).abs() < 1e-6).all()):
        spec["rotary_output"] = "sin_cos"
    last = pair[0].reshape(-1, pair[0].shape[-1])[-1]
    width, r = last.shape[-1], ctx.found.get("rotary_dim") or last.shape[-1]
    if 2 * width != r and not same(last[0::2], last[1::2]) and same(last[: width // 2], last[width // 2 :]):
        # a rotate-half table cat(freqs, freqs) whose first half attention spreads over adjacent pairs (GLM)
        spec["kind"] = "rotary_interleaved_halves"
    elif 2 * width != r and not same(last[0::2], last[1::2]):  # neither one value per pair nor each value twice
        ctx.draft.gap(
            "interleaved rotary from a rotate-half table",
            f"{name} returns frequencies in two halves; attention pairs adjacent dims from its first half",
        )
    return spec


def _turns_backwards(ctx: DraftContext, pair: tuple) -> bool:
    """The rotated queries are the unrotated ones turned by -theta, not +theta, with the rotary module's
    (cos, sin): HF's `rotate_half` is `cat(x2, -x1)` (NanoChat). Only when +theta does not match and -theta does."""
    seen = ctx.found.get("rotated_queries")
    r = ctx.found.get("rotary_dim")
    if seen is None or not r or pair[0].shape[-1] < r:
        return False
    _, raw, query = seen
    cos, sin = (t[..., :r].unsqueeze(1).to(raw.dtype) for t in pair)
    if cos.shape[-2] != raw.shape[-2]:
        return False
    first, second = raw[..., : r // 2], raw[..., r // 2 : r]
    turned = torch.cat((-second, first), dim=-1)
    forward, backward = raw[..., :r] * cos + turned * sin, raw[..., :r] * cos - turned * sin
    return not same(forward, query[..., :r]) and same(backward, query[..., :r])


def _rotary_args(ctx: DraftContext, name: str, module: nn.Module, kwarg: str) -> None:
    """A rotary module called once per layer type (Gemma 3; Mellum and Cohere Compass, whose tiny models may
    have one layer type, so one call, whose layer-type argument a block called alone must still pass): which
    per-layer config list picks the call each block's position embeddings came from, and under which parameter
    name."""
    import inspect

    from ..shrink import plain_fields

    obs = ctx.obs
    calls = obs.calls.get(name, [])
    if not calls:
        return
    params = list(inspect.signature(module.forward).parameters)
    for position, param in enumerate(params):
        values = [c.args[position] if len(c.args) > position else c.kwargs.get(param) for c in calls]
        if not all(isinstance(v, str) for v in values):
            continue
        for list_name, per_layer in plain_fields(ctx.config).items():
            if not isinstance(per_layer, list) or len(per_layer) != len(obs.module(ctx.blocks)):
                continue
            ok = True
            for i, wanted in enumerate(per_layer):
                got = obs.first(f"{ctx.blocks}.{i}").kwargs.get(kwarg)
                match = [v for c, v in zip(calls, values, strict=True) if _same_pair(c.output, got)]
                ok = ok and wanted in match  # calls with equal outputs (same rope per type) match each other
            if ok:
                ctx.draft.fields["call"]["rotary_args"] = {param: f"{list_name}[layer]"}
                return
    if len(calls) > 1:
        detail = f"{name} is called {len(calls)} times; no per-layer config list picks the call"
        ctx.draft.gap("rotary per layer", detail)


def _same_pair(a, b) -> bool:
    return isinstance(a, tuple) and isinstance(b, tuple) and all(same(x, y) for x, y in zip(a, b, strict=True))


def _norm_in_two_roles(ctx: DraftContext, head_in: torch.Tensor | None) -> None:
    """One norm module called as the embedding norm and again as the final norm (NanoChat's `model.norm`): the
    same path in `embed.norm` and `ln_final`, each role's hooks on its own calls (decision 0024). A norm holding
    parameters in two roles is a gap (binding refuses it: folding the final norm would change the other)."""
    name = ctx.found.get("embed_norm")
    calls = ctx.obs.calls.get(name, []) if name else []
    if "ln_final" in ctx.draft.fields or len(calls) < 2:
        return
    last = next((c for c in reversed(calls[1:]) if same(c.output, head_in)), None)
    if last is None:
        return
    module = ctx.obs.module(name)
    if any(True for _ in module.parameters()):
        ctx.draft.gap(
            "one norm module in two roles",
            f"{name} holds parameters and is called {len(calls)} times in one forward: as the embedding norm and "
            "again as the final norm; a norm in two roles must hold none",
        )
        return
    ctx.draft.fields["ln_final"] = {"path": name, "kind": ctx.draft.fields["embed"]["norm"]["kind"]}  # one module
    ctx.found["ln_final"] = name
    ctx.draft.note(f"ln_final: {name} is also the embedding norm (called {len(calls)} times, the last as final norm)")


def _table_offset(module: nn.Embedding, out: torch.Tensor) -> int:
    row = out.reshape(-1, out.shape[-1])[0]
    matches = [i for i in range(min(8, module.weight.shape[0])) if same(module.weight[i], row)]
    return matches[0] if matches else 0


def observe_final(ctx: DraftContext) -> None:
    """The unembedding, the final norm that feeds it, and what happens between its output and the logits."""
    obs, model = ctx.obs, ctx.model
    head = model.get_output_embeddings()
    if head is None:
        raise DraftingError("observe", f"{type(model).__name__} has no output embeddings (no LM head)")
    path = obs.name(head)
    unembed: dict = {"path": path}
    head_in, head_out = obs.input(path), obs.output(path)
    for name, module in model.named_modules():
        if is_norm(module) and not under(name, ctx.blocks) and name != ctx.found.get("embed_norm"):
            out = obs.output(name)
            if same(out, head_in):
                kind = norm_kind(module, obs.input(name), out)
                ctx.draft.fields["ln_final"] = {"path": name, "kind": kind or "layernorm"}
                ctx.found["ln_final"] = name
            elif out is not None and head_in is not None and out.shape == head_in.shape:
                scale = float((head_in * out).sum() / (out * out).sum())
                if same(out * scale, head_in):
                    ctx.draft.fields["ln_final"] = {"path": name, "kind": norm_kind(module, obs.input(name), out)}
                    unembed["pre_scale"] = _scale_expr(ctx, scale)
    _norm_in_two_roles(ctx, head_in)
    logits = obs.logits
    bias = _logits_bias(ctx, head_out, logits)
    if bias is not None:  # a model tensor added to the head's output (BART's final_logits_bias): b_U
        unembed["bias"] = bias
        head_out = logits
    if head_out is not None and logits is not None and not same(head_out, logits):
        cap = float(logits.abs().max())
        found = next((k for k, v in _floats(ctx) if v and same(torch.tanh(head_out / v) * v, logits)), None)
        scale = float((logits * head_out).sum() / (head_out * head_out).sum())
        if found:
            unembed["softcap"] = found
            ctx.draft.fields.setdefault("config", {})["final_softcap"] = found
        elif same(head_out * scale, logits):
            # HF multiplies the head's output (Cohere): config.logit_scale, hook_unembed before it
            ctx.draft.fields.setdefault("config", {})["logit_scale"] = _scale_expr(ctx, scale)
        else:
            ctx.draft.gap("logit transform", f"logits differ from the head output (max {cap:.3g}) in no known way")
    ctx.draft.fields["unembed"] = unembed


def _logits_bias(ctx: DraftContext, head_out, logits) -> str | None:
    """The model buffer or parameter (one value per vocabulary entry) that the logits are the head's output plus."""
    if head_out is None or logits is None or head_out.shape != logits.shape or same(head_out, logits):
        return None
    diff = logits - head_out
    vocab = logits.shape[-1]
    tensors = [*ctx.model.named_buffers(), *ctx.model.named_parameters()]
    for name, tensor in tensors:
        fits = tensor.numel() == vocab and tensor.is_floating_point()
        if fits and same(tensor.detach().reshape(vocab).expand_as(diff), diff):
            return name
    return None


def _floats(ctx: DraftContext):
    from ..shrink import plain_fields

    return [(k, v) for k, v in plain_fields(ctx.config).items() if isinstance(v, float) and not isinstance(v, bool)]


def _scale_expr(ctx: DraftContext, scale: float) -> str:
    direct = ctx.attr(scale, keyword=("scal", "mult"))
    if direct:
        return direct
    inverse = ctx.attr(1.0 / scale, keyword=("scal", "mult"))
    if inverse:
        return f"1 / {inverse}"
    d_model = ctx.attr(64, ("hidden_size", "n_embd", "d_model"))
    if d_model and abs(scale - 64**-0.5) < 1e-6:
        return f"{d_model} ** -0.5"
    ctx.draft.gap("logit scale", f"the logits are scaled by {scale:.4g}, which no config field gives")
    return repr(scale)
