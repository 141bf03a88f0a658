"""Reimplement-path formats and hook values (issue 16), proven on MPT and Falcon tiny models.

References are HF's own computation on an untouched copy (torch hooks on its modules, its own
`attn_weights` output, its own ALiBi builders) or hand computation from the weights.
"""

from __future__ import annotations

import copy
import warnings
from pathlib import Path

import pytest
import torch
from bridge_core.plugins.alibi import alibi_bias, alibi_layout
from transformers import AutoConfig, FalconForCausalLM, MptForCausalLM
from transformers.models.bloom.modeling_bloom import build_alibi_tensor as bloom_alibi
from transformers.models.mpt.modeling_mpt import MptMLP, build_mpt_alibi_tensor

from bridge_core import Bridge
from bridge_core.bridge.hook_values import HookValueChanged
from bridge_core.conformance.runner import run_variants
from bridge_core.errors import SpecError
from bridge_core.spec.loader import load_spec

SPECS = Path(__file__).resolve().parents[2] / "adapter_specs"
MPT = SPECS / "mpt.yaml"
FALCON = SPECS / "falcon.yaml"


def _model(spec_file: Path, cls, **extra):
    torch.manual_seed(0)
    spec = load_spec(spec_file)
    config = AutoConfig.for_model(spec.test_config.get("model_type", spec.match.model_type[0]), **spec.test_config)
    for key, value in extra.items():
        setattr(config, key, value)
    return cls(config).eval(), spec


def _tokens(n_vocab: int = 101) -> torch.Tensor:
    torch.manual_seed(1)
    return torch.randint(4, n_vocab, (2, 7))


def _record(model, paths: dict[str, tuple[str, str]]):
    """Torch hooks on the untouched model: name -> clone of (module path, 'in' | 'out' | 'out1') at hook time."""
    seen: dict[str, torch.Tensor] = {}
    handles = []
    for name, (path, where) in paths.items():
        module = model.get_submodule(path)
        if where == "in":
            handles.append(
                module.register_forward_pre_hook(lambda m, a, name=name: seen.__setitem__(name, a[0].clone()))
            )
        else:
            index = 1 if where == "out1" else 0

            def post(m, a, out, name=name, index=index):
                value = out if isinstance(out, torch.Tensor) else out[index]
                seen[name] = value.clone()

            handles.append(module.register_forward_hook(post))
    return seen, handles


@pytest.mark.parametrize("spec_file", [MPT, FALCON], ids=["mpt", "falcon"])
def test_every_variant_passes_the_catalogue(spec_file):
    reports = run_variants(spec_file)
    assert len(reports) >= 3
    for report in reports:
        assert not report.failed(), str(report)


