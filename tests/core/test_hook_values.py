"""Hook values: every cached activation recomputed by hand or captured from the untouched HF model.

Hand computations use the weight views only where the relation *is* about them (`hook_q == ln1_out @
W_Q + b_Q`); the views themselves are checked against raw parameters in test_weight_views.py.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch
from transformers import GPT2LMHeadModel

from bridge_core import ActivationCache, Bridge

from ._helpers import (
    PADDINGS,
    assert_close_at,
    bridge_and_reference,
    capture_outputs,
    eager_copy,
    fired_counts,
    gelu_new,
    padding_mask,
    real_positions,
    tokens,
)


@dataclass
class Run:
    bridge: Bridge
    reference: GPT2LMHeadModel
    toks: torch.Tensor
    mask: torch.Tensor | None
    real: torch.Tensor  # [batch, seq] bool
    logits: torch.Tensor
    cache: ActivationCache

    @property
    def n_layers(self) -> int:
        return self.bridge.cfg.n_layers

    def allowed(self) -> torch.Tensor:
        """`[batch, 1, q, k]` bool: key k may be attended from query q (causal and not padding)."""
        seq = self.toks.shape[1]
        causal = torch.ones(seq, seq, dtype=torch.bool).tril()
        return causal[None, None] & self.real[:, None, None, :]

    def real_queries(self, like: torch.Tensor) -> torch.Tensor:
        """`[batch, heads, q, k]` bool selecting the rows of real query positions."""
        return self.real[:, None, :, None].expand_as(like)

    def ln_out(self, which: str, layer: int | None) -> torch.Tensor:
        """A norm's output rebuilt from the cache: hook_normalized * w + b (weights from the raw HF norm)."""
        if which == "ln_final":
            module, normalized = self.reference.transformer.ln_f, self.cache["ln_final.hook_normalized"]
        else:
            hf_name = {"ln1": "ln_1", "ln2": "ln_2"}[which]
            module = getattr(self.reference.transformer.h[layer], hf_name)
            normalized = self.cache[f"blocks.{layer}.{which}.hook_normalized"]
        return normalized * module.weight + module.bias


# Every implementation and padding on the 3-layer model; two more on a model with 8 heads of d_head 8.
RUNS = [("3L-h3-dh16-inner80", implementation, padding) for implementation in ("sdpa", "eager") for padding in PADDINGS]
RUNS += [("2L-h8-dh8-inner_none", "sdpa", "left"), ("2L-h8-dh8-inner_none", "eager", "right")]


@pytest.fixture(scope="module", params=RUNS, ids=["-".join(r) for r in RUNS])
def run(request) -> Run:
    shape, implementation, padding = request.param
    bridge, reference = bridge_and_reference(shape, implementation)
    toks, mask = tokens(), padding_mask(padding)
    with torch.no_grad():
        logits, cache = bridge.run_with_cache(toks, attention_mask=mask)
    return Run(bridge, reference, toks, mask, real_positions(mask), logits, cache)


def expected_gpt2_hook_names(n_layers: int) -> list[str]:
    names = ["hook_embed", "hook_pos_embed"]
    for i in range(n_layers):
        b = f"blocks.{i}"
        names += [f"{b}.hook_resid_pre", f"{b}.ln1.hook_scale", f"{b}.ln1.hook_normalized"]
        names += [f"{b}.attn.hook_{n}" for n in ("q", "k", "v", "attn_scores", "pattern", "z", "result")]
        names += [f"{b}.hook_attn_out", f"{b}.hook_resid_mid", f"{b}.ln2.hook_scale", f"{b}.ln2.hook_normalized"]
        names += [f"{b}.mlp.hook_pre", f"{b}.mlp.hook_post", f"{b}.hook_mlp_out", f"{b}.hook_resid_post"]
    return [*names, "ln_final.hook_scale", "ln_final.hook_normalized", "hook_unembed"]


