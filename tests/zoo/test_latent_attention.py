"""Multi-head latent attention (DeepSeek V2, MiniCPM3): every hook value against HF's own computation
(plain torch hooks on an untouched copy's submodules, or hand computation from its weights), edits at
hook_z / hook_v against hand-made HF edits, factored weight views sharing storage and composing to HF's
projections, and the conformance catalogue on every test model."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch

from bridge_core import Bridge
from bridge_core.bridge.latent_attention import LatentWeightError
from bridge_core.conformance.runner import run_variants
from tests._hf_edits import logits_with_input_slice_zeroed

MINICPM3 = Path(__file__).resolve().parents[2] / "adapter_specs" / "minicpm3.yaml"


@pytest.fixture(scope="module", params=["deepseek_v2", "deepseek_v2:no_q_lora", "minicpm3"])
def pair(request):
    """A bridge over a tiny model, and an untouched deep copy of that model (never bridged)."""
    name, _, variant = request.param.partition(":")
    spec = MINICPM3 if name == "minicpm3" else name
    overrides = {"q_lora_rank": None} if variant == "no_q_lora" else {}
    bridge = Bridge.from_spec(spec, **overrides)
    return bridge, copy.deepcopy(bridge.model)


def _tokens() -> torch.Tensor:
    return torch.randint(3, 100, (2, 9), generator=torch.Generator().manual_seed(1))


def _record(model, tokens) -> tuple[torch.Tensor, dict[str, tuple]]:
    """HF's own forward with plain torch hooks: every submodule's input and output."""
    seen: dict[str, tuple] = {}
    handles = []
    for name, module in model.named_modules():
        if ".self_attn" in name:

            def keep(mod, args, kwargs, output, name=name):
                seen[name] = ((args[0] if args else kwargs.get("hidden_states", kwargs.get("input"))), output)

            handles.append(module.register_forward_hook(keep, with_kwargs=True))
    try:
        with torch.no_grad():
            logits = model(tokens).logits
    finally:
        for handle in handles:
            handle.remove()
    return logits, seen


def test_logits_bit_identical_without_hooks(pair):
    bridge, hf = pair
    tokens = _tokens()
    with torch.no_grad():
        assert torch.equal(bridge(tokens), hf(tokens).logits)


def test_every_latent_hook_equals_hfs_own_tensors(pair):
    bridge, hf = pair
    tokens = _tokens()
    _, cache = bridge.run_with_cache(tokens)
    _, seen = _record(hf, tokens)
    config = hf.config
    h, nope, rope, dv = (
        config.num_attention_heads,
        config.qk_nope_head_dim,
        config.qk_rope_head_dim,
        config.v_head_dim,
    )
    for i in range(config.num_hidden_layers):
        # block 0 sees HF's very input: bit-identical; later blocks follow the bridge's eager attention
        # (hook_pattern is cached) where HF ran sdpa, so they agree to float32 rounding
        def same(ours, theirs, exact=i == 0):
            torch.testing.assert_close(ours, theirs, **({"rtol": 0, "atol": 0} if exact else {}))

        at, p = f"model.layers.{i}.self_attn", f"blocks.{i}.attn"
        attn = hf.model.layers[i].self_attn
        query = "q_b_proj" if config.q_lora_rank is not None else "q_proj"
        q = seen[f"{at}.{query}"][1].unflatten(-1, (h, nope + rope))
        same(cache[f"{p}.hook_q"], q)
        if config.q_lora_rank is not None:
            same(cache[f"{p}.hook_q_latent"], seen[f"{at}.q_a_layernorm"][1])
        else:
            assert f"{p}.hook_q_latent" not in cache
        kv_a = seen[f"{at}.kv_a_proj_with_mqa"][1]
        same(cache[f"{p}.hook_k_rope"], kv_a[..., config.kv_lora_rank :])
        same(cache[f"{p}.hook_kv_latent"], seen[f"{at}.kv_a_layernorm"][1])
        kv_b = seen[f"{at}.kv_b_proj"][1][:, 0].unflatten(-1, (h, nope + dv))  # HF feeds kv_b [b, 1, s, rank]
        same(cache[f"{p}.hook_k"], kv_b[..., :nope])
        same(cache[f"{p}.hook_v"], kv_b[..., nope:])
        z_hf = seen[f"{at}.o_proj"][0].unflatten(-1, (h, dv))
        same(cache[f"{p}.hook_z"], z_hf, exact=False)  # eager (the bridge) vs sdpa (HF)
        # hand computation from the hooks: scores from the rotated q and k, pattern, z from the values
        q_rot, k_rot = cache[f"{p}.hook_rot_q"], cache[f"{p}.hook_rot_k"]
        assert torch.equal(q_rot[..., :nope], cache[f"{p}.hook_q"][..., :nope])  # rotary leaves nope parts alone
        assert torch.equal(k_rot[..., :nope], cache[f"{p}.hook_k"])
        assert torch.equal(k_rot[..., nope:], k_rot[..., :1, nope:].expand_as(k_rot[..., nope:]))  # one shared key
        scores = torch.einsum("bqhd,bkhd->bhqk", q_rot, k_rot) * attn.scaling
        causal = torch.ones(9, 9, dtype=torch.bool).tril()
        torch.testing.assert_close(cache[f"{p}.hook_attn_scores"][..., causal], scores[..., causal])
        torch.testing.assert_close(cache[f"{p}.hook_pattern"], cache[f"{p}.hook_attn_scores"].softmax(-1))
        z = torch.einsum("bhqk,bkhd->bqhd", cache[f"{p}.hook_pattern"], cache[f"{p}.hook_v"])
        torch.testing.assert_close(z, cache[f"{p}.hook_z"], rtol=1e-5, atol=1e-6)


def test_zeroing_a_head_at_hook_z_equals_zeroing_its_o_proj_columns_in_hf(pair):
    bridge, hf = pair
    tokens, head, dv = _tokens(), 1, hf.config.v_head_dim

    o_proj = hf.model.layers[0].self_attn.o_proj
    expected = logits_with_input_slice_zeroed(hf, o_proj, tokens, head * dv, (head + 1) * dv)

    def zero_head(z, hook):
        z[:, :, head] = 0

    logits = bridge.run_with_hooks(tokens, fwd_hooks=[("blocks.0.attn.hook_z", zero_head)])
    assert not torch.equal(logits, bridge(tokens))
    torch.testing.assert_close(logits, expected, rtol=1e-5, atol=1e-5)


def test_editing_hook_v_changes_attn_out_by_the_hand_computed_amount(pair):
    bridge, _ = pair
    tokens, last = _tokens(), f"blocks.{bridge.cfg.n_layers - 1}"
    delta = torch.randn(bridge.cfg.d_head_v, generator=torch.Generator().manual_seed(2))
    _, clean = bridge.run_with_cache(tokens)

    def add_to_head0(v, hook):
        v[:, :, 0] += delta

    with bridge.hooks(fwd_hooks=[(f"{last}.attn.hook_v", add_to_head0)]):
        _, edited = bridge.run_with_cache(tokens, names_filter=lambda n: n.startswith(last))
    pattern = clean[f"{last}.attn.hook_pattern"][:, 0]  # [b, q, k]: rows sum to one
    W_O = bridge.blocks[bridge.cfg.n_layers - 1].attn.W_O[0]  # [d_head_v, d_model]
    # hook_attn_out is what HF adds to the residual: the output projection times the residual multiplier
    change = torch.einsum("bqk,d->bqd", pattern, delta) @ W_O * bridge.cfg.residual_multiplier
    got = edited[f"{last}.hook_attn_out"] - clean[f"{last}.hook_attn_out"]
    torch.testing.assert_close(got, change, rtol=1e-4, atol=1e-5)


def test_factored_weight_views_share_storage_and_compose_to_hfs_projections(pair):
    bridge, hf = pair
    config, attn_hf = hf.config, hf.model.layers[0].self_attn
    attn = bridge.blocks[0].attn
    module = bridge.model.model.layers[0].self_attn
    x = torch.randn(2, 5, config.hidden_size)
    h, nope, dv = config.num_attention_heads, config.qk_nope_head_dim, config.v_head_dim
    views = {"W_KV_a": module.kv_a_proj_with_mqa, "W_K_rope": module.kv_a_proj_with_mqa}
    views.update(W_K_b=module.kv_b_proj, W_V_b=module.kv_b_proj, W_O=module.o_proj)
    if config.q_lora_rank is not None:
        views.update(W_Q_a=module.q_a_proj, W_Q_b=module.q_b_proj)
        with pytest.raises(LatentWeightError, match="W_Q_a, W_Q_b"):
            attn.W_Q  # noqa: B018
    else:
        views["W_Q"] = module.q_proj
        with pytest.raises(LatentWeightError, match="no query latent"):
            attn.W_Q_a  # noqa: B018
    for name, owner in views.items():
        view = getattr(attn, name)
        assert view.untyped_storage().data_ptr() == owner.weight.untyped_storage().data_ptr(), name
    for name in ("W_K", "W_V", "b_K", "b_V"):
        with pytest.raises(LatentWeightError, match="latent"):
            getattr(attn, name)
    with torch.no_grad():
        if config.q_lora_rank is not None:
            q = torch.einsum("bsr,hrd->bshd", attn_hf.q_a_layernorm(x @ attn.W_Q_a), attn.W_Q_b)
            expected_q = attn_hf.q_b_proj(attn_hf.q_a_layernorm(attn_hf.q_a_proj(x)))
        else:
            q = torch.einsum("bsm,hmd->bshd", x, attn.W_Q)
            expected_q = attn_hf.q_proj(x)
        torch.testing.assert_close(q.flatten(-2), expected_q)
        latent = attn_hf.kv_a_layernorm(x @ attn.W_KV_a)
        kv = attn_hf.kv_b_proj(latent).unflatten(-1, (h, nope + dv))
        torch.testing.assert_close(torch.einsum("bsr,hrd->bshd", latent, attn.W_K_b), kv[..., :nope])
        torch.testing.assert_close(torch.einsum("bsr,hrd->bshd", latent, attn.W_V_b), kv[..., nope:])
        torch.testing.assert_close(x @ attn.W_K_rope, attn_hf.kv_a_proj_with_mqa(x)[..., config.kv_lora_rank :])
        z = torch.randn(2, 5, h, dv)
        torch.testing.assert_close(torch.einsum("bshd,hdm->bsm", z, attn.W_O), attn_hf.o_proj(z.flatten(-2)))
    original = module.kv_b_proj.weight.detach().clone()
    try:
        with torch.no_grad():
            attn.W_V_b[0, 0, 0] += 1.0  # an edit of the view is an edit of HF's parameter
        assert module.kv_b_proj.weight[nope, 0] == original[nope, 0] + 1.0
    finally:
        with torch.no_grad():
            module.kv_b_proj.weight.copy_(original)


def test_hook_k_and_v_show_only_the_current_positions_during_cached_generation():
    bridge = Bridge.from_spec("deepseek_v2")
    widths: list[tuple[int, ...]] = []
    prompt = _tokens()[:1, :5]

    def note(tensor, hook):
        widths.append(tuple(tensor.shape))

    with bridge.hooks(fwd_hooks=[("blocks.0.attn.hook_v", note)]):
        bridge.generate(prompt, max_new_tokens=3, do_sample=False, use_past_kv_cache=True, verbose=False)
    assert widths[0][1] == 5 and all(shape[1] == 1 for shape in widths[1:]), widths


def test_minicpm3_with_its_multipliers_conforms_on_every_test_model():
    reports = run_variants(MINICPM3)
    assert len(reports) == 3 and all(report.ok for report in reports), "\n".join(map(str, reports))


def _with_qkv(**changes):
    from bridge_core.registry import default_registry

    raw = default_registry().entry("deepseek_v2").raw
    data = copy.deepcopy(raw.data)
    qkv = data["block"]["attn"]["qkv"]
    for key, value in changes.items():
        if value is None:
            qkv.pop(key)
        else:
            qkv[key] = value
    return raw, data


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"kv_a_norm": None}, "needs kv_a_norm"),
        ({"q_a_norm": None}, "all of q_a, q_a_norm, q_b or none"),
        ({"k": "k_proj"}, "takes no 'path', 'k' or 'v'"),
        ({"q_a": None, "q_a_norm": None, "q_b": None, "q": None}, "or q"),
    ],
)
def test_a_malformed_latent_qkv_is_refused_with_what_is_missing(changes, message):
    from bridge_core.errors import SpecError
    from bridge_core.spec.loader import RawSpec, validate_spec

    raw, data = _with_qkv(**changes)
    with pytest.raises(SpecError, match=message):
        validate_spec(RawSpec(raw.file, data, raw.lines))


def test_latent_fields_on_another_kind_and_missing_widths_are_refused():
    from bridge_core.errors import SpecError
    from bridge_core.registry import default_registry
    from bridge_core.spec.loader import RawSpec, validate_spec

    llama = default_registry().entry("llama").raw
    data = copy.deepcopy(llama.data)
    data["block"]["attn"]["qkv"]["kv_b"] = "kv_b_proj"
    with pytest.raises(SpecError, match="kind: latent"):
        validate_spec(RawSpec(llama.file, data, llama.lines))
    raw, data = _with_qkv()
    del data["config"]["d_head_v"]
    with pytest.raises(SpecError, match="d_head_v"):
        Bridge.from_spec(validate_spec(RawSpec(raw.file, data, raw.lines)))