def test_mpt_hook_values_are_hf_values():
    model, _ = _model(MPT, MptForCausalLM)
    reference = copy.deepcopy(model)
    bridge = Bridge.from_hf(model, spec=MPT)
    tokens = _tokens()
    _, cache = bridge.run_with_cache(tokens)
    paths = {}
    for i in range(2):
        b = f"transformer.blocks.{i}"
        paths |= {f"pattern{i}": (f"{b}.attn", "out1"), f"z{i}": (f"{b}.attn.out_proj", "in")}
        paths |= {f"mlp_out{i}": (f"{b}.ffn.down_proj", "out"), f"resid{i}": (b, "out"), f"x{i}": (f"{b}.attn", "in")}
    seen, handles = _record(reference, paths)
    with torch.no_grad():
        reference(tokens)
    for h in handles:
        h.remove()
    d, n, s = 64, 4, tokens.shape[1]
    causal = torch.ones(s, s, dtype=torch.bool).tril()
    for i in range(2):
        torch.testing.assert_close(cache["pattern", i], seen[f"pattern{i}"])
        torch.testing.assert_close(cache["z", i], seen[f"z{i}"].unflatten(-1, (n, d // n)))
        torch.testing.assert_close(cache["mlp_out", i], seen[f"mlp_out{i}"])
        torch.testing.assert_close(cache["resid_post", i], seen[f"resid{i}"])
        # scores by hand: MPT's own ALiBi builder, the fused projection's weights, masked where not causal
        attn = reference.transformer.blocks[i].attn
        q, k, _ = (seen[f"x{i}"] @ attn.Wqkv.weight.T).chunk(3, dim=-1)
        q, k = (t.unflatten(-1, (n, d // n)).transpose(1, 2) for t in (q, k))
        alibi = build_mpt_alibi_tensor(n, reference.config.max_seq_len)[:, :, -s:]
        scores = q @ k.transpose(-1, -2) * attn.softmax_scale + alibi
        got = cache["attn_scores", i]
        torch.testing.assert_close(got[..., causal], scores[..., causal])
        assert (got[..., ~causal] == torch.finfo(got.dtype).min).all()  # True = masked was read as masked


def test_falcon_hook_values_are_hf_values():
    model, _ = _model(FALCON, FalconForCausalLM)
    model.config._attn_implementation = "eager"  # FalconAttention returns its pattern only on its eager path
    reference = copy.deepcopy(model)
    bridge = Bridge.from_hf(model, spec=FALCON)
    tokens = _tokens()
    _, cache = bridge.run_with_cache(tokens)
    paths = {}
    for i in range(2):
        b = f"transformer.h.{i}"
        paths |= {f"pattern{i}": (f"{b}.self_attention", "out1"), f"z{i}": (f"{b}.self_attention.dense", "in")}
        paths |= {
            f"mlp_out{i}": (f"{b}.mlp", "out"),
            f"resid{i}": (b, "out"),
            f"attn_out{i}": (f"{b}.self_attention", "out"),
        }
    seen, handles = _record(reference, paths)
    with torch.no_grad():
        reference(tokens, output_attentions=True)
    for h in handles:
        h.remove()
    for i in range(2):
        torch.testing.assert_close(cache["pattern", i], seen[f"pattern{i}"])
        torch.testing.assert_close(cache["z", i], seen[f"z{i}"].unflatten(-1, (4, 16)))
        # the MLP output as the MLP returned it, before the block added attention into it in place
        torch.testing.assert_close(cache["mlp_out", i], seen[f"mlp_out{i}"])
        torch.testing.assert_close(cache["attn_out", i], seen[f"attn_out{i}"])
        torch.testing.assert_close(cache["resid_post", i], seen[f"resid{i}"])
        resid = cache["resid_pre", i] + cache["attn_out", i] + cache["mlp_out", i]  # the parallel block, by hand
        torch.testing.assert_close(resid, cache["resid_post", i])
    # the bridge learned the spot from that cache: a user hook that keeps its tensor keeps the hook-time value
    kept = []
    with warnings.catch_warnings():
        warnings.simplefilter("error", HookValueChanged)
        bridge.run_with_hooks(tokens, fwd_hooks=[("blocks.1.hook_mlp_out", lambda t, h: kept.append(t))])
    torch.testing.assert_close(kept[0], seen["mlp_out1"])


def test_pattern_ablation_on_the_reimplement_path_equals_a_hand_edited_copy():
    """Zeroing head 1's pattern zeroes its z; so does zeroing head 1's value rows in a copy."""
    model, _ = _model(MPT, MptForCausalLM)
    edited = copy.deepcopy(model)
    d_head, d_model = 16, 64
    with torch.no_grad():
        for block in edited.transformer.blocks:
            start = 2 * d_model + 1 * d_head
            block.attn.Wqkv.weight[start : start + d_head] = 0
    bridge = Bridge.from_hf(model, spec=MPT)

    def zero_head(pattern, hook):
        pattern[:, 1] = 0

    tokens = _tokens()
    got = bridge.run_with_hooks(tokens, fwd_hooks=[(lambda name: name.endswith("hook_pattern"), zero_head)])
    with torch.no_grad():
        want = edited(tokens).logits
    torch.testing.assert_close(got, want)
    assert not torch.allclose(got, bridge(tokens))


class _InPlaceMLP(MptMLP):
    """An MLP that adds the residual into its down projection's output in place, after hook_mlp_out saw it."""

    def forward(self, hidden_states, residual):
        out = self.down_proj(self.act(self.up_proj(hidden_states)))
        out += residual
        return out


def _in_place_model():
    model, _ = _model(MPT, MptForCausalLM)
    for block in model.transformer.blocks:
        mlp = _InPlaceMLP(model.config)
        mlp.load_state_dict(block.ffn.state_dict())
        block.ffn = mlp
    return model.eval()


def _down_proj_outputs(model, tokens):
    seen, handles = _record(model, {f"mlp_out{i}": (f"transformer.blocks.{i}.ffn.down_proj", "out") for i in range(2)})
    with torch.no_grad():
        model(tokens)
    for h in handles:
        h.remove()
    return [seen[f"mlp_out{i}"] for i in range(2)]


def test_cache_holds_the_value_the_hook_saw_when_hf_adds_in_place_later():
    model = _in_place_model()
    tokens = _tokens()
    want = _down_proj_outputs(copy.deepcopy(model), tokens)
    bridge = Bridge.from_hf(model, spec=MPT)
    _, cache = bridge.run_with_cache(tokens)  # the first cache on a fresh bridge is already right
    for i in range(2):
        torch.testing.assert_close(cache["mlp_out", i], want[i])
        assert not torch.allclose(cache["mlp_out", i], cache["resid_post", i])
    assert bridge._hook_values.clone_points == {"blocks.0.hook_mlp_out", "blocks.1.hook_mlp_out"}
    _, again = bridge.run_with_cache(tokens)
    torch.testing.assert_close(again["mlp_out", 0], want[0])
    # points HF leaves alone are never copied
    assert "blocks.0.hook_resid_post" not in bridge._hook_values.clone_points


def test_a_user_hook_that_stores_its_tensor_keeps_the_hook_time_value():
    model = _in_place_model()
    tokens = _tokens()
    want = _down_proj_outputs(copy.deepcopy(model), tokens)
    bridge = Bridge.from_hf(model, spec=MPT)
    stored = []
    hooks = [("blocks.0.hook_mlp_out", lambda tensor, hook: stored.append(tensor))]
    with pytest.warns(HookValueChanged, match="blocks.0.hook_mlp_out"):
        bridge.run_with_hooks(tokens, fwd_hooks=hooks)  # the first time it is found, and said
    stored.clear()
    with warnings.catch_warnings():
        warnings.simplefilter("error", HookValueChanged)
        bridge.run_with_hooks(tokens, fwd_hooks=hooks)
    torch.testing.assert_close(stored[0], want[0])
    # an edit still reaches the model from a copied point: zeroing the MLP output equals no MLP output
    logits = bridge.run_with_hooks(tokens, fwd_hooks=[("blocks.1.hook_mlp_out", lambda t, h: t.zero_())])
    ablated = bridge.run_with_hooks(tokens, fwd_hooks=[("blocks.1.hook_mlp_out", lambda t, h: torch.zeros_like(t))])
    torch.testing.assert_close(logits, ablated)
    assert not torch.allclose(logits, bridge(tokens))


def test_alibi_kind_matches_hf_builders_in_their_layouts():
    n_heads, k = 6, 5
    params = {"layout": "h 1 k", "slopes": "mpt", "positions": "absolute", "origin": "last"}
    mpt = alibi_bias(
        q_len=k, k_len=k, n_heads=n_heads, padding_mask=None, dtype=torch.float32, device="cpu", params=params
    )
    torch.testing.assert_close(
        alibi_layout(mpt.expand(2, -1, -1, -1), params), build_mpt_alibi_tensor(n_heads, 32)[:, :, -k:]
    )
    padding = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])
    params = {"layout": "b*h 1 k"}
    bloom = alibi_bias(
        q_len=k, k_len=k, n_heads=n_heads, padding_mask=padding.bool(), dtype=torch.float32, device="cpu", params=params
    )
    torch.testing.assert_close(alibi_layout(bloom, params), bloom_alibi(padding, n_heads, torch.float32))
    with pytest.raises(SpecError, match="positions: absolute"):
        alibi_bias(
            q_len=1,
            k_len=1,
            n_heads=2,
            padding_mask=None,
            dtype=torch.float32,
            device="cpu",
            params={"layout": "h q k"},
        )


def test_position_bias_kwarg_without_a_score_bias_is_a_located_error(tmp_path):
    text = MPT.read_text()
    start, end = text.index("score_bias:"), text.index("blocks: transformer.blocks")
    broken = tmp_path / "mpt_no_bias.yaml"
    broken.write_text(text[:start] + text[end:])
    model, _ = _model(MPT, MptForCausalLM)
    with pytest.raises(SpecError) as caught:
        Bridge.from_hf(model, spec=broken)
    assert caught.value.field == "call.position_bias_kwarg"
    assert caught.value.line == next(
        i for i, line in enumerate(broken.read_text().splitlines(), 1) if "position_bias_kwarg" in line
    )


def test_learned_points_are_copied_under_inference_mode_too():
    """Inference tensors have no version counter; a point learned earlier is still copied."""
    model = _in_place_model()
    tokens = _tokens()
    want = _down_proj_outputs(copy.deepcopy(model), tokens)
    bridge = Bridge.from_hf(model, spec=MPT)
    bridge.run_with_cache(tokens, names_filter="blocks.0.hook_mlp_out")
    with torch.inference_mode():
        _, cache = bridge.run_with_cache(tokens, names_filter="blocks.0.hook_mlp_out")
    torch.testing.assert_close(cache["mlp_out", 0], want[0])


def test_an_extra_kwarg_another_call_field_fills_is_a_located_error(tmp_path):
    broken = tmp_path / "falcon_extra_mask.yaml"
    broken.write_text(FALCON.read_text().replace("    alibi: null", "    alibi: null\n    attention_mask: null"))
    model, _ = _model(FALCON, FalconForCausalLM)
    with pytest.raises(SpecError) as caught:
        Bridge.from_hf(model, spec=broken)
    assert caught.value.field == "call.extra_kwargs.attention_mask"


def test_rotary_args_without_a_rotary_keyword_is_a_located_error(tmp_path):
    broken = tmp_path / "falcon_rotary_args.yaml"
    text = FALCON.read_text().replace("  position_embeddings_kwarg: position_embeddings\n", "")
    broken.write_text(text.replace("  extra_kwargs:", "  rotary_args: {layer_type: \"'full'\"}\n  extra_kwargs:"))
    model, _ = _model(FALCON, FalconForCausalLM)
    with pytest.raises(SpecError) as caught:
        Bridge.from_hf(model, spec=broken)
    assert caught.value.field == "call.rotary_args"