# --------------------------------------------------------------------------- which hooks, how often
def test_hook_names_are_the_hooked_transformer_names_of_gpt2(run):
    assert run.bridge.hook_names() == expected_gpt2_hook_names(run.n_layers)


def test_every_listed_hook_fires_exactly_once_per_forward(run):
    counts = fired_counts(run.bridge, run.toks, run.mask)
    assert {name: counts.get(name, 0) for name in run.bridge.hook_names()} == dict.fromkeys(run.bridge.hook_names(), 1)


def test_hook_names_lists_nothing_that_does_not_fire_and_every_fired_hook_is_listed(run):
    counts = fired_counts(run.bridge, run.toks, run.mask)
    assert set(counts) == set(run.bridge.hook_names())


def test_hooks_fire_in_the_order_hook_names_lists_them(run):
    order: list[str] = []
    with torch.no_grad():
        run.bridge.run_with_hooks(run.toks, fwd_hooks=[(lambda n: True, lambda t, h: order.append(h.name))])
    assert order == run.bridge.hook_names()


def test_cached_shapes_follow_hooked_transformer(run):
    cfg, (b, s) = run.bridge.cfg, run.toks.shape
    h, dh, d, m = cfg.n_heads, cfg.d_head, cfg.d_model, cfg.d_mlp
    expected = {
        "hook_embed": (b, s, d),
        "blocks.0.hook_resid_pre": (b, s, d),
        "blocks.0.ln1.hook_scale": (b, s, 1),
        "blocks.0.ln1.hook_normalized": (b, s, d),
        "blocks.0.attn.hook_q": (b, s, h, dh),
        "blocks.0.attn.hook_k": (b, s, h, dh),
        "blocks.0.attn.hook_v": (b, s, h, dh),
        "blocks.0.attn.hook_attn_scores": (b, h, s, s),
        "blocks.0.attn.hook_pattern": (b, h, s, s),
        "blocks.0.attn.hook_z": (b, s, h, dh),
        "blocks.0.attn.hook_result": (b, s, h, d),
        "blocks.0.hook_attn_out": (b, s, d),
        "blocks.0.hook_resid_mid": (b, s, d),
        "blocks.0.mlp.hook_pre": (b, s, m),
        "blocks.0.mlp.hook_post": (b, s, m),
        "blocks.0.hook_mlp_out": (b, s, d),
        "blocks.0.hook_resid_post": (b, s, d),
        "ln_final.hook_normalized": (b, s, d),
        "hook_unembed": (b, s, cfg.d_vocab),
    }
    assert {name: tuple(run.cache[name].shape) for name in expected} == expected
    # HookedTransformer broadcasts the position embedding to [batch, pos, d_model]; [1, pos, d] broadcasts to it.
    assert torch.broadcast_shapes(run.cache["hook_pos_embed"].shape, (b, s, d)) == (b, s, d)


# --------------------------------------------------------------------------- embeddings and residual stream
def test_embed_and_pos_embed_equal_the_hf_embedding_outputs(run):
    hf = capture_outputs(run.reference, run.toks, run.mask, ["transformer.wte", "transformer.wpe"])
    assert torch.equal(run.cache["hook_embed"], hf["transformer.wte"])
    assert torch.equal(run.cache["hook_embed"], run.reference.transformer.wte.weight[run.toks])
    assert run.cache["hook_pos_embed"].shape == run.cache["hook_embed"].shape  # [batch, pos, d], as TransformerLens
    assert torch.equal(run.cache["hook_pos_embed"], hf["transformer.wpe"].expand_as(run.cache["hook_pos_embed"]))
    seq = run.toks.shape[1]
    positions = run.cache["hook_pos_embed"].expand(run.toks.shape[0], -1, -1)
    assert torch.equal(positions[0], run.reference.transformer.wpe.weight[:seq])
    assert torch.equal(run.cache["blocks.0.hook_resid_pre"], run.cache["hook_embed"] + run.cache["hook_pos_embed"])


