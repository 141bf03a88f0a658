"""The suite proves itself: each deliberately broken spec in broken_specs/ is caught by the check meant
to catch it (and only the checks listed with it fail); core faults no spec can express are injected
into a context; together they make every check in the catalogue fail at least once."""

from __future__ import annotations

import importlib
import pkgutil

import pytest
import torch

from bridge_core.bridge import dispatch, module_hooks, places
from bridge_core.conformance import build_context, catalogue, run, run_checks

# spec file -> (the check meant to catch it, other checks that legitimately fail too, text in the blamed field)
BROKEN: dict[str, tuple[str, set[str], str]] = {
    "linear_for_conv1d": ("bind", set(), "block.attn.layout"),
    "typo_module_path": ("bind", set(), "block.mlp.in"),
    "fused_order_interleaved": ("qkv_recompute", {"attention_semantics", "attention_paths_agree"}, "block.attn.qkv"),
    "double_heads": (
        "qkv_recompute",
        {"shapes", "attention_semantics", "attn_output", "attention_paths_agree", "config_fields"},
        "config.n_heads",
    ),
    "ln2_path_is_ln1": ("bind", set(), "block.ln2"),  # the core refuses two norm roles on one module
    "pos_offset": ("pos_embed", {"shapes", "config_fields"}, "pos_embed.offset"),
    "relu_activation": ("mlp", {"activation_grid"}, "act_fn"),
    # the silu kind where each Apertus MLP runs its own xIELU module (`act_module`, learned parameters)
    "apertus_silu_for_xielu": ("mlp", {"activation_grid"}, "block.mlp.act_fn"),
    "wrong_eps": ("norms", {"config_fields"}, "config.eps"),
    "embed_scale": ("embed", set(), "config.embed_scale"),
    "dead_pos_hook": ("hook_fire_counts", {"shapes", "cache_completeness", "embed", "pos_embed"}, "pos_embed"),
    "unembed_is_embedding": ("unembed", {"shapes", "layer_ranges", "config_fields", "norm_roles"}, "unembed.path"),
    "neox_qkv_order": ("qkv_recompute", {"attention_paths_agree"}, "block.attn.qkv"),
    "gemma_norm_offset": ("norms", set(), "ln1.kind"),  # identity edits are exact under any kind
    "neox_parallel_as_sequential": ("residual_stream", {"delta_once", "norm_roles"}, "block.kind"),
    "gemma_no_embed_scale": ("embed", set(), "config.embed_scale"),
    "neox_rotary_dim": ("attention_paths_agree", {"config_fields"}, "config.rotary_dim"),
    "t5_decoder_bidirectional": ("rel_pos_bias", {"block_alone", "attention_alone"}, "score_bias.params"),
    "opt_pos_offset": ("pos_embed", {"config_fields"}, "pos_embed.offset"),
    # M2M100's positions counted from the token ids in a `weights` buffer (sinusoidal_from_ids), on its draft
    "m2m_100_pos_offset": ("pos_embed", set(), "encoder.pos_embed.offset"),
    "m2m_100_plain_sinusoidal": ("bind", set(), "encoder.pos_embed.kind"),
    # mistakes a spec author makes that pass `validate`, shown on the test model itself (issue 14)
    "neox_ln_swap": ("norm_roles", set(), "block.ln1.path"),
    "t5_encoder_ln_swap": ("norm_roles", set(), "encoder.block.ln1.path"),
    "t5_cross_norm_is_mlp_norm": ("norm_roles", set(), "block.cross_attn.ln.path"),
    "gemma2_no_ln2_post": ("residual_stream", set(), "ln2_post"),
    "gemma_exact_gelu": ("activation_grid", {"mlp"}, "act_fn"),
    "gemma2_softcaps_swapped": ("config_fields", set(), "config.attn_softcap"),
    # optional config fields left out (mutants that survived `conform --mutate gpt2` before config_fields read them)
    "gpt2_no_n_ctx": ("config_fields", set(), "config.n_ctx"),
    "gpt2_no_eps": ("config_fields", set(), "config.eps"),
    # mixture of experts: routing settings and the fused gate|up order (identity edits of
    # hook_expert_weights re-route by the spec's settings, so they fail too)
    "mixtral_top_k": ("moe_routing", {"identity_hooks"}, "block.mlp.moe.top_k"),
    "mixtral_no_renorm": ("moe_routing", {"identity_hooks"}, "norm_topk_prob"),
    "mixtral_gate_up_swapped": ("moe_experts", {"identity_hooks", "moe_recompute_path"}, "block.mlp.moe.gate_first"),
    "qwen2_moe_topk_then_softmax": ("moe_routing", {"identity_hooks"}, "scoring"),
    "deepseek_v2_no_routed_scaling": ("moe_routing", {"identity_hooks"}, "routed_scaling"),
    "deepseek_v2_greedy_not_grouped": ("moe_routing", {"identity_hooks"}, "selection"),
    # DeepSeek-V3's sigmoid routing (decision 0022): softmax scores, no selection-only correction bias, no groups
    "deepseek_v3_softmax_scoring": ("moe_routing", {"identity_hooks"}, "scoring"),
    "deepseek_v3_no_correction_bias": ("moe_routing", {"identity_hooks"}, "correction_bias"),
    "deepseek_v3_greedy_not_grouped": ("moe_routing", {"identity_hooks"}, "selection"),
    # its rope parts reach attention de-interleaved ([even | odd] dims): position 0 shows the order
    "deepseek_v3_rope_not_deinterleaved": ("qkv_recompute", set(), "rope_deinterleave"),
    # OLMoE's q/k norms span all heads (qk_norm_layout: flat): per head, the reimplement path cannot apply them
    "olmoe_qk_norm_per_head": ("qk_norm_layout", {"attention_paths_agree"}, ""),
    # latent attention (MLA): widths the projections cannot hold, a latent norm's kind, the two latent norms swapped
    "mla_rope_nope_swapped": ("bind", set(), "config.rotary_dim"),
    "mla_kv_norm_layernorm": ("qkv_recompute", set(), "kv_a_norm"),
    "mla_latent_norms_swapped": ("shapes", {"qkv_recompute", "variant_coverage"}, "block.attn.qkv (kind: latent)"),
    # reimplement-path formats (issue 16): MPT's True = masked boolean mask declared additive reads as
    # "attend to the masked keys"; BLOOM's ALiBi layout handed to MPT's [heads, 1, k] attention
    # GPT-Neo's local window, applied by the module from its own buffer, left out of call.window: the
    # reimplement path (every hook that sees attention internals) attends past the window
    "gpt_neo_no_window": (
        "attention_paths_agree",
        {
            "cache_completeness",
            "norms",
            "residual_stream",
            "mlp",
            "unembed",
            "identity_hooks",
            "delta_once",
            "padding",
        },
        "block.attn",
    ),
    "mpt_bool_mask_as_additive": (
        "attention_paths_agree",
        {
            "cache_completeness",
            "norms",
            "residual_stream",
            "mlp",
            "unembed",
            "identity_hooks",
            "delta_once",
            "padding",
            "block_alone",
            "attention_alone",
            "layer_ranges",
        },
        "block.attn",
    ),
    "mpt_alibi_wrong_layout": ("block_alone", {"attention_alone", "layer_ranges"}, ""),
    # Granite's multipliers (docs/decisions/0013-multipliers.md), each left out or misplaced
    "granite_no_residual_multiplier": (
        "config_fields",
        {"residual_stream", "norm_roles", "delta_once"},
        "config.residual_multiplier",
    ),
    "granite_embed_scaled_in_module": ("embed", set(), "embed.scale_at"),
    "granite_no_embed_scale": ("embed", set(), "config.embed_scale"),
    "granite_no_logit_scale": ("unembed", {"config_fields", "layer_ranges"}, "config.logit_scale"),
    "granite_default_attn_scale": (
        "config_fields",
        {"attention_semantics", "attention_paths_agree"},
        "config.attn_scale",
    ),
    # shared norms, post-sublayer norms, whole-projection q/k norms, interleaved rotary (issue 16: gptj, phi, olmo2)
    "gptj_rotate_half": ("attention_paths_agree", {"length_limit"}, "pos_embed.kind"),
    "gptj_unlimited": ("length_limit", set(), "pos_embed.kind"),
    "gptj_cos_sin": ("attention_paths_agree", set(), "pos_embed.kind / rotary_output"),
    "phi_sequential": ("residual_stream", {"hook_fire_counts", "delta_once", "norm_roles"}, "block.kind"),
    "olmo2_per_head_qk_norm": ("qk_norm_layout", {"attention_paths_agree"}, "block.attn.qk_norm_layout"),
    "olmo2_pre_norm": ("norm_roles", {"residual_stream", "delta_once"}, "block.ln1.path"),
    # issue 17 (docs/decisions/0020-...): GLM's adjacent pairs from the first half of a rotate-half table, read as
    # rotate-half or as Cohere's per-pair repeated table; Phi-3's fused [gate | up] read as [up | gate]
    "glm_rotate_half": ("attention_paths_agree", set(), "pos_embed.kind"),
    "glm_interleaved_repeated": ("attention_paths_agree", set(), "pos_embed.kind"),
    "phi3_gate_up_swapped": ("mlp", set(), "block.mlp.gate_up.order"),
    # NanoChat's rotate_half turns by -theta (rotary_reversed), read as Llama's; its model.norm in two roles (embedding
    # and final norm, missing vocabulary) fails the same five checks under either kind, and its twice-fired
    # embed.ln hook differs first, so the blame reads "block.attn (reimplement path)", not pos_embed.kind
    "nanochat_llama_rotary": (
        "attention_paths_agree",
        {"embed", "hook_fire_counts", "layer_ranges", "norms", "unembed"},
        "block.attn",
    ),
    # NanoChat's model.norm named in its embedding role only: the final role (ln_final, the same module) missing
    "nanochat_no_final_role": ("layer_ranges", {"embed", "hook_fire_counts", "norms", "unembed"}, "ln_final"),
    # the BART family (issue 16): positions and an embedding norm per stack, post-norm cross blocks, final bias
    "bart_encoder_pos_offset": ("pos_embed", set(), "encoder.pos_embed.offset"),
    "bart_pre_norm": ("residual_stream", {"norm_roles", "delta_once"}, "block.kind"),
    "bart_no_final_logits_bias": ("unembed", {"config_fields"}, "unembed.bias"),
    "bart_embed_norm_before_pos": ("embed", {"pos_embed"}, "embed.norm_after_pos"),
    # the decoder of BlenderbotSmall never scales its embeddings; without `embed.scale: 1.0` it reads sqrt(d_model)
    "blenderbot_small_decoder_scaled": ("embed", set(), "embed.scale"),
    # UMT5 read as T5: one bias per stack from block 0's table, where every layer has its own (score_bias.per_layer)
    "umt5_one_bias_per_stack": ("rel_pos_bias", {"attention_semantics", "rel_pos_bias_edit"}, "score_bias"),
    "bart_cross_norm_is_ln1": ("norm_roles", {"residual_stream", "delta_once"}, "block.ln1.path"),
    # per-layer rotary and q/k norms after rotary (docs/decisions/0021-per-layer-rotary.md): SmolLM3's NoPE
    # layer rotated; HunYuan's after-rotary norms declared before; Gemma 3's before-rotary norms declared after
    "smollm3_rotary_every_layer": ("attention_paths_agree", set(), "block.attn.rotary"),
    "hunyuan_norm_before_rotary": ("qk_norm_layout", {"attention_paths_agree"}, "qk_norm_at"),
    "hunyuan_moe_no_router_weight": ("bind", set(), "block.mlp.moe.router"),  # the router holds no weight itself
    "axk1_no_post_mlp_norm": ("moe_experts", set(), "block.mlp.moe"),  # the MoE output is normalized in the MLP
    "gemma3_norm_after_rotary": ("qk_norm_layout", {"attention_paths_agree"}, "block.attn.qk_norm_at"),
    # norm kinds of drafted families (issue 17): Nemotron's (1 + w) LayerNorm, OLMo's LayerNorm without an eps
    "nemotron_plain_layernorm": ("norms", set(), "ln1.kind"),
    "olmo_layernorm_without_eps": ("bind", set(), ".kind"),
    # attention sinks (issue 17: Granite SWA, Flint, GPT-OSS): left out, the pattern's rows are a plain softmax
    "granite_swa_no_sinks": ("attention_semantics", {"attention_paths_agree"}, "block.attn.sinks"),
    # post-sublayer norms whose outputs enter the residual × residual_multiplier (HyperCLOVA X), swapped
    "hyperclovax_post_norms_swapped": ("norm_roles", {"residual_stream", "delta_once"}, "ln1_post.path"),
    # a fused projection whose q and k pass LayerNorms before rotary (Persimmon): hook_q/k are the norms' inputs
    "persimmon_fused_order_qkv": ("qkv_recompute", {"attention_paths_agree", "qk_norm_layout"}, "block.attn.qkv"),
    # CodeGen's qkv_proj holds 4 groups of [q | v | k] (qkv.order grouped_qvk); declared [q | k | v] per group
    "codegen_grouped_qkv": ("qkv_recompute", {"attention_paths_agree"}, "block.attn.qkv"),
    # PhiMoE's sparsemixer masks each weight's softmax at 2 * router_jitter_noise; declared 0.5 (identity hooks on
    # hook_expert_weights re-route by the spec, so they fail too)
    "phimoe_jitter_eps": ("moe_routing", {"identity_hooks"}, "jitter_eps"),
    # GPT-OSS clamps each expert's gate and up at swiglu_limit (set below the tiny model's values); declared
    # without the clamp (the recomputed experts, and identity hooks on their points, differ from HF's too)
    "gpt_oss_no_clamp": ("moe_experts", {"moe_recompute_path", "identity_hooks"}, "clamp_limit"),
    # GPT-OSS interleaves gate and up along gate_up_proj's outputs; declared as halves (Mixtral's storage)
    "gpt_oss_gate_up_halves": ("moe_experts", {"moe_recompute_path", "identity_hooks"}, "gate_up_split"),
    # BitNet's sub-norms before the output projections (decision 0026), left out of its draft: hook_z / hook_post
    # would be the norms' outputs, not what attention and the activation computed
    "bitnet_no_o_norm": ("attn_output", {"attention_paths_agree"}, "block.attn.o_norm"),
    "bitnet_no_out_norm": ("mlp", set(), "block.mlp.out_norm"),
    # Aria's fused experts stored [in, out] (moe.fused_layout: conv1d), left out: the shapes cannot be [out, in]
    "aria_text_experts_not_transposed": ("bind", set(), "block.mlp.moe.fused_layout"),
    # AFMoE (decision 0026): its attention output gated by sigmoid(gate_proj(x)) before o_proj, left out; softmax
    # scoring where the router takes sigmoids (its router weight is zero at init: only the perturbation shows it)
    "afmoe_no_out_gate": ("attn_output", {"attention_paths_agree"}, "block.attn.out_gate"),
    "afmoe_softmax_scoring": ("moe_routing", {"identity_hooks"}, "scoring"),
}

