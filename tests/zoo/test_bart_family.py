"""The BART family (BART, mBART, Marian, Pegasus, PLBart, Blenderbot) through the encoder/decoder stacks.

Every reference is independent of the bridge: an untouched deep copy of the HF model taken before the
bridge exists, plain PyTorch forward hooks on the copy's own submodules, and arithmetic on raw HF
parameters (position table rows at the offset, LayerNorm by hand, W_E[tok] * sqrt(d_model)).
"""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from bridge_core import Bridge
from bridge_core.bridge import loading
from bridge_core.conformance.runner import perturb, run_variants
from bridge_core.errors import BindError, SpecError
from bridge_core.registry import default_registry
from bridge_core.spec.loader import RawSpec, validate_spec

ZOO = Path(__file__).resolve().parents[2] / "adapter_specs"  # the family, built in
FAMILY = ("mbart", "marian", "pegasus", "plbart", "blenderbot")
SPECS = {"bart": "bart", **{name: ZOO / f"{name}.yaml" for name in FAMILY}}
# (spec, variant) -> (post-norm blocks, embedding norm after positions, position offset, scaled inside the module)
CASES = {
    ("bart", None): (True, True, 2, False),
    ("bart", "scaled"): (True, True, 2, True),
    ("bart", "untied"): (True, True, 2, False),
    ("mbart", None): (False, True, 2, False),
    ("mbart", "scaled"): (False, True, 2, True),
    ("marian", None): (True, False, 0, False),
    ("marian", "separate"): (True, False, 0, False),
    ("pegasus", None): (False, False, 0, False),
    ("plbart", None): (True, True, 2, False),
    ("plbart", "scaled"): (True, True, 2, True),  # released PLBart checkpoints (variant inherited from bart)
    ("blenderbot", None): (False, False, 0, False),
    ("blenderbot", "scaled"): (False, False, 0, True),
}
ENC, DEC, BATCH = 7, 5, 2
# run_with_cache routes attention through the bridge's eager path where HF ran sdpa: values agree to
# float32 rounding (a few 1e-8), not bit for bit; 1e-5 is the conformance suite's tolerance


@pytest.mark.parametrize("name", sorted(SPECS))
def test_every_variant_conforms(name):
    reports = run_variants(SPECS[name])
    assert len(reports) >= 3  # base, each declared variant, eager
    for report in reports:
        assert report.ok, str(report)


class Run:
    """A bridge over a perturbed tiny model, its untouched copy, and HF's tensors recorded by hooks on it."""

    def __init__(self, name: str, variant: str | None) -> None:
        spec, _ = loading.spec_from(SPECS[name], default_registry())
        model = loading.random_model(spec, seed=3, tiny=True, variant=variant)
        perturb(model, 3)  # norm weights / biases and final_logits_bias away from ones and zeros
        self.copy = copy.deepcopy(model).eval()
        self.bridge = Bridge.from_hf(model, SPECS[name])
        generator = torch.Generator().manual_seed(5)
        vocab = model.config.vocab_size
        self.tokens = torch.randint(3, vocab, (BATCH, ENC), generator=generator)
        self.decoder_tokens = torch.randint(3, vocab, (BATCH, DEC), generator=generator)
        self.ins: dict[str, torch.Tensor] = {}
        self.outs: dict[str, torch.Tensor] = {}
        handles = []
        for path, module in self.copy.named_modules():
            handles.append(module.register_forward_pre_hook(self._pre(path), with_kwargs=True))
            handles.append(module.register_forward_hook(self._post(path)))
        try:
            with torch.no_grad():
                self.hf_logits = self.copy(input_ids=self.tokens, decoder_input_ids=self.decoder_tokens).logits
        finally:
            for handle in handles:
                handle.remove()
        with torch.no_grad():
            self.logits, self.cache = self.bridge.run_with_cache(self.tokens, decoder_input_ids=self.decoder_tokens)

    def _pre(self, path):
        def hook(module, args, kwargs):
            x = args[0] if args else kwargs.get("hidden_states")
            if isinstance(x, torch.Tensor) and path not in self.ins:
                self.ins[path] = x.detach().clone()

        return hook

    def _post(self, path):
        def hook(module, args, out):
            out = out[0] if isinstance(out, tuple) else getattr(out, "last_hidden_state", out)
            if isinstance(out, torch.Tensor) and path not in self.outs:
                self.outs[path] = out.detach().clone()

        return hook

    def param(self, path: str) -> torch.Tensor:
        return self.copy.get_parameter(path) if "." in path else getattr(self.copy, path)


