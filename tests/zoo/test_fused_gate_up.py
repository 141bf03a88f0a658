"""A gated MLP whose gate and up projections are one module (`mlp.gate_up`, Phi-3's `gate_up_proj`): weight
views are halves of the fused parameter (sharing its storage), hook edits of either half reach HF's forward
exactly as the same edit made by a plain torch hook on HF's own chunk, fold_ln folds the norm once, and a
spec that misuses the field is refused where it is wrong. Hook values against HookedTransformer 3.9's Phi-3
are in test_structures.py."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM

from bridge_core import Bridge, SpecError
from bridge_core.spec.loader import parse_raw_spec, validate_spec

PHI3 = Path(__file__).resolve().parents[2] / "adapter_specs" / "phi3.yaml"
D_MLP = 96


def _phi3():
    torch.manual_seed(0)
    config = AutoConfig.for_model(
        "phi3",
        num_hidden_layers=2,
        hidden_size=64,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=D_MLP,
        vocab_size=101,
        max_position_embeddings=64,
        pad_token_id=1,
    )
    model = AutoModelForCausalLM.from_config(config).eval()
    with torch.no_grad():  # non-trivial norm weights, so a norm folded twice shows
        for p in model.parameters():
            if p.dim() == 1:
                p.add_(torch.randn_like(p) * 0.2)
    return model


TOKENS = torch.randint(0, 101, (2, 7), generator=torch.Generator().manual_seed(1))


def test_weight_views_are_the_halves_of_the_fused_parameter():
    model = _phi3()
    bridge = Bridge.from_hf(model, PHI3)
    fused = model.model.layers[1].mlp.gate_up_proj.weight  # [2 * d_mlp, d_model], HF chunks [gate | up]
    mlp = bridge.blocks[1].mlp
    assert torch.equal(mlp.W_gate, fused[:D_MLP].T) and torch.equal(mlp.W_in, fused[D_MLP:].T)
    assert mlp.W_gate.shape == mlp.W_in.shape == (64, D_MLP)
    assert torch.equal(mlp.b_in, torch.zeros(D_MLP)) and torch.equal(mlp.b_gate, torch.zeros(D_MLP))  # no bias
    for view in (mlp.W_gate, mlp.W_in):
        assert view.untyped_storage().data_ptr() == fused.untyped_storage().data_ptr()
    with torch.no_grad():
        mlp.W_in[3, 5] = 7.0  # an edit of the view is an edit of HF's parameter
    assert fused[D_MLP + 5, 3] == 7.0


def test_a_fused_bias_is_split_like_the_weight():
    model = _phi3()
    mlp = model.model.layers[0].mlp
    torch.manual_seed(2)  # a biased fused projection (HF's has none): b_gate / b_in are its halves
    mlp.gate_up_proj = torch.nn.Linear(64, 2 * D_MLP, bias=True)
    bridge = Bridge.from_hf(model, PHI3)
    views = bridge.blocks[0].mlp
    bias = mlp.gate_up_proj.bias
    assert torch.equal(views.b_gate, bias[:D_MLP]) and torch.equal(views.b_in, bias[D_MLP:])
    assert views.b_in.untyped_storage().data_ptr() == bias.untyped_storage().data_ptr()
    with torch.no_grad():
        _, cache = bridge.run_with_cache(TOKENS)
        x = model.model.layers[0].post_attention_layernorm(cache["blocks.0.hook_resid_mid"])
    torch.testing.assert_close(cache["blocks.0.mlp.hook_pre"], x @ views.W_gate + views.b_gate, atol=1e-6, rtol=0)
    torch.testing.assert_close(cache["blocks.0.mlp.hook_pre_linear"], x @ views.W_in + views.b_in, atol=1e-6, rtol=0)


@pytest.mark.parametrize(("hook", "half"), [("hook_pre", 0), ("hook_pre_linear", 1)])
def test_an_edit_of_either_half_is_hfs_own_chunk_edited(hook, half):
    model = _phi3()
    reference = copy.deepcopy(model)
    bridge = Bridge.from_hf(model, PHI3)

    def doubled_in_bridge(value, hook):
        return value * 2.0

    def doubled_in_hf(module, args, output):  # the same edit on HF's own tensor, the half HF's chunk reads
        output = output.clone()
        output[..., half * D_MLP : (half + 1) * D_MLP] *= 2.0
        return output

    handle = reference.model.layers[0].mlp.gate_up_proj.register_forward_hook(doubled_in_hf)
    with torch.no_grad():
        try:
            expected = reference(TOKENS).logits
        finally:
            handle.remove()
        plain = reference(TOKENS).logits
        edited = bridge.run_with_hooks(TOKENS, fwd_hooks=[(f"blocks.0.mlp.{hook}", doubled_in_bridge)])
    assert not torch.allclose(expected, plain, atol=1e-4)  # the edit matters
    torch.testing.assert_close(edited, expected, atol=1e-5, rtol=0)


def test_hook_post_is_act_of_the_gate_half_times_the_up_half():
    model = _phi3()
    bridge = Bridge.from_hf(model, PHI3)
    with torch.no_grad():
        _, cache = bridge.run_with_cache(TOKENS)
    layer = model.model.layers[0]
    with torch.no_grad():  # HF's own norm and projection, split as HF's forward splits it
        gate, up = layer.mlp.gate_up_proj(layer.post_attention_layernorm(cache["blocks.0.hook_resid_mid"])).chunk(2, -1)
    torch.testing.assert_close(cache["blocks.0.mlp.hook_pre"], gate, atol=1e-6, rtol=0)
    torch.testing.assert_close(cache["blocks.0.mlp.hook_pre_linear"], up, atol=1e-6, rtol=0)
    torch.testing.assert_close(cache["blocks.0.mlp.hook_post"], torch.nn.functional.silu(gate) * up, atol=1e-6, rtol=0)


def test_fold_ln_folds_the_norm_into_the_fused_module_once():
    model = _phi3()
    bridge = Bridge.from_hf(model, PHI3)
    ln2 = model.model.layers[0].post_attention_layernorm.weight.detach().clone()
    before = bridge.blocks[0].mlp.W_gate.detach().clone(), bridge.blocks[0].mlp.W_in.detach().clone()
    processed = bridge.processed_copy(fold_ln=True)
    after = processed.blocks[0].mlp
    torch.testing.assert_close(after.W_gate, before[0] * ln2[:, None])
    torch.testing.assert_close(after.W_in, before[1] * ln2[:, None])
    with torch.no_grad():
        torch.testing.assert_close(processed(TOKENS).log_softmax(-1), bridge(TOKENS).log_softmax(-1), atol=1e-5, rtol=0)


_MLP = """
name: t
match: {architectures: [X]}
hf_class: Phi3ForCausalLM
config: {n_layers: 1, d_model: 1, n_heads: 1, d_head: 1, d_mlp: 1, d_vocab: 1}
embed: {path: e}
pos_embed: {kind: none}
blocks: b
block:
  ln1: {path: n, kind: rmsnorm}
  attn: {path: a, layout: linear, qkv: {kind: separate, q: q, k: k, v: v}, o: o}
  mlp: MLP
ln_final: {path: f, kind: rmsnorm}
unembed: {path: u}
"""


@pytest.mark.parametrize(
    ("mlp", "message"),
    [
        ("{path: m, kind: gated, layout: linear, gate_up: {path: gu}, in: up, out: d}", "takes the place of 'in'"),
        ("{path: m, kind: plain, layout: linear, gate_up: {path: gu}, out: d}", "for a gated MLP"),
        ("{path: m, kind: gated, layout: linear, gate_up: {path: gu, order: gate_first}, out: d}", "order"),
    ],
)
def test_a_misused_gate_up_field_is_a_spec_error_naming_it(mlp, message):
    with pytest.raises(SpecError, match=message) as info:
        validate_spec(parse_raw_spec(_MLP.replace("MLP", mlp), "t.yaml"))
    assert "block.mlp" in str(info.value)
