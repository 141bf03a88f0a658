"""Component checks: norms, residual stream and MLP, each recomputed from the bridge's weight views and
cfg and compared with tensors HF computed on the untouched copy (every block of every stack)."""

from __future__ import annotations

from ..catalogue import Meter, Skip, check
from ..context import CheckContext
from .latent import norm_by_kind


@check(
    "norms",
    statement="each norm recomputed from HF's input with its kind, cfg.eps and the .w/.b views equals HF's norm "
    "output, and hook_scale / hook_normalized equal that recomputation (post-norms, final norms, q/k norms and "
    "an embedding norm included)",
    family="norms",
    tolerance=1e-5,
)
def norms(ctx: CheckContext, m: Meter) -> None:
    cfg = ctx.bridge.cfg
    found = [role for layer in ctx.layers for role in layer.norm_roles()] + ctx.final_norms()
    heads_first: set[str] = set()  # q/k norms that HF applies to [b, h, s, d]: hooks show [b, s, h, d]
    for attention in ctx.attentions:  # per-head q/k norms, and a norm of the embeddings
        qk = [attention.bound.q_norm, attention.bound.k_norm]
        found += [(f"{attention.prefix}.{n.name}", n.field, n) for n in qk if n is not None]
        if attention.bound.qk_norm_heads_first:
            heads_first.update(f"{attention.prefix}.{n.name}" for n in qk if n is not None)
    for stack in ctx.bound.stacks():  # each stack's embedding norm (BART's encoder has its own)
        if stack.embed_norm is not None:
            found.append((stack.embed_norm.name, stack.embed_norm.field, stack.embed_norm))
    if not found:
        raise Skip("this spec declares no norms")
    for name, spec_field, norm in found:
        kind, module = norm.kind, norm.module
        module_eps = kind.eps(module)
        eps = module_eps if cfg.eps is None else float(cfg.eps)
        x = ctx.hf_in(module, role=norm.role)  # a norm in two roles: the call of this role
        prepared = kind.prepare(x)
        scale = kind.scale(prepared, eps)
        normalized = prepared / scale
        w, b = kind.weight(module), kind.bias(module)
        out = normalized if w is None else normalized * (w + kind.weight_offset)
        out = (out if b is None else out + b).to(x.dtype)
        field = "config.eps" if cfg.eps is not None and abs(eps - module_eps) > 0 else f"{spec_field}.kind"
        hf_out = ctx.hf_out(module, role=norm.role)
        m.compare(f"{name}: norm recomputed with cfg.eps={eps:g} vs HF norm output", out, hf_out, field)
        if f"{name}.hook_scale" in ctx.cache:
            if name in heads_first:
                scale, normalized = scale.transpose(-3, -2), normalized.transpose(-3, -2)
            m.compare(f"{name}.hook_scale vs recomputed scale", ctx.cache[f"{name}.hook_scale"], scale, field)
            m.compare(f"{name}.hook_normalized vs recomputed", ctx.cache[f"{name}.hook_normalized"], normalized, field)


@check(
    "residual_stream",
    statement="hook_resid_pre / resid_post equal HF's block input / output, hook_resid_mid equals block input + "
    "HF attention output (+ cross attention for hook_resid_mid_cross), hook_mlp_out equals HF's MLP output (outputs "
    "× cfg.residual_multiplier); "
    "post-norm blocks: hook_resid_post = HF's ln1 output + MLP output, hook_normalized_resid_post = block output",
    family="residual",
    tolerance=1e-5,
)
def residual_stream(ctx: CheckContext, m: Meter) -> None:
    for layer in ctx.layers:
        p, block = layer.prefix, layer.block
        block_in = ctx.hf_in(block.module)
        mlp_out = ctx.hf_at(block.mlp_out)
        m.compare(
            f"{p}.hook_resid_pre vs HF block input",
            ctx.cache[f"{p}.hook_resid_pre"],
            block_in,
            "blocks / block.hidden_states_kwarg",
        )
        mid = block_in + ctx.hf_at(block.attn_out)
        if f"{p}.hook_resid_mid" in ctx.cache:
            m.compare(
                f"{p}.hook_resid_mid vs HF block input + attention output",
                ctx.cache[f"{p}.hook_resid_mid"],
                mid,
                "block.ln2.path / block.kind / config.residual_multiplier",
            )
        elif block.kind != "parallel":
            m.fail(f"{p}.hook_resid_mid is missing on a {block.kind} block", "block.kind")
        if block.cross is not None:
            if block.kind == "post_norm":  # BART: the cross attention adds to ln1's output
                mid = ctx.hf_out(block.ln1.module)
            mid = mid + ctx.hf_at(block.cross.out)
            m.compare(
                f"{p}.hook_resid_mid_cross vs HF's residual before cross attention + its output",
                ctx.cache[f"{p}.hook_resid_mid_cross"],
                mid,
                "block.cross_attn.residual_at",
            )
        m.compare(f"{p}.hook_mlp_out vs HF MLP output", ctx.cache[f"{p}.hook_mlp_out"], mlp_out, "block.mlp.path")
        _residual_update(ctx, m, block, block_in, mlp_out)
        if block.kind == "post_norm":
            before = block.cross.ln if block.cross is not None and block.cross.ln is not None else block.ln1
            m.compare(
                f"{p}.hook_resid_post vs HF's {before.name} output + MLP output (post-norm)",
                ctx.cache[f"{p}.hook_resid_post"],
                ctx.hf_out(before.module) + mlp_out,
                "block.kind / block.ln2",
            )
            post = ctx.cache[f"{p}.hook_normalized_resid_post"]
            m.compare(f"{p}.hook_normalized_resid_post vs HF block output", post, ctx.hf_out(block.module), "block.ln2")
        else:
            m.compare(
                f"{p}.hook_resid_post vs HF block output",
                ctx.cache[f"{p}.hook_resid_post"],
                ctx.hf_out(block.module),
                "block.output_index / block.kind",
            )