# spec file -> (the variant that takes the branch the mistake is on, check meant to catch it, others, blamed field)
BROKEN_ON_A_VARIANT: dict[str, tuple[str, str, set[str], str]] = {
    "neox_always_parallel": ("sequential", "norm_roles", set(), "block.kind"),
    "t5_tied_prescale": ("untied", "unembed", {"norm_roles"}, "unembed.pre_scale"),
}


def test_every_broken_spec_file_has_an_expectation(broken_dir):
    assert sorted(p.stem for p in broken_dir.glob("*.yaml")) == sorted([*BROKEN, *BROKEN_ON_A_VARIANT])


@pytest.mark.parametrize("case", sorted(BROKEN_ON_A_VARIANT))
def test_mistake_on_one_branch_is_caught_on_the_variant_that_takes_it(case, broken_dir):
    variant, catches, also, field = BROKEN_ON_A_VARIANT[case]
    report = run(broken_dir / f"{case}.yaml", variant=variant)
    failed = {r.name for r in report.failed()}
    print(f"{case}[{variant}]: caught by {catches} (also failing: {sorted(failed - {catches}) or 'none'})")
    assert report.architecture.endswith(f"[{variant}]")
    assert failed == {catches, *also}, f"unexpected set of failing checks:\n{report}"
    assert field in (report[catches].field or ""), report[catches].explain()


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_broken_spec_is_caught_by_its_check(case, broken_dir):
    catches, also, field = BROKEN[case]
    report = run(broken_dir / f"{case}.yaml")
    failed = {r.name for r in report.failed()}
    print(f"{case}: caught by {catches} (also failing: {sorted(failed - {catches}) or 'none'})")
    assert catches in failed, str(report)
    assert failed == {catches, *also}, f"unexpected set of failing checks:\n{report}"
    assert field in (report[catches].field or ""), report[catches].explain()
    if catches == "bind":  # nothing else can run, and the untouched model is still checked
        assert {r.status for r in report.results if r.name not in ("bind", "model_left_as_found")} == {"skip"}
        assert report["model_left_as_found"].status == "pass"