def _layer_norm(x: torch.Tensor, module: torch.nn.LayerNorm) -> torch.Tensor:
    return F.layer_norm(x, x.shape[-1:], module.weight, module.bias, module.eps)


@pytest.fixture(scope="module", params=sorted(CASES, key=str), ids=lambda c: f"{c[0]}[{c[1] or 'base'}]")
def case(request):
    return request.param, Run(*request.param)


def test_logits_are_hf_own_bit_for_bit_and_the_final_bias_is_b_U(case):
    _, r = case
    with torch.no_grad():
        plain = r.bridge(r.tokens, decoder_input_ids=r.decoder_tokens)
    assert torch.equal(plain, r.hf_logits)
    # run_with_cache routes attention through the bridge's eager path: equal within float32 rounding
    torch.testing.assert_close(r.logits, r.hf_logits, rtol=0, atol=1e-5)
    bias = r.copy.final_logits_bias.reshape(-1)
    assert bias.abs().max() > 0  # perturbed: a dropped bias could not go unnoticed
    torch.testing.assert_close(r.cache["hook_unembed"] + bias, r.hf_logits, rtol=0, atol=1e-5)
    torch.testing.assert_close(r.bridge.b_U, bias, rtol=0, atol=0)


def test_embeddings_positions_and_the_embedding_norm(case):
    key, r = case
    _, norm_after, offset, scaled = CASES[key]
    d_model = r.copy.config.d_model
    for prefix, stack, tokens in (("", "encoder", r.tokens), ("decoder.", "decoder", r.decoder_tokens)):
        w_e = r.param(f"model.{stack}.embed_tokens.weight")
        assert r.cache[f"{prefix}hook_embed"].abs().max() > 0
        expected = w_e[tokens] * (d_model**0.5 if scaled else 1.0)  # BartScaledWordEmbedding scales inside
        torch.testing.assert_close(r.cache[f"{prefix}hook_embed"], expected, rtol=0, atol=1e-5)
        seq = tokens.shape[1]
        table = r.param(f"model.{stack}.embed_positions.weight")
        rows = table[offset : offset + seq].expand(BATCH, seq, d_model)  # hand lookup at the offset
        torch.testing.assert_close(r.cache[f"{prefix}hook_pos_embed"], rows, rtol=0, atol=0)
        summed = expected + rows
        first_block = r.ins[f"model.{stack}.layers.0"]
        if norm_after:  # layernorm_embedding takes embeddings + positions; its output enters block 0
            norm = r.copy.get_submodule(f"model.{stack}.layernorm_embedding")
            torch.testing.assert_close(r.ins[f"model.{stack}.layernorm_embedding"], summed, rtol=0, atol=1e-5)
            centered = summed - summed.mean(-1, keepdim=True)
            scale = (centered.pow(2).mean(-1, keepdim=True) + norm.eps).sqrt()
            torch.testing.assert_close(r.cache[f"{prefix}embed.ln.hook_scale"], scale, rtol=0, atol=1e-5)
            normalized = r.cache[f"{prefix}embed.ln.hook_normalized"]
            torch.testing.assert_close(normalized, centered / scale, rtol=0, atol=1e-5)
            torch.testing.assert_close(first_block, _layer_norm(summed, norm), rtol=0, atol=1e-5)
        else:
            assert f"{prefix}embed.ln.hook_scale" not in r.cache
            torch.testing.assert_close(first_block, summed, rtol=0, atol=1e-5)
        block0 = "encoder.0" if stack == "encoder" else "decoder.0"
        torch.testing.assert_close(r.cache[f"{block0}.hook_resid_pre"], first_block, rtol=0, atol=1e-5)


