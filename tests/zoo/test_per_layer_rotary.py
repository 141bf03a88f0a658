"""Per-layer rotary and q/k norms after rotary (docs/decisions/0021-per-layer-rotary.md).

SmolLM3 rotates q/k only on the layers its `no_rope_layers` marks (NoPE elsewhere: `block.attn.rotary`);
HunYuan normalizes q/k per head AFTER rotary (`block.attn.qk_norm_at: after_rotary`). The hook values are
held to HF's own computation: tensors recorded with plain torch hooks on an untouched copy, and HF's own
`apply_rotary_pos_emb` applied to them by hand, on both attention paths. The drafter writes both fields.
"""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM
from transformers.models.hunyuan_v1_dense import modeling_hunyuan_v1_dense as hunyuan
from transformers.models.smollm3 import modeling_smollm3 as smollm3

from bridge_core import Bridge
from bridge_core.bridge.reimplement import with_attention_implementation
from bridge_core.conformance.runner import run_variants
from bridge_core.drafting.drafter import draft_model_type
from bridge_core.errors import SpecError
from bridge_core.spec.loader import load_spec

SPECS = Path(__file__).parent / "specs"
COMMON = {"num_hidden_layers": 2, "hidden_size": 64, "num_attention_heads": 4, "num_key_value_heads": 2,
          "intermediate_size": 96, "vocab_size": 101, "pad_token_id": 0, "bos_token_id": 1,
          "eos_token_id": 2}  # fmt: skip
TOKENS = torch.randint(3, 101, (2, 7), generator=torch.Generator().manual_seed(0))


def _tiny(model_type: str, **overrides) -> torch.nn.Module:
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(AutoConfig.for_model(model_type, **{**COMMON, **overrides})).eval()
    with torch.no_grad():  # non-trivial norm weights, so a norm applied in the wrong place shows
        for p in model.parameters():
            if p.dim() == 1:
                p.add_(torch.randn_like(p) * 0.3)
    return model


def _hf_record(model: torch.nn.Module, names: list[str]) -> tuple[dict, dict, torch.Tensor]:
    """Inputs and outputs of the named modules on a forward of an untouched copy (plain torch hooks)."""
    ref = copy.deepcopy(model)
    inputs, outputs, handles = {}, {}, []
    for name in names:

        def keep(module, args, out, name=name):
            inputs[name], outputs[name] = (args[0] if args else None), out

        handles.append(ref.get_submodule(name).register_forward_hook(keep))
    try:
        with torch.no_grad():
            logits = ref(TOKENS).logits
    finally:
        for handle in handles:
            handle.remove()
    return inputs, outputs, logits


def _heads(x: torch.Tensor, d_head: int) -> torch.Tensor:
    """[b, s, h * d] -> [b, h, s, d], as HF splits its projections."""
    return x.unflatten(-1, (-1, d_head)).transpose(1, 2)


def _bridges(model: torch.nn.Module, spec_file: Path) -> dict[str, Bridge]:
    """A bridge on each attention path (the reimplement one on a copy of the model)."""
    spec = load_spec(spec_file)
    forced = with_attention_implementation(spec, "reimplement")
    return {"interface": Bridge.from_hf(model, spec), "reimplement": Bridge.from_hf(copy.deepcopy(model), forced)}


INTERNAL = ("hook_rot_q", "hook_rot_k", "hook_pattern")  # the pattern puts the reimplement path to work


@pytest.mark.parametrize("name", ["smollm3", "hunyuan_v1_dense"])
def test_drafted_spec_passes_the_whole_catalogue_on_every_variant(name):
    for report in run_variants(SPECS / f"{name}.yaml"):
        assert not report.failed(), str(report)