def _swap_q_and_k(monkeypatch):
    """Swapped q and k, as a spec could get them wrong: weight views and hook views agree with each other."""

    def swapped(*args, **kwargs):
        views = places.qkv_views(*args, **kwargs)
        return {**views, "q": views["k"], "k": views["q"]}

    import bridge_core.bridge as package

    for info in pkgutil.iter_modules(package.__path__):  # every core module that imported qkv_views
        module = importlib.import_module(f"{package.__name__}.{info.name}")
        if module is not places and getattr(module, "qkv_views", None) is places.qkv_views:
            monkeypatch.setattr(module, "qkv_views", swapped)


def test_swapped_q_and_k_agree_with_each_other_but_not_with_hf(monkeypatch):
    _swap_q_and_k(monkeypatch)
    ctx = build_context("gpt2")
    block = ctx.bridge._bound.blocks[0]
    x = ctx.hf_in(block.attn.module)
    w = ctx.bridge.blocks[0].attn
    self_consistent = torch.einsum("bsm,hmd->bshd", x, w.W_Q) + w.b_Q
    torch.testing.assert_close(self_consistent, ctx.cache["blocks.0.attn.hook_q"])  # the spec agrees with itself
    report = run_checks(ctx, ["qkv_recompute", "attention_semantics", "forward_parity"])
    assert report["qkv_recompute"].status == "fail"
    assert "block.attn.qkv" in report["qkv_recompute"].field
    assert report["attention_semantics"].status == "fail"
    assert report["forward_parity"].status == "pass"  # no hook: the swap is invisible to the forward