def test_residual_stream_is_hf_own_at_every_block(case):
    key, r = case
    post = CASES[key][0]
    for stack, n in (("encoder", r.copy.config.encoder_layers), ("decoder", r.copy.config.decoder_layers)):
        for i in range(n):
            p, hf = f"{stack}.{i}", f"model.{stack}.layers.{i}"
            layer_in, layer_out = r.ins[hf], r.outs[hf]
            attn_out, mlp_out = r.outs[f"{hf}.self_attn"], r.outs[f"{hf}.fc2"]
            torch.testing.assert_close(r.cache[f"{p}.hook_resid_pre"], layer_in, rtol=0, atol=1e-5)
            torch.testing.assert_close(r.cache[f"{p}.hook_attn_out"], attn_out, rtol=0, atol=1e-5)
            torch.testing.assert_close(r.cache[f"{p}.hook_mlp_out"], mlp_out, rtol=0, atol=1e-5)
            mid = layer_in + attn_out
            torch.testing.assert_close(r.cache[f"{p}.hook_resid_mid"], mid, rtol=0, atol=1e-5)
            # post-norm (BART, Marian): the residual after each add is normalized and carries on normalized
            residual = r.outs[f"{hf}.self_attn_layer_norm"] if post else mid
            if stack == "decoder":
                cross_out = r.outs[f"{hf}.encoder_attn"]
                torch.testing.assert_close(r.cache[f"{p}.hook_cross_attn_out"], cross_out, rtol=0, atol=1e-5)
                cross_in = residual if post else r.outs[f"{hf}.encoder_attn_layer_norm"]
                torch.testing.assert_close(r.ins[f"{hf}.encoder_attn.q_proj"], cross_in, rtol=0, atol=1e-5)
                residual = residual + cross_out
                torch.testing.assert_close(r.cache[f"{p}.hook_resid_mid_cross"], residual, rtol=0, atol=1e-5)
                if post:  # encoder_attn_layer_norm (ln2 beside cross attention) normalizes it, by hand
                    norm = r.copy.get_submodule(f"{hf}.encoder_attn_layer_norm")
                    centered = residual - residual.mean(-1, keepdim=True)
                    normalized = centered / r.cache[f"{p}.ln2.hook_scale"]
                    torch.testing.assert_close(r.cache[f"{p}.ln2.hook_normalized"], normalized, rtol=0, atol=1e-5)
                    residual = _layer_norm(residual, norm)
                    torch.testing.assert_close(residual, r.outs[f"{hf}.encoder_attn_layer_norm"], rtol=0, atol=1e-5)
            torch.testing.assert_close(r.cache[f"{p}.hook_resid_post"], residual + mlp_out, rtol=0, atol=1e-5)
            if post:
                torch.testing.assert_close(r.cache[f"{p}.hook_normalized_resid_post"], layer_out, rtol=0, atol=1e-5)
            else:
                torch.testing.assert_close(r.cache[f"{p}.hook_resid_post"], layer_out, rtol=0, atol=1e-5)


def test_decoder_output_is_hf_decoder_last_hidden_state(case):
    key, r = case
    post = CASES[key][0]
    last = r.copy.config.decoder_layers - 1
    hidden = r.outs["model.decoder"]  # HF's decoder output (last_hidden_state)
    if post:  # BART and Marian: no final norm, the last block's normalized output is the decoder's
        torch.testing.assert_close(r.cache[f"decoder.{last}.hook_normalized_resid_post"], hidden, rtol=0, atol=1e-5)
    else:  # mBART, Pegasus: the decoder's final layer_norm
        torch.testing.assert_close(r.cache[f"decoder.{last}.hook_resid_post"], r.ins["model.decoder.layer_norm"])
        norm = r.copy.model.decoder.layer_norm
        torch.testing.assert_close(r.cache["decoder_final_ln.hook_normalized"] * norm.weight + norm.bias, hidden)