def test_residual_stream_equals_hf_block_outputs_at_real_positions(run):
    paths = [f"transformer.h.{i}" for i in range(run.n_layers)]
    hf = capture_outputs(run.reference, run.toks, run.mask, paths)
    for i, path in enumerate(paths):
        assert_close_at(run.cache[f"blocks.{i}.hook_resid_post"], hf[path], run.real)


def test_residual_stream_adds_up_block_by_block(run):
    c = run.cache
    for i in range(run.n_layers):
        b = f"blocks.{i}"
        torch.testing.assert_close(c[f"{b}.hook_resid_mid"], c[f"{b}.hook_resid_pre"] + c[f"{b}.hook_attn_out"])
        torch.testing.assert_close(c[f"{b}.hook_resid_post"], c[f"{b}.hook_resid_mid"] + c[f"{b}.hook_mlp_out"])
        if i + 1 < run.n_layers:
            assert torch.equal(c[f"blocks.{i + 1}.hook_resid_pre"], c[f"{b}.hook_resid_post"])


# --------------------------------------------------------------------------- norms
@pytest.mark.parametrize("which", ["ln1", "ln2", "ln_final"])
def test_norm_scale_and_normalized_are_layernorm_by_hand_and_recompose_the_hf_norm_output(run, which):
    layers = [None] if which == "ln_final" else range(run.n_layers)
    for layer in layers:
        if which == "ln_final":
            x, prefix, path = run.cache[f"blocks.{run.n_layers - 1}.hook_resid_post"], "ln_final", "transformer.ln_f"
            eps = run.reference.transformer.ln_f.eps
        else:
            source = "hook_resid_pre" if which == "ln1" else "hook_resid_mid"
            x, prefix = run.cache[f"blocks.{layer}.{source}"], f"blocks.{layer}.{which}"
            path = f"transformer.h.{layer}.{'ln_1' if which == 'ln1' else 'ln_2'}"
            eps = dict(run.reference.named_modules())[path].eps
        centered = x - x.mean(-1, keepdim=True)
        scale = (centered.pow(2).mean(-1, keepdim=True) + eps).sqrt()
        torch.testing.assert_close(run.cache[f"{prefix}.hook_scale"], scale, rtol=0, atol=1e-6)
        torch.testing.assert_close(run.cache[f"{prefix}.hook_normalized"], centered / scale, rtol=0, atol=1e-5)
        hf = capture_outputs(run.reference, run.toks, run.mask, [path])[path]
        assert_close_at(run.ln_out(which, layer), hf, run.real)


# --------------------------------------------------------------------------- attention
def test_q_k_v_equal_ln1_output_through_the_weight_views(run):
    for i in range(run.n_layers):
        attn, ln1 = run.bridge.blocks[i].attn, run.bridge.blocks[i].ln1
        ln1_out = run.cache[f"blocks.{i}.ln1.hook_normalized"] * ln1.w + ln1.b
        for n, W, b in (("q", attn.W_Q, attn.b_Q), ("k", attn.W_K, attn.b_K), ("v", attn.W_V, attn.b_V)):
            by_hand = torch.einsum("bsd,hdk->bshk", ln1_out, W) + b
            torch.testing.assert_close(run.cache[f"blocks.{i}.attn.hook_{n}"], by_hand, rtol=0, atol=1e-5)


def test_q_k_v_equal_slices_of_the_hf_c_attn_output(run):
    cfg = run.bridge.cfg
    paths = [f"transformer.h.{i}.attn.c_attn" for i in range(run.n_layers)]
    hf = capture_outputs(run.reference, run.toks, run.mask, paths)
    for i, path in enumerate(paths):
        q, k, v = hf[path].split(cfg.d_model, dim=-1)
        for n, part in (("q", q), ("k", k), ("v", v)):
            by_hand = part.reshape(*part.shape[:-1], cfg.n_heads, cfg.d_head)
            assert_close_at(run.cache[f"blocks.{i}.attn.hook_{n}"], by_hand, run.real)


