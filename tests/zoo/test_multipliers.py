"""Scalar multipliers at hook boundaries (docs/decisions/0013-multipliers.md), on Granite.

Granite multiplies the embedding by `embedding_multiplier`, each sublayer output by `residual_multiplier`
before the residual add, scores by `attention_multiplier` and divides the logits by `logits_scaling`,
all outside any module. References are HF's own: plain torch forward hooks on an untouched deep copy,
HF's eager attention probabilities, and the config values applied by hand to HF's module outputs.
Cohere's logit scale is tested on the unit level only (its blocks need a parallel block with one
shared norm, which the spec language cannot express yet).
"""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
import transformers

from bridge_core import Bridge
from bridge_core.bridge.reimplement import with_attention_implementation
from bridge_core.conformance.runner import run_variants
from bridge_core.spec.config import normalize_config
from bridge_core.spec.loader import load_spec

SPEC = Path(__file__).resolve().parents[2] / "adapter_specs" / "granite.yaml"
MULTIPLIERS = dict(embedding_multiplier=6.5, residual_multiplier=0.22, attention_multiplier=0.09, logits_scaling=3.3)
CONFIG = dict(
    num_hidden_layers=2,
    hidden_size=64,
    num_attention_heads=4,
    num_key_value_heads=2,
    intermediate_size=96,
    vocab_size=101,
    max_position_embeddings=64,
    bos_token_id=1,
    eos_token_id=2,
    pad_token_id=0,
    **MULTIPLIERS,
)


def _granite(attn_implementation: str = "sdpa") -> torch.nn.Module:
    torch.manual_seed(0)
    config = transformers.AutoConfig.for_model("granite", **CONFIG)
    config._attn_implementation = attn_implementation
    model = transformers.GraniteForCausalLM(config).eval()
    with torch.no_grad():  # weights large enough that the multipliers move values visibly
        for parameter in model.parameters():
            if parameter.dim() == 2:
                parameter.normal_(0.0, 0.3)
    return model


@pytest.fixture(scope="module")
def setup():
    model = _granite()
    reference = copy.deepcopy(model)  # untouched: torch hooks read HF's own tensors here
    bridge = Bridge.from_hf(model, SPEC)
    tokens = torch.randint(3, CONFIG["vocab_size"], (2, 7), generator=torch.Generator().manual_seed(1))
    return bridge, reference, tokens


def _BOUNDARY(name: str) -> bool:
    """Points at module boundaries and norms: caching them does not route attention to the eager path."""
    return ".attn." not in name


def _hf_record(model: torch.nn.Module, tokens: torch.Tensor, edits: dict | None = None) -> dict[str, torch.Tensor]:
    """HF's own tensors: module outputs (element 0), block inputs, the final norm's input, and the logits."""
    seen: dict[str, torch.Tensor] = {}
    handles = []
    inner = model.model

    def keep(name):
        def hook(module, args, output):
            tensor = output[0] if isinstance(output, tuple) else output
            seen[name] = tensor.detach().clone()
            if edits and name in edits:
                edited = edits[name](tensor)
                return (edited, *output[1:]) if isinstance(output, tuple) else edited

        return hook

    def keep_input(name):
        def hook(module, args, kwargs):
            seen[name] = (args[0] if args else kwargs["hidden_states"]).detach().clone()

        return hook

    handles.append(inner.embed_tokens.register_forward_hook(keep("embed_tokens")))
    handles.append(inner.norm.register_forward_pre_hook(keep_input("norm_in"), with_kwargs=True))
    handles.append(model.lm_head.register_forward_hook(keep("lm_head")))
    for i, layer in enumerate(inner.layers):
        handles.append(layer.register_forward_pre_hook(keep_input(f"{i}.in"), with_kwargs=True))
        handles.append(layer.self_attn.register_forward_hook(keep(f"{i}.self_attn")))
        ln2 = layer.post_attention_layernorm
        handles.append(ln2.register_forward_pre_hook(keep_input(f"{i}.mid"), with_kwargs=True))
        handles.append(layer.mlp.register_forward_hook(keep(f"{i}.mlp")))
        handles.append(layer.register_forward_hook(keep(f"{i}.out")))
    try:
        with torch.no_grad():
            seen["logits"] = model(input_ids=tokens, use_cache=False).logits
    finally:
        for handle in handles:
            handle.remove()
    return seen


def test_granite_spec_passes_the_catalogue_on_every_variant():
    reports = run_variants(SPEC)
    names = sorted(report.architecture for report in reports)
    assert names == sorted(f"granite{v}" for v in ("", "[mha]", "[biases]", "[tied]", "[unit_multipliers]", "[eager]"))
    for report in reports:
        assert not report.failed(), str(report)