def _fault_parity(monkeypatch, ctx):
    from bridge_core.bridge.bridge import Bridge

    original = Bridge._forward
    monkeypatch.setattr(Bridge, "_forward", lambda self, *a, **k: original(self, *a, **k) + 1e-6)


def _fault_leaky_session(monkeypatch, ctx):
    original = dispatch.HookSession.__exit__

    def leaky(self, *exc_info):
        original(self, *exc_info)
        self.entries[0].point.place.module.register_forward_hook(lambda *args: None)

    monkeypatch.setattr(dispatch.HookSession, "__exit__", leaky)


def _fault_inexact_write_back(monkeypatch, ctx):
    original = module_hooks._run_viewed

    def inexact(run, base, view):
        out = original(run, base, view)
        return None if out is None else out + 1e-7

    monkeypatch.setattr(module_hooks, "_run_viewed", inexact)


def _fault_heads_not_a_view(monkeypatch, ctx):
    monkeypatch.setattr(
        places.SplitHeads, "__call__", lambda self, base: base.unflatten(-1, (self.n_heads, self.d_head)).flip(-2)
    )


def _fault_mask_ignored(monkeypatch, ctx):
    from bridge_core.bridge import attention

    original = attention.as_additive_mask
    monkeypatch.setattr(attention, "as_additive_mask", lambda mask, module, *a: original(None, module, *a))