def test_attn_scores_are_scaled_q_dot_k_where_attention_is_allowed(run):
    allowed = run.allowed()
    for i in range(run.n_layers):
        q, k = run.cache[f"blocks.{i}.attn.hook_q"], run.cache[f"blocks.{i}.attn.hook_k"]
        by_hand = torch.einsum("bqhd,bkhd->bhqk", q, k) / run.bridge.cfg.d_head**0.5
        scores = run.cache[f"blocks.{i}.attn.hook_attn_scores"]
        where = allowed.expand_as(scores) & run.real_queries(scores)
        torch.testing.assert_close(scores[where], by_hand[where], rtol=0, atol=1e-5)
        assert bool((scores[~allowed.expand_as(scores) & run.real_queries(scores)] < -1e30).all())


def test_pattern_is_softmax_of_attn_scores(run):
    for i in range(run.n_layers):
        scores, pattern = run.cache[f"blocks.{i}.attn.hook_attn_scores"], run.cache[f"blocks.{i}.attn.hook_pattern"]
        rows = run.real_queries(pattern)
        assert torch.equal(torch.softmax(scores, dim=-1)[rows], pattern[rows])


def test_pattern_rows_sum_to_one_and_masked_positions_get_zero_probability(run):
    for i in range(run.n_layers):
        pattern = run.cache[f"blocks.{i}.attn.hook_pattern"]
        rows = run.real_queries(pattern)
        sums = pattern.sum(-1)[rows[..., 0]]
        torch.testing.assert_close(sums, torch.ones_like(sums), rtol=0, atol=1e-6)
        causal = torch.ones(pattern.shape[-1], pattern.shape[-1], dtype=torch.bool).tril()
        future = ~causal.expand_as(pattern) & rows
        assert bool((pattern[future] == 0).all()), "a future position got probability"
        padded_keys = ~run.real[:, None, None, :].expand_as(pattern) & rows
        assert bool((pattern[padded_keys] == 0).all()), "a padded key got probability"


def test_pattern_equals_the_attention_probabilities_of_hf_eager_attention(run):
    """docs/architecture.md: the eager path reproduces HF's eager attention probabilities exactly."""
    with torch.no_grad():
        out = eager_copy(run.reference)(input_ids=run.toks, attention_mask=run.mask, output_attentions=True)
    assert len(out.attentions) == run.n_layers
    for i, hf_pattern in enumerate(out.attentions):
        pattern = run.cache[f"blocks.{i}.attn.hook_pattern"]
        rows = run.real_queries(pattern)
        assert torch.equal(pattern[rows], hf_pattern[rows]), f"layer {i}"


def test_pattern_is_bit_identical_to_hf_eager_attention_probabilities_without_kv_cache(run):
    with torch.no_grad():
        _, cache = run.bridge.run_with_cache(run.toks, attention_mask=run.mask, use_cache=False)
        out = eager_copy(run.reference)(
            input_ids=run.toks, attention_mask=run.mask, output_attentions=True, use_cache=False
        )
    for i, hf_pattern in enumerate(out.attentions):
        pattern = cache[f"blocks.{i}.attn.hook_pattern"]
        rows = run.real_queries(pattern)
        assert torch.equal(pattern[rows], hf_pattern[rows]), f"layer {i}"


def test_default_run_with_cache_pattern_is_bit_identical_to_hf_eager_default_call():
    bridge, reference = bridge_and_reference("3L-h3-dh16-inner80", "sdpa")
    toks = tokens()
    with torch.no_grad():
        _, cache = bridge.run_with_cache(toks)
        out = eager_copy(reference)(input_ids=toks, output_attentions=True)
    for i, hf_pattern in enumerate(out.attentions):
        assert torch.equal(cache[f"blocks.{i}.attn.hook_pattern"], hf_pattern), f"layer {i}"