def test_logits_without_hooks_are_hfs_bit_for_bit(setup):
    bridge, reference, tokens = setup
    with torch.no_grad():
        assert torch.equal(bridge(tokens), reference(input_ids=tokens).logits)


def test_hook_values_are_hfs_own_products(setup):
    """Every point a multiplier touches equals HF's module output times the HF config value, bit for bit
    (the same multiply HF makes), and each residual is exactly the sum HF forms."""
    bridge, reference, tokens = setup
    hf = _hf_record(reference, tokens)
    with torch.no_grad():  # module-boundary points only: attention keeps HF's kernel, so values are HF's bits
        logits, cache = bridge.run_with_cache(tokens, names_filter=_BOUNDARY)
    m = MULTIPLIERS
    assert torch.equal(cache["hook_embed"], hf["embed_tokens"] * m["embedding_multiplier"])
    assert torch.equal(cache["hook_embed"], hf["0.in"])  # what HF hands the first block
    for i in range(CONFIG["num_hidden_layers"]):
        p = f"blocks.{i}"
        assert torch.equal(cache[f"{p}.hook_attn_out"], hf[f"{i}.self_attn"] * m["residual_multiplier"])
        assert torch.equal(cache[f"{p}.hook_mlp_out"], hf[f"{i}.mlp"] * m["residual_multiplier"])
        # residual + contribution, as HF adds them
        assert torch.equal(cache[f"{p}.hook_resid_mid"], hf[f"{i}.mid"])
        assert torch.equal(cache[f"{p}.hook_resid_mid"], cache[f"{p}.hook_resid_pre"] + cache[f"{p}.hook_attn_out"])
        assert torch.equal(cache[f"{p}.hook_resid_post"], cache[f"{p}.hook_resid_mid"] + cache[f"{p}.hook_mlp_out"])
    assert torch.equal(cache["hook_unembed"], hf["lm_head"])  # before the logit scale, as before a softcap
    assert torch.equal(logits, hf["lm_head"] / m["logits_scaling"])
    assert bridge.cfg.embed_scale == m["embedding_multiplier"]
    assert bridge.cfg.residual_multiplier == m["residual_multiplier"]
    assert bridge.cfg.logit_scale == pytest.approx(1 / m["logits_scaling"], rel=1e-15)
    assert 1 / bridge.cfg.attn_scale == pytest.approx(m["attention_multiplier"], rel=1e-15)


def _eager_probabilities(tokens: torch.Tensor) -> tuple:
    """HF's own eager attention probabilities, from a fresh model with the same weights."""
    model = _granite("eager")
    with torch.no_grad():
        return model(input_ids=tokens, output_attentions=True, use_cache=False).attentions