def _fault_component_mask_dropped(monkeypatch, ctx):
    from bridge_core.bridge.components import ComponentCaller

    original = ComponentCaller.kwargs

    def unmasked(self, layer, hidden, attention_mask=None, position_ids=None, **kwargs):
        return original(self, layer, hidden, None, position_ids, **kwargs)

    monkeypatch.setattr(ComponentCaller, "kwargs", unmasked)


def _fault_bias_edit_lost(monkeypatch, ctx):
    view = type(ctx.bridge.hook_dict["encoder.hook_rel_pos_bias"].place.view)
    original = view.__call__
    monkeypatch.setattr(view, "__call__", lambda self, base: original(self, base).clone())  # no longer a view


def _fault_norm_recompute(monkeypatch, ctx):
    from bridge_core.kinds import NormKind

    original = NormKind.scale
    monkeypatch.setattr(NormKind, "scale", lambda self, prepared, eps: original(self, prepared, eps * 10))


def _fault_norm_rebuild(monkeypatch, ctx):
    original = module_hooks._ModuleHooks._norm

    def off_by_one_percent(self, *args):
        rebuilt = original(self, *args)
        return None if rebuilt is None else rebuilt * 1.01

    monkeypatch.setattr(module_hooks._ModuleHooks, "_norm", off_by_one_percent)


def _fault_generation_off_by_one(monkeypatch, ctx):
    from bridge_core.bridge import running

    original = running.generate

    def wrong_last_token(bridge, *args, **kwargs):
        out = original(bridge, *args, **kwargs).clone()
        out[:, -1] = (out[:, -1] + 1) % bridge.cfg.d_vocab
        return out

    monkeypatch.setattr(running, "generate", wrong_last_token)