def test_z_is_the_pattern_weighted_sum_of_v(run):
    for i in range(run.n_layers):
        pattern, v = run.cache[f"blocks.{i}.attn.hook_pattern"], run.cache[f"blocks.{i}.attn.hook_v"]
        by_hand = torch.einsum("bhqk,bkhd->bqhd", pattern, v)
        assert_close_at(run.cache[f"blocks.{i}.attn.hook_z"], by_hand, run.real, atol=1e-6)


def test_z_through_W_O_plus_b_O_recomposes_attn_out(run):
    for i in range(run.n_layers):
        attn = run.bridge.blocks[i].attn
        by_hand = torch.einsum("bshd,hdm->bsm", run.cache[f"blocks.{i}.attn.hook_z"], attn.W_O) + attn.b_O
        torch.testing.assert_close(run.cache[f"blocks.{i}.hook_attn_out"], by_hand, rtol=0, atol=1e-5)


def test_result_is_per_head_z_times_W_O_and_sums_over_heads_plus_b_O_to_attn_out(run):
    for i in range(run.n_layers):
        attn, result = run.bridge.blocks[i].attn, run.cache[f"blocks.{i}.attn.hook_result"]
        per_head = torch.einsum("bshd,hdm->bshm", run.cache[f"blocks.{i}.attn.hook_z"], attn.W_O)
        torch.testing.assert_close(result, per_head, rtol=0, atol=1e-5)
        torch.testing.assert_close(result.sum(-2) + attn.b_O, run.cache[f"blocks.{i}.hook_attn_out"], rtol=0, atol=1e-5)


def test_attn_out_equals_the_hf_attention_module_output_at_real_positions(run):
    paths = [f"transformer.h.{i}.attn" for i in range(run.n_layers)]
    hf = capture_outputs(run.reference, run.toks, run.mask, paths)
    for i, path in enumerate(paths):
        assert_close_at(run.cache[f"blocks.{i}.hook_attn_out"], hf[path], run.real)


# --------------------------------------------------------------------------- MLP and unembedding
def test_mlp_hooks_recompute_from_ln2_output_and_the_weight_views(run):
    for i in range(run.n_layers):
        mlp, c = run.bridge.blocks[i].mlp, run.cache
        pre, post = c[f"blocks.{i}.mlp.hook_pre"], c[f"blocks.{i}.mlp.hook_post"]
        torch.testing.assert_close(pre, run.ln_out("ln2", i) @ mlp.W_in + mlp.b_in, rtol=0, atol=1e-5)
        torch.testing.assert_close(post, gelu_new(pre), rtol=0, atol=1e-6)
        torch.testing.assert_close(c[f"blocks.{i}.hook_mlp_out"], post @ mlp.W_out + mlp.b_out, rtol=0, atol=1e-5)


def test_mlp_out_equals_the_hf_mlp_output_at_real_positions(run):
    paths = [f"transformer.h.{i}.mlp" for i in range(run.n_layers)]
    hf = capture_outputs(run.reference, run.toks, run.mask, paths)
    for i, path in enumerate(paths):
        assert_close_at(run.cache[f"blocks.{i}.hook_mlp_out"], hf[path], run.real)


def test_logits_equal_ln_final_output_times_W_U_plus_b_U(run):
    by_hand = run.ln_out("ln_final", None) @ run.bridge.W_U + run.bridge.b_U
    torch.testing.assert_close(run.logits, by_hand, rtol=0, atol=1e-5)
    raw = run.ln_out("ln_final", None) @ run.reference.lm_head.weight.T
    torch.testing.assert_close(run.logits, raw, rtol=0, atol=1e-5)
    assert torch.equal(run.cache["hook_unembed"], run.logits)