@pytest.mark.parametrize("implementation", ["interface", "reimplement"])
def test_scores_use_the_attention_multiplier_on_both_paths(setup, implementation):
    """hook_attn_scores = rot_q·rot_k × attention_multiplier (by hand, GQA keys repeated), and the pattern is
    HF's eager probabilities, on the interface path and on the reimplement path (which scales by cfg)."""
    _, _, tokens = setup
    spec = with_attention_implementation(load_spec(SPEC), implementation)
    bridge = Bridge.from_hf(_granite(), spec)
    with torch.no_grad():
        _, cache = bridge.run_with_cache(tokens)
    expected = _eager_probabilities(tokens)
    seq = tokens.shape[1]
    causal = torch.ones(seq, seq, dtype=torch.bool).tril()
    group = CONFIG["num_attention_heads"] // CONFIG["num_key_value_heads"]
    for i in range(CONFIG["num_hidden_layers"]):
        q = cache[f"blocks.{i}.attn.hook_rot_q"]  # [b, s, h, d]
        k = cache[f"blocks.{i}.attn.hook_rot_k"].repeat_interleave(group, dim=2)
        by_hand = torch.einsum("bqhd,bkhd->bhqk", q, k) * MULTIPLIERS["attention_multiplier"]
        scores = cache[f"blocks.{i}.attn.hook_attn_scores"]
        torch.testing.assert_close(scores[..., causal], by_hand[..., causal], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(cache[f"blocks.{i}.attn.hook_pattern"], expected[i], rtol=1e-5, atol=1e-6)


def test_a_sqrt_d_head_score_scale_would_be_visibly_wrong(setup):
    """The multiplier is far from the default scale, so the value tests above could not pass by accident."""
    bridge, _, _ = setup
    assert abs(bridge.cfg.attn_scale - bridge.cfg.d_head**0.5) > 1.0


def test_decomposed_residual_adds_up_to_the_final_norm_input(setup):
    bridge, reference, tokens = setup
    hf = _hf_record(reference, tokens)
    with torch.no_grad():
        _, cache = bridge.run_with_cache(tokens, names_filter=_BOUNDARY)
    parts, labels = cache.decompose_resid(return_labels=True)
    assert labels == ["embed", "0_attn_out", "0_mlp_out", "1_attn_out", "1_mlp_out"]
    torch.testing.assert_close(parts.sum(0), hf["norm_in"], rtol=0, atol=1e-5)
    # without the multipliers (raw module outputs, unscaled embedding) the sum is far off
    raw = hf["embed_tokens"] + sum(hf[f"{i}.{s}"] for i in range(2) for s in ("self_attn", "mlp"))
    assert (raw - hf["norm_in"]).abs().max() > 0.1
    accumulated = cache.accumulated_resid()
    assert torch.equal(accumulated[-1], hf["norm_in"])
    assert torch.equal(accumulated[0], hf["0.in"])


def test_direct_logit_attribution_adds_up_to_the_logit_differences(setup):
    """On a processed copy (final norm weight folded into W_U, as TransformerLens needs), each component's
    attribution, summed, is the model's own logit difference, logit scale included."""
    bridge, _, tokens = setup
    processed = bridge.processed_copy()
    right, wrong = tokens[:, -1], (tokens[:, -1] + 1) % CONFIG["vocab_size"]
    with torch.no_grad():
        logits, cache = processed.run_with_cache(tokens)
    parts = cache.decompose_resid(pos_slice=-1)
    attrs = cache.logit_attrs(parts, right, incorrect_tokens=wrong, pos_slice=-1)  # [components, batch]
    rows = torch.arange(tokens.shape[0])
    difference = logits[rows, -1, right] - logits[rows, -1, wrong]
    assert difference.abs().min() > 1e-3  # not a trivially zero difference
    torch.testing.assert_close(attrs.sum(0), difference, rtol=1e-5, atol=1e-5)
    with torch.no_grad():  # processing keeps the logits (up to rounding): the same differences as the original
        original = bridge(tokens)
    torch.testing.assert_close(original[rows, -1, right] - original[rows, -1, wrong], difference, rtol=1e-4, atol=1e-5)


def test_read_only_and_equal_replacing_hooks_keep_logits_bit_identical(setup):
    bridge, reference, tokens = setup
    names = ["hook_embed", *[f"blocks.{i}.hook_{s}" for i in range(2) for s in ("attn_out", "mlp_out")]]
    with torch.no_grad():
        plain = reference(input_ids=tokens).logits
        read = bridge.run_with_hooks(tokens, fwd_hooks=[(n, lambda t, hook: None) for n in names])
        cloned = bridge.run_with_hooks(tokens, fwd_hooks=[(n, lambda t, hook: t.clone()) for n in names])
    assert torch.equal(read, plain)
    assert torch.equal(cloned, plain)


def test_edits_at_scaled_points_equal_edits_of_hfs_contribution(setup):
    """Zeroing hook_attn_out is zeroing HF's attention output (exactly); +δ at hook_attn_out moves the mid
    residual by δ, which in HF is +δ / residual_multiplier on the attention output."""
    bridge, reference, tokens = setup
    m = MULTIPLIERS["residual_multiplier"]
    with torch.no_grad():
        zeroed = bridge.run_with_hooks(tokens, fwd_hooks=[("blocks.0.hook_attn_out", lambda t, hook: t * 0)])
    hf_zeroed = _hf_record(reference, tokens, {"0.self_attn": torch.zeros_like})["logits"]
    assert torch.equal(zeroed, hf_zeroed)

    delta = torch.randn(CONFIG["hidden_size"], generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        _, before = bridge.run_with_cache(tokens, names_filter="blocks.0.hook_resid_mid")
        with bridge.hooks(fwd_hooks=[("blocks.0.hook_attn_out", lambda t, hook: t + delta)]):
            shifted, after = bridge.run_with_cache(tokens, names_filter="blocks.0.hook_resid_mid")
    moved = after["blocks.0.hook_resid_mid"] - before["blocks.0.hook_resid_mid"]
    torch.testing.assert_close(moved, delta.expand_as(moved), rtol=0, atol=1e-5)
    hf_shifted = _hf_record(reference, tokens, {"0.self_attn": lambda t: t + delta / m})["logits"]
    torch.testing.assert_close(shifted, hf_shifted, rtol=1e-5, atol=1e-5)


def test_edit_of_hook_embed_is_what_enters_the_first_block(setup):
    bridge, _, tokens = setup
    replacement = torch.randn(*tokens.shape, CONFIG["hidden_size"], generator=torch.Generator().manual_seed(3))
    seen = {}
    with torch.no_grad():
        bridge.run_with_hooks(
            tokens,
            fwd_hooks=[
                ("hook_embed", lambda t, hook: replacement),
                ("blocks.0.hook_resid_pre", lambda t, hook: seen.__setitem__("x", t.clone())),
            ],
        )
    torch.testing.assert_close(seen["x"], replacement, rtol=1e-6, atol=0)  # one division and one multiply


def test_backward_hook_on_a_scaled_point_gets_the_contributions_gradient(setup):
    """d loss / d hook_attn_out is the gradient HF's residual add passes to `output * m` (by autograd on the
    copy: d loss / d attention output, divided by m)."""
    bridge, reference, tokens = setup
    m = MULTIPLIERS["residual_multiplier"]
    grads = {}
    with torch.enable_grad():
        loss = bridge.run_with_hooks(
            tokens,
            return_type="loss",
            bwd_hooks=[("blocks.0.hook_attn_out", lambda g, hook: grads.__setitem__("g", g.clone()))],
        )
        loss.backward()
        kept = {}

        def keep(module, args, output) -> None:
            output[0].retain_grad()
            kept["out"] = output[0]

        handle = reference.model.layers[0].self_attn.register_forward_hook(keep)
        try:
            reference(input_ids=tokens, labels=tokens, use_cache=False).loss.backward()
        finally:
            handle.remove()
    bridge.model.zero_grad(set_to_none=True)
    reference.zero_grad(set_to_none=True)
    torch.testing.assert_close(grads["g"], kept["out"].grad / m, rtol=1e-4, atol=1e-7)


def test_cohere_logit_scale_is_a_multiply_after_lm_head():
    """Unit level (Cohere's parallel block with one shared norm is not expressible yet): the normalized
    `logit_scale` field read from Cohere's config is the factor between its lm_head output and its logits."""
    torch.manual_seed(0)
    config = transformers.AutoConfig.for_model(
        "cohere",
        num_hidden_layers=1,
        hidden_size=32,
        num_attention_heads=2,
        num_key_value_heads=2,
        intermediate_size=48,
        vocab_size=50,
        logit_scale=0.37,
        pad_token_id=0,
    )
    model = transformers.CohereForCausalLM(config).eval()
    spec = load_spec(SPEC)
    fields = {**spec.config, "logit_scale": "logit_scale", "eps": "layer_norm_eps"}
    for name in ("embed_scale", "residual_multiplier", "attn_scale"):
        fields.pop(name)
    cfg = normalize_config(spec.model_copy(update={"config": fields}), config)
    assert cfg.logit_scale == 0.37
    outputs = {}
    handle = model.lm_head.register_forward_hook(lambda mod, args, out: outputs.__setitem__("lm_head", out))
    try:
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([[3, 4, 5, 6]])).logits
    finally:
        handle.remove()
    assert torch.equal(logits, outputs["lm_head"] * cfg.logit_scale)
    assert not torch.allclose(logits, outputs["lm_head"])


def test_per_head_and_per_neuron_decomposition_adds_up(setup):
    """Heads and neurons are the projections' own outputs; their contributions (× residual_multiplier), with
    the embedding and the biases, sum to HF's final-norm input."""
    bridge, reference, tokens = setup
    hf = _hf_record(reference, tokens)
    with torch.no_grad():
        _, cache = bridge.run_with_cache(tokens, names_filter=lambda n: _BOUNDARY(n) or n.endswith("attn.hook_z"))
    parts, labels = cache.get_full_resid_decomposition(expand_neurons=True, return_labels=True)
    assert labels[0] == "L0H0" and labels[-2:] == ["embed", "bias"]
    torch.testing.assert_close(parts.sum(0), hf["norm_in"], rtol=0, atol=1e-4)
    heads = cache.stack_head_results(layer=1)  # block 0's heads
    torch.testing.assert_close(heads.sum(0), cache["blocks.0.hook_attn_out"], rtol=0, atol=1e-5)


def test_a_zero_multiplier_and_a_forward_scale_beside_an_embedding_norm_are_refused():
    from bridge_core.errors import SpecError
    from bridge_core.spec.schema import EmbedSpec, NormSpec

    spec = load_spec(SPEC)
    config = transformers.AutoConfig.for_model("granite", **{**CONFIG, "residual_multiplier": 0.0})
    with pytest.raises(SpecError, match="non-zero") as error:
        normalize_config(spec, config)
    assert error.value.field == "config.residual_multiplier"
    norm = NormSpec(path="model.layers.0.input_layernorm", kind="rmsnorm")
    embed = EmbedSpec(path="model.embed_tokens", norm=norm, scale_at="forward")
    with pytest.raises(SpecError, match="embedding norm") as error:
        Bridge.from_hf(_granite(), spec.model_copy(update={"embed": embed}))
    assert error.value.field == "embed.scale_at"