def test_pre_norm_decoder_stream_decomposes_into_component_outputs(case):
    """Pre-norm stacks (mBART, Pegasus) are additive: each block's output is the first block's input plus
    every attention, cross-attention and MLP output so far."""
    key, r = case
    if CASES[key][0]:
        pytest.skip("post-norm blocks renormalize the residual after each sublayer: nothing adds up")
    for stack, n in (("encoder", r.copy.config.encoder_layers), ("decoder", r.copy.config.decoder_layers)):
        total = r.cache[f"{stack}.0.hook_resid_pre"].clone()
        for i in range(n):
            parts = ["hook_attn_out", "hook_mlp_out"] + (["hook_cross_attn_out"] if stack == "decoder" else [])
            for part in parts:
                total = total + r.cache[f"{stack}.{i}.{part}"]
            torch.testing.assert_close(r.cache[f"{stack}.{i}.hook_resid_post"], total, rtol=0, atol=1e-5)


def test_an_edit_at_the_decoder_position_embedding_reaches_the_logits_once():
    """hook_pos_embed is a summand before the embedding norm: adding δ there equals HF's forward with δ added
    to its position module's output."""
    r = Run("bart", None)
    delta = torch.randn(BATCH, DEC, r.copy.config.d_model, generator=torch.Generator().manual_seed(9))

    def add(value, hook):
        return value + delta

    with torch.no_grad():
        edited = r.bridge.run_with_hooks(r.tokens, decoder_input_ids=r.decoder_tokens,
                                         fwd_hooks=[("decoder.hook_pos_embed", add)])  # fmt: skip
        handle = r.copy.model.decoder.embed_positions.register_forward_hook(lambda m, a, out: out + delta)
        try:
            expected = r.copy(input_ids=r.tokens, decoder_input_ids=r.decoder_tokens).logits
        finally:
            handle.remove()
    assert not torch.allclose(expected, r.hf_logits)
    torch.testing.assert_close(edited, expected, rtol=0, atol=1e-5)


def _bart_with(path: tuple[str, ...], value) -> tuple[torch.nn.Module, object]:
    raw = default_registry().entry("bart").raw
    data = copy.deepcopy(raw.data)
    node = data
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    spec = validate_spec(RawSpec(raw.file, data, raw.lines))
    return loading.random_model(spec, tiny=True), spec


def test_a_final_bias_the_model_lacks_is_a_bind_error_naming_the_field():
    model, spec = _bart_with(("unembed", "bias"), "final_logits_bais")
    with pytest.raises(BindError, match="final_logits_bais") as caught:
        Bridge.from_hf(model, spec)
    assert caught.value.spec_path == "unembed.bias"


def test_an_encoder_position_kind_without_a_table_is_refused():
    model, spec = _bart_with(("encoder", "pos_embed", "kind"), "rotary")
    with pytest.raises(SpecError, match="table kind"):
        Bridge.from_hf(model, spec)


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_processed_copy_keeps_the_log_probabilities(case):
    """fold_ln (pre-norm stacks), center_writing_weights, center_unembed (final_logits_bias too) and value-bias
    folding change no log-probability; post-norm models skip what is not exact there."""
    key, r = case
    with torch.no_grad():
        processed = r.bridge.processed_copy()
        out = processed(r.tokens, decoder_input_ids=r.decoder_tokens).log_softmax(-1)
    assert processed.processing["fold_ln"] == (not CASES[key][0])
    assert processed.processing["center_unembed"]
    centered = processed.bound.unembed_bias
    assert centered.mean().abs() < 1e-6 and not torch.allclose(centered, r.copy.final_logits_bias)
    torch.testing.assert_close(out, r.hf_logits.log_softmax(-1), rtol=0, atol=1e-5)