def _fault_stop_one_block_late(monkeypatch, ctx):
    from bridge_core.bridge import running

    original = running.stop_hook
    monkeypatch.setattr(running, "stop_hook", lambda bridge, k, stack: original(bridge, k + 1, stack))


def _fault_gradient_scaled(monkeypatch, ctx):
    def attach(self, tensor):
        if tensor.requires_grad:
            for fn in self.bwd:
                tensor.register_hook(lambda grad, fn=fn, point=self.point: fn(grad * 1.5, point))

    monkeypatch.setattr(module_hooks._PointRun, "attach_backward", attach)


# fault injected into the core -> the checks that must catch it
INJECTED = {
    "perturbed_forward": (_fault_parity, {"forward_parity"}),
    "leaky_hook_session": (_fault_leaky_session, {"hygiene", "model_left_as_found"}),
    "inexact_write_back": (_fault_inexact_write_back, {"identity_module_hooks"}),
    "heads_not_a_view": (_fault_heads_not_a_view, {"head_ablation"}),
    "padding_mask_ignored": (_fault_mask_ignored, {"padding"}),
    "norm_recompute_wrong": (_fault_norm_recompute, {"norms"}),  # identity edits stay exact: hook_scale shows it
    "norm_rebuild_wrong": (_fault_norm_rebuild, {"identity_hooks"}),
    "component_call_drops_mask": (_fault_component_mask_dropped, {"block_alone", "attention_alone"}),
    "rel_pos_bias_edit_lost": (_fault_bias_edit_lost, {"rel_pos_bias_edit"}),
    "generation_off_by_one": (_fault_generation_off_by_one, {"generation"}),
    "stop_one_block_late": (_fault_stop_one_block_late, {"layer_ranges"}),
    "gradient_scaled": (_fault_gradient_scaled, {"backward_hooks"}),
}
SPEC_OF_FAULT = {"rel_pos_bias_edit_lost": "t5"}


@pytest.mark.parametrize("fault", sorted(INJECTED))
def test_injected_core_fault_is_caught(fault, monkeypatch):
    inject, must_fail = INJECTED[fault]
    ctx = build_context(SPEC_OF_FAULT.get(fault, "gpt2"))
    inject(monkeypatch, ctx)
    report = run_checks(ctx, [*sorted(must_fail), "bind"])
    assert {r.name for r in report.failed()} == must_fail, str(report)


def test_tampering_no_other_check_sees_is_caught_by_left_as_found():
    ctx = build_context("gpt2")
    ctx.model.transformer.h[0].mlp.dropout.train()  # p = 0: the forward cannot tell, the snapshot can
    report = run_checks(ctx, ["forward_parity", "hygiene", "model_left_as_found"])
    assert [r.name for r in report.failed()] == ["model_left_as_found"]
    assert "module tree changed" in report["model_left_as_found"].message


def test_config_tampering_is_caught():
    ctx = build_context("gpt2")
    ctx.model.config.tampered_by_test = True
    report = run_checks(ctx, ["model_left_as_found"])
    assert "tampered_by_test" in report["model_left_as_found"].message


def test_every_check_is_shown_able_to_fail():
    caught = {catches for catches, _, _ in BROKEN.values()}
    caught |= {name for _, also, _ in BROKEN.values() for name in also}
    caught |= {name for _, names in INJECTED.values() for name in names} | {"model_left_as_found"}
    caught |= {catches for _, catches, _, _ in BROKEN_ON_A_VARIANT.values()}
    caught |= {"variant_coverage"}  # test_variants: gpt2 without its variant fails it
    assert caught == {c.name for c in catalogue()}


def test_reimplement_path_skips_with_its_reason_on_encoder_decoder():
    report = run("t5", checks=["attention_paths_agree"])
    assert {r.status for r in report.results} == {"skip"}
    assert "NotImplementedError" not in report["attention_paths_agree"].message
    assert "reimplement" in report["attention_paths_agree"].message


def test_attention_checks_skip_when_hf_never_calls_the_interface():
    ctx = build_context("gpt2")
    ctx.reference.calls.clear()  # as for a model outside AttentionInterface
    report = run_checks(ctx, ["qkv_recompute", "attn_output"])
    assert {r.status for r in report.results} == {"skip"}
    assert "reimplement" in report["qkv_recompute"].message