def test_smollm3_rot_q_is_hf_rotation_on_rope_layers_and_the_projection_on_nope_layers():
    model = _tiny("smollm3", no_rope_layers=[1, 0], layer_types=["full_attention"] * 2)
    names = [f"model.layers.{i}.self_attn.{p}" for i in range(2) for p in ("q_proj", "k_proj")] + ["model.rotary_emb"]
    _, out, hf_logits = _hf_record(model, names)
    cos, sin = out["model.rotary_emb"]
    for bridge in _bridges(model, SPECS / "smollm3.yaml").values():
        assert [b.attn.rotary for b in bridge.bound.blocks] == [True, False]
        logits, cache = bridge.run_with_cache(TOKENS, names_filter=lambda n: n.endswith(INTERNAL))
        torch.testing.assert_close(logits, hf_logits, atol=1e-5, rtol=0)
        for layer in range(2):
            q = _heads(out[f"model.layers.{layer}.self_attn.q_proj"], 16)
            k = _heads(out[f"model.layers.{layer}.self_attn.k_proj"], 16)
            if layer == 0:  # a rope layer: HF's own rotation of HF's own projections
                q, k = smollm3.apply_rotary_pos_emb(q, k, cos, sin)
            for n, expected in (("q", q), ("k", k)):
                got = cache[f"blocks.{layer}.attn.hook_rot_{n}"]  # [b, s, h, d]
                torch.testing.assert_close(got, expected.transpose(1, 2), atol=1e-5, rtol=0)
        unrotated = _heads(out["model.layers.0.self_attn.q_proj"], 16).transpose(1, 2)
        assert not torch.allclose(cache["blocks.0.attn.hook_rot_q"][:, 1:], unrotated[:, 1:])  # layer 0 turned


def test_hunyuan_rot_q_is_the_norm_of_the_rotated_projection():
    model = _tiny("hunyuan_v1_dense", head_dim=16)
    attn = "model.layers.{}.self_attn.{}"
    names = [attn.format(i, p) for i in range(2) for p in ("q_proj", "k_proj", "query_layernorm", "key_layernorm")]
    inputs, out, hf_logits = _hf_record(model, [*names, "model.rotary_emb"])
    cos, sin = out["model.rotary_emb"]
    ref = copy.deepcopy(model)
    for bridge in _bridges(model, SPECS / "hunyuan_v1_dense.yaml").values():
        assert all(b.attn.qk_norm_after_rotary for b in bridge.bound.blocks)
        logits, cache = bridge.run_with_cache(TOKENS, names_filter=lambda n: n.endswith((*INTERNAL, "hook_q")))
        torch.testing.assert_close(logits, hf_logits, atol=1e-5, rtol=0)
        for layer in range(2):
            q, k = (_heads(out[attn.format(layer, p)], 16) for p in ("q_proj", "k_proj"))
            rq, rk = hunyuan.apply_rotary_pos_emb(q, k, cos, sin)  # HF's rotation of HF's projections, then
            module = ref.model.layers[layer].self_attn  # HF's own norms: the hand-made order, rotary first
            with torch.no_grad():
                by_hand = {"q": module.query_layernorm(rq), "k": module.key_layernorm(rk)}
            for n, norm in (("q", "query_layernorm"), ("k", "key_layernorm")):
                recorded = out[attn.format(layer, norm)]  # what HF's norm returned in its forward
                torch.testing.assert_close(by_hand[n], recorded, atol=1e-6, rtol=0)
                got = cache[f"blocks.{layer}.attn.hook_rot_{n}"]
                torch.testing.assert_close(got, recorded.transpose(1, 2), atol=1e-5, rtol=0)
            torch.testing.assert_close(cache[f"blocks.{layer}.attn.hook_q"], q.transpose(1, 2))  # before rotary
            # the norm takes the rotated queries: its input is not the projection past position 0
            assert torch.equal(inputs[attn.format(layer, "query_layernorm")], rq)


def _spec_text(rotary: str) -> str:
    text = (SPECS / "smollm3.yaml").read_text()
    return text.replace("rotary: no_rope_layers[layer] == 1", f"rotary: {rotary}")


def test_rotary_that_is_not_a_boolean_is_a_spec_error_naming_the_field(tmp_path):
    path = tmp_path / "smollm3_int.yaml"
    path.write_text(_spec_text("no_rope_layers[layer]"))  # 1 / 0, not true / false
    model = _tiny("smollm3", no_rope_layers=[1, 0], layer_types=["full_attention"] * 2)
    named = r"field .block\.attn\.rotary.: evaluates to 1 at layer 0; expected true or false"
    with pytest.raises(SpecError, match=named):
        Bridge.from_hf(model, load_spec(path))


@pytest.mark.parametrize(
    ("model_type", "field", "value"),
    [
        ("smollm3", "rotary", "no_rope_layers[layer] == 1"),
        ("cohere2", "rotary", "layer_types[layer] == 'sliding_attention'"),
        ("hunyuan_v1_dense", "qk_norm_at", "after_rotary"),
    ],
)
def test_drafter_writes_the_field_it_observes(model_type, field, value):
    draft = draft_model_type(model_type)
    assert draft.fields["block"]["attn"].get(field) == value, str(draft)
    assert not [gap for gap in draft.gaps if "rotary" in str(gap)], draft.gaps