def _residual_update(ctx: CheckContext, m: Meter, block, block_in, mlp_out) -> None:
    """HF's block output must be the sum of the residual before the MLP and the MLP contribution, all read
    by HF at the places the bound model names: a wrong contribution or a missing post-norm shows here."""
    if block.kind == "post_norm":
        return  # the post-norm form is checked against ln1's output above
    if block.kind == "parallel":
        before, what = block_in + ctx.hf_at(block.attn_out), "block input + attention contribution"
    elif block.cross is not None and block.cross.residual is not None:
        before, what = ctx.hf_at(block.cross.residual), "residual after cross attention"
    elif block.resid_mid is not None:
        before, what = ctx.hf_at(block.resid_mid), "mid residual"
        if block.cross is not None:
            before = before + ctx.hf_at(block.cross.out)
    else:
        return
    m.compare(
        f"{block.prefix}: HF block output vs HF's {what} + MLP contribution",
        ctx.hf_at(block.resid_post),
        before + mlp_out,
        f"{block.field}.kind / mlp_out_at / ln2_post",
    )


@check(
    "mlp",
    statement="the MLP recomputed from HF's MLP input with W_in/b_in, the cfg activation, the spec's out_norm (if "
    "any) and W_out/b_out equals HF's MLP output; act(hook_pre) equals what HF fed its output projection (or its "
    "out_norm)",
    family="mlp",
    tolerance=1e-5,
)
def mlp(ctx: CheckContext, m: Meter) -> None:
    if all(layer.block.mlp.moe is not None for layer in ctx.layers):
        raise Skip("every MLP is a mixture of experts (moe_routing, moe_experts)")
    for layer in ctx.layers:
        p, block, weights = f"{layer.prefix}.mlp", layer.block, layer.weights.mlp
        if block.mlp.moe is not None:  # a mixture of experts: the moe_* checks (checks/moe.py)
            continue
        act, act_field = block.mlp.act, block.mlp.act_field
        x = ctx.hf_at(block.mlp.input)
        pre = x @ weights.W_in + weights.b_in
        out_norm = block.mlp.out_norm  # BitNet: a sub-norm between the activations and W_out
        hf_post = ctx.hf_in(block.mlp.w_out if out_norm is None else out_norm.module)
        m.compare(
            f"{p}: x·W_in + b_in vs hook_pre (HF's projection)",
            pre,
            ctx.cache.get(f"{p}.hook_pre_linear", ctx.cache[f"{p}.hook_pre"]),
            "block.mlp.in / block.mlp.layout",
        )
        if weights.W_gate is not None:
            gate = x @ weights.W_gate + weights.b_gate
            post = act(gate) * pre
            label = f"{p}: act(gate)·pre vs HF's input to the output projection"
            fused = block.mlp.gate_up_order is not None  # halves swapped read as act(up)·gate
            blame = f"{act_field} / block.mlp.gate_up.order" if fused else act_field
            act_ok = m.compare(label, post, hf_post, f"{blame} / block.mlp.out_norm") <= m.tolerance
        else:
            label = f"{p}: cfg activation of hook_pre vs HF's input to the output projection"
            post_blame = f"{act_field} / block.mlp.out_norm"
            act_ok = m.compare(label, act(ctx.cache[f"{p}.hook_pre"]), hf_post, post_blame) <= m.tolerance
            post = act(pre)
        out = (post if out_norm is None else norm_by_kind(out_norm, post)) @ weights.W_out + weights.b_out
        hf_out = ctx.hf_out(block.mlp.w_out)
        field = "block.mlp.out / block.mlp.layout" if act_ok else act_field
        m.compare(f"{p}: recomputed MLP vs HF MLP output", out, hf_out, field)
