"""What each family does differently, on hidden configurations, against raw HF parameters and modules.

GPT-NeoX: fused per-head q/k/v views, partial rotary by hand, parallel blocks. OPT: learned positions
at offset 2, flat-token MLP, post-norm blocks, project_in/out. Gemma: scaled embeddings, (1 + w)
RMSNorm, post-norms, final softcap, q/k norms before rotary.
"""

from __future__ import annotations

import pytest
import torch

from ._models import PADDINGS, assert_close_at, block_path, build_run, ln1_path, variants_of


def runs_of(*families: str):
    return pytest.mark.parametrize(
        "frun",
        [(v, p) for v in variants_of(*families) for p in PADDINGS],
        ids=lambda r: f"{r[0]}-{r[1]}",
        indirect=True,
    )


@pytest.fixture
def frun(request):
    return build_run(*request.param)


def rotate_by_hand(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotary on the first cos.shape[-1] dims of `x` `[b, s, h, d]`, pairing j with j + half (rotate-half)."""
    rd = cos.shape[-1]
    cos, sin = cos[:, :, None, :], sin[:, :, None, :]
    rot, rest = x[..., :rd], x[..., rd:]
    half = rd // 2
    rotated_half = torch.cat((-rot[..., half:], rot[..., :half]), dim=-1)
    return torch.cat((rot * cos + rotated_half * sin, rest), dim=-1)


def rms_offset_by_hand(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    x = x.float()
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * (1.0 + weight.float())


def positions(run) -> torch.Tensor:
    return torch.arange(run.toks.shape[1])[None].expand(run.toks.shape[0], -1)


# --------------------------------------------------------------------------- GPT-NeoX
@runs_of("gpt_neox")
def test_neox_q_k_v_weights_are_views_of_the_fused_per_head_query_key_value(frun):
    cfg = frun.bridge.cfg
    h, d, dm = cfg.n_heads, cfg.d_head, cfg.d_model
    for i in range(frun.n_layers):
        fused = frun.bridge.model.gpt_neox.layers[i].attention.query_key_value
        per_head = fused.weight.detach().view(h, 3, d, dm)  # rows laid out [h0: q k v | h1: q k v | ...]
        bias = fused.bias.detach().view(h, 3, d)
        attn = frun.bridge.blocks[i].attn
        for part, name in enumerate("QKV"):
            view = getattr(attn, f"W_{name}")
            assert view.shape == (h, dm, d)
            assert view.untyped_storage().data_ptr() == fused.weight.untyped_storage().data_ptr(), "a copy"
            assert torch.equal(view, per_head[:, part].transpose(1, 2))
            b = getattr(attn, f"b_{name}")
            assert b.untyped_storage().data_ptr() == fused.bias.untyped_storage().data_ptr()
            assert torch.equal(b, bias[:, part])


@runs_of("gpt_neox")
def test_neox_hook_q_k_v_are_ln1_output_through_the_weights_by_hand(frun):
    cfg = frun.bridge.cfg
    h, d = cfg.n_heads, cfg.d_head
    paths = [ln1_path("gpt_neox", i) for i in range(frun.n_layers)]
    ln1_out = frun.hf_outputs(paths)
    for i in range(frun.n_layers):
        x = ln1_out[paths[i]]
        attn = frun.bridge.blocks[i].attn
        q = torch.einsum("bsm,hmd->bshd", x, attn.W_Q) + attn.b_Q
        assert_close_at(frun.cache[f"blocks.{i}.attn.hook_q"], q, frun.real)
        fused = frun.reference.gpt_neox.layers[i].attention.query_key_value
        raw = (x @ fused.weight.t() + fused.bias).view(*x.shape[:2], h, 3, d)
        for part, name in enumerate("qkv"):
            assert_close_at(frun.cache[f"blocks.{i}.attn.hook_{name}"], raw[..., part, :], frun.real)


@runs_of("gpt_neox")
def test_neox_rot_q_and_rot_k_are_partial_rotary_by_hand_from_the_rotary_module(frun):
    cfg = frun.bridge.cfg
    fraction = frun.hf_config.rope_parameters["partial_rotary_factor"]
    x = frun.cache["blocks.0.hook_resid_pre"]
    cos, sin = frun.reference.gpt_neox.rotary_emb(x, positions(frun))
    assert cos.shape[-1] == int(cfg.d_head * fraction)
    for i in range(frun.n_layers):
        for n in "qk":
            unrotated = frun.cache[f"blocks.{i}.attn.hook_{n}"]
            expected = rotate_by_hand(unrotated, cos, sin)
            rotated = frun.cache[f"blocks.{i}.attn.hook_rot_{n}"]
            assert_close_at(rotated, expected, frun.real)
            # the dims past the rotary fraction pass through untouched
            assert torch.equal(rotated[..., cos.shape[-1] :], unrotated[..., cos.shape[-1] :])


@runs_of("gpt_neox")
def test_neox_parallel_blocks_list_no_resid_mid_and_sequential_blocks_do(frun):
    parallel = frun.hf_config.use_parallel_residual
    for i in range(frun.n_layers):
        assert (f"blocks.{i}.hook_resid_mid" in frun.bridge.hook_names()) == (not parallel)
        c, b = frun.cache, f"blocks.{i}"
        if parallel:
            expected = c[f"{b}.hook_resid_pre"] + c[f"{b}.hook_attn_out"] + c[f"{b}.hook_mlp_out"]
            # ln2 reads the block input in a parallel block
            centered = c[f"{b}.hook_resid_pre"] - c[f"{b}.hook_resid_pre"].mean(-1, keepdim=True)
            torch.testing.assert_close(c[f"{b}.ln2.hook_normalized"], centered / c[f"{b}.ln2.hook_scale"])
            torch.testing.assert_close(c[f"{b}.ln2.hook_scale"], c[f"{b}.ln1.hook_scale"])
        else:
            torch.testing.assert_close(c[f"{b}.hook_resid_mid"], c[f"{b}.hook_resid_pre"] + c[f"{b}.hook_attn_out"])
            expected = c[f"{b}.hook_resid_mid"] + c[f"{b}.hook_mlp_out"]
        torch.testing.assert_close(c[f"{b}.hook_resid_post"], expected, rtol=0, atol=1e-5)


# --------------------------------------------------------------------------- OPT
@runs_of("opt")
def test_opt_pos_embed_is_w_pos_rows_at_offset_2_by_real_position(frun):
    table = frun.reference.model.decoder.embed_positions.weight
    n_ctx = frun.hf_config.max_position_embeddings
    assert torch.equal(frun.bridge.W_pos, table[2 : 2 + n_ctx])
    assert frun.bridge.W_pos.untyped_storage().data_ptr() == (
        frun.bridge.model.model.decoder.embed_positions.weight.untyped_storage().data_ptr()
    )
    mask = frun.mask if frun.mask is not None else torch.ones_like(frun.toks)
    pos = mask.cumsum(1) - 1  # OPT numbers real tokens from 0, also after left padding
    pos_embed = frun.cache["hook_pos_embed"].expand(*frun.toks.shape, -1)
    assert_close_at(pos_embed, frun.bridge.W_pos[pos.clamp(min=0)], frun.real, atol=0)


@runs_of("opt")
def test_opt_mlp_hooks_are_batch_by_position_although_hf_runs_flat_tokens(frun):
    cfg, (b, s) = frun.bridge.cfg, frun.toks.shape
    paths = [f"{block_path('opt', i)}.{m}" for i in range(frun.n_layers) for m in ("fc1", "fc2")]
    hf = frun.hf_outputs(paths)
    for i in range(frun.n_layers):
        fc1 = hf[f"{block_path('opt', i)}.fc1"]
        assert fc1.shape == (b * s, cfg.d_mlp)  # HF's own shape
        assert frun.cache[f"blocks.{i}.mlp.hook_pre"].shape == (b, s, cfg.d_mlp)
        assert frun.cache[f"blocks.{i}.mlp.hook_post"].shape == (b, s, cfg.d_mlp)
        assert frun.cache[f"blocks.{i}.hook_mlp_out"].shape == (b, s, cfg.d_model)
        assert_close_at(frun.cache[f"blocks.{i}.mlp.hook_pre"], fc1.view(b, s, -1), frun.real)
        act = frun.bridge.act_fn(frun.cache[f"blocks.{i}.mlp.hook_pre"])
        torch.testing.assert_close(frun.cache[f"blocks.{i}.mlp.hook_post"], act, rtol=0, atol=1e-6)
        fc2 = hf[f"{block_path('opt', i)}.fc2"].view(b, s, -1)
        assert_close_at(frun.cache[f"blocks.{i}.hook_mlp_out"], fc2, frun.real)


@runs_of("opt")
def test_opt_post_norm_blocks_normalize_after_attention_and_expose_normalized_resid_post(frun):
    post_norm = not frun.hf_config.do_layer_norm_before
    names = frun.bridge.hook_names()
    for i in range(frun.n_layers):
        b = f"blocks.{i}"
        assert (f"{b}.hook_normalized_resid_post" in names) == post_norm
        if not post_norm:
            assert names.index(f"{b}.ln1.hook_normalized") < names.index(f"{b}.attn.hook_q")
            continue
        # no pre-norm before attention: ln1 comes after the attention and q reads the raw residual
        assert names.index(f"{b}.ln1.hook_normalized") > names.index(f"{b}.attn.hook_pattern")
        q_proj = frun.reference.model.decoder.layers[i].self_attn.q_proj
        q = (frun.cache[f"{b}.hook_resid_pre"] @ q_proj.weight.t() + q_proj.bias).unflatten(
            -1, (-1, frun.bridge.cfg.d_head)
        )
        assert_close_at(frun.cache[f"{b}.attn.hook_q"], q, frun.real)
        hf = frun.hf_outputs([block_path("opt", j) for j in range(frun.n_layers)])
        assert_close_at(frun.cache[f"{b}.hook_normalized_resid_post"], hf[block_path("opt", i)], frun.real)
    assert ("ln_final.hook_normalized" in names) == (not post_norm)


@runs_of("opt")
def test_opt_project_in_and_out_hooks_exist_only_when_the_embedding_width_differs(frun):
    projected = frun.hf_config.word_embed_proj_dim != frun.hf_config.hidden_size
    names = frun.bridge.hook_names()
    assert ("hook_project_in" in names) == projected
    assert ("hook_project_out" in names) == projected
    if not projected:
        return
    hf = frun.hf_outputs(["model.decoder.project_in", "model.decoder.project_out"])
    assert frun.cache["hook_embed"].shape[-1] == frun.hf_config.word_embed_proj_dim
    assert_close_at(frun.cache["hook_project_in"], hf["model.decoder.project_in"], frun.real)
    assert_close_at(frun.cache["hook_project_out"], hf["model.decoder.project_out"], frun.real)
    assert frun.bridge.W_E.shape == (frun.hf_config.vocab_size, frun.hf_config.word_embed_proj_dim)


# --------------------------------------------------------------------------- Gemma 1/2/3
@runs_of("gemma", "gemma2", "gemma3")
def test_gemma_hook_embed_is_w_e_rows_times_embed_scale(frun):
    d_model = frun.hf_config.hidden_size
    assert frun.bridge.cfg.embed_scale == pytest.approx(d_model**0.5)
    expected = frun.reference.model.embed_tokens.weight[frun.toks] * frun.bridge.cfg.embed_scale
    torch.testing.assert_close(frun.cache["hook_embed"], expected, rtol=1e-7, atol=0)
    torch.testing.assert_close(frun.bridge.W_E[frun.toks] * frun.bridge.cfg.embed_scale, expected, rtol=1e-7, atol=0)


@runs_of("gemma", "gemma2", "gemma3")
def test_gemma_rmsnorm_normalized_times_one_plus_w_is_the_hf_input_layernorm_output(frun):
    paths = [ln1_path(frun.family, i) for i in range(frun.n_layers)]
    hf = frun.hf_outputs(paths)
    for i in range(frun.n_layers):
        ln1 = frun.bridge.blocks[i].ln1
        rebuilt = frun.cache[f"blocks.{i}.ln1.hook_normalized"] * (1 + ln1.w)
        assert_close_at(rebuilt, hf[paths[i]], frun.real)
        module = frun.hf_module(paths[i])
        by_hand = rms_offset_by_hand(frun.cache[f"blocks.{i}.hook_resid_pre"], module.weight, module.eps)
        assert_close_at(rebuilt, by_hand, frun.real)


@runs_of("gemma2", "gemma3")
def test_gemma_attn_out_and_mlp_out_are_the_post_norm_outputs(frun):
    paths = {
        (i, which): f"{block_path(frun.family, i)}.{which}"
        for i in range(frun.n_layers)
        for which in ("post_attention_layernorm", "post_feedforward_layernorm")
    }
    hf = frun.hf_outputs(list(paths.values()))
    for i in range(frun.n_layers):
        assert_close_at(frun.cache[f"blocks.{i}.hook_attn_out"], hf[paths[i, "post_attention_layernorm"]], frun.real)
        assert_close_at(frun.cache[f"blocks.{i}.hook_mlp_out"], hf[paths[i, "post_feedforward_layernorm"]], frun.real)


@runs_of("gemma2", "gemma3")
def test_gemma_final_softcap_applies_after_hook_unembed(frun):
    cap = frun.hf_config.final_logit_softcapping
    hf = frun.hf_outputs(["lm_head"])["lm_head"]
    assert_close_at(frun.cache["hook_unembed"], hf, frun.real)  # pre-softcap
    if cap is None:
        assert torch.equal(frun.cache["hook_unembed"], frun.logits)
        return
    softcapped = cap * torch.tanh(frun.cache["hook_unembed"] / cap)
    assert_close_at(softcapped, frun.logits, frun.real, atol=1e-6)
    assert frun.logits.abs().max() <= cap
    assert not torch.allclose(frun.cache["hook_unembed"], frun.logits)


@runs_of("gemma3")
def test_gemma3_q_and_k_norm_points_exist_and_rot_q_is_taken_after_q_norm(frun):
    cfg = frun.bridge.cfg
    names = frun.bridge.hook_names()
    x = frun.cache["blocks.0.hook_resid_pre"]
    for i in range(frun.n_layers):
        b = f"blocks.{i}.attn"
        for n in "qk":
            assert f"{b}.{n}_norm.hook_scale" in names and f"{b}.{n}_norm.hook_normalized" in names
        assert names.index(f"{b}.q_norm.hook_normalized") < names.index(f"{b}.hook_rot_q")
        attn = frun.reference.model.layers[i].self_attn
        layer_type = frun.hf_config.layer_types[i]
        cos, sin = frun.reference.model.rotary_emb(x, positions(frun), layer_type)
        ln1_out = frun.hf_outputs([ln1_path("gemma3", j) for j in range(frun.n_layers)])[ln1_path("gemma3", i)]
        for n, heads, norm in (("q", cfg.n_heads, attn.q_norm), ("k", cfg.n_kv_heads, attn.k_norm)):
            proj = getattr(attn, f"{n}_proj")
            raw = (ln1_out @ proj.weight.t()).unflatten(-1, (heads, cfg.d_head))
            normed = rms_offset_by_hand(raw, norm.weight, norm.eps)
            assert_close_at(frun.cache[f"{b}.{n}_norm.hook_normalized"] * (1 + norm.weight), normed, frun.real)
            assert_close_at(frun.cache[f"{b}.hook_rot_{n}"], rotate_by_hand(normed, cos, sin), frun.real)
            # and not the rotation of the un-normalized projection
            assert not torch.allclose(frun.cache[f"{b}.hook_rot_{n}"], rotate_by_hand(raw, cos, sin), atol=1e-3)
