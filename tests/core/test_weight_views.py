"""Weight views (docs/architecture.md): HookedTransformer shapes, equal to hand-slicing of the raw HF parameters
(GPT-2's Conv1D stores [in, out], c_attn is [q | k | v]), sharing their storage, and carrying gradients
back to the real parameters."""

from __future__ import annotations

import pytest
import torch

from ._helpers import SHAPE_IDS, bridge_and_reference


@pytest.fixture(params=SHAPE_IDS)
def pair(request):
    return bridge_and_reference(request.param)


def hand_sliced_attention(reference, layer: int, n_heads: int, d_head: int) -> dict[str, torch.Tensor]:
    """W_Q/K/V [h, d_model, d_head], b_* [h, d_head], W_O [h, d_head, d_model] cut by hand from raw params."""
    attn = reference.transformer.h[layer].attn
    weight, bias = attn.c_attn.weight.detach(), attn.c_attn.bias.detach()  # [d_model, 3 * d_model], [3 * d_model]
    d_model = weight.shape[0]
    out: dict[str, torch.Tensor] = {}
    for part, name in enumerate("QKV"):
        columns = [part * d_model + h * d_head for h in range(n_heads)]
        out[f"W_{name}"] = torch.stack([weight[:, c : c + d_head] for c in columns])
        out[f"b_{name}"] = torch.stack([bias[c : c + d_head] for c in columns])
    o = attn.c_proj.weight.detach()  # [n_heads * d_head, d_model]
    out["W_O"] = torch.stack([o[h * d_head : (h + 1) * d_head, :] for h in range(n_heads)])
    out["b_O"] = attn.c_proj.bias.detach()
    return out


def test_config_is_normalized_from_the_hf_config(pair):
    bridge, reference = pair
    hf, cfg = reference.config, bridge.cfg
    assert (cfg.n_layers, cfg.d_model, cfg.n_heads, cfg.n_kv_heads) == (hf.n_layer, hf.n_embd, hf.n_head, hf.n_head)
    assert cfg.d_head == hf.n_embd // hf.n_head
    assert cfg.d_mlp == (hf.n_inner if hf.n_inner is not None else 4 * hf.n_embd)
    assert cfg.d_mlp == reference.transformer.h[0].mlp.c_fc.weight.shape[1]
    assert (cfg.d_vocab, cfg.n_ctx, cfg.eps, cfg.act_fn) == (
        hf.vocab_size,
        hf.n_positions,
        hf.layer_norm_epsilon,
        hf.activation_function,
    )


def test_attention_views_equal_hand_slicing_of_the_conv1d_parameters(pair):
    bridge, reference = pair
    cfg = bridge.cfg
    for layer, block in enumerate(bridge.blocks):
        expected = hand_sliced_attention(reference, layer, cfg.n_heads, cfg.d_head)
        for name, value in expected.items():
            view = getattr(block.attn, name)
            assert torch.equal(view, value), f"blocks[{layer}].attn.{name}"


def test_attention_views_have_hooked_transformer_shapes(pair):
    bridge, _ = pair
    c = bridge.cfg
    attn = bridge.blocks[0].attn
    shapes = {name: tuple(getattr(attn, name).shape) for name in ("W_Q", "W_K", "W_V", "W_O", "b_Q", "b_K", "b_O")}
    assert shapes == {
        "W_Q": (c.n_heads, c.d_model, c.d_head),
        "W_K": (c.n_heads, c.d_model, c.d_head),
        "W_V": (c.n_heads, c.d_model, c.d_head),
        "W_O": (c.n_heads, c.d_head, c.d_model),
        "b_Q": (c.n_heads, c.d_head),
        "b_K": (c.n_heads, c.d_head),
        "b_O": (c.d_model,),
    }


def test_mlp_norm_embedding_and_unembedding_views_equal_the_raw_parameters(pair):
    bridge, reference = pair
    t = reference.transformer
    for layer, block in enumerate(bridge.blocks):
        hf = t.h[layer]
        assert torch.equal(block.mlp.W_in, hf.mlp.c_fc.weight)  # Conv1D: already [d_model, d_mlp]
        assert torch.equal(block.mlp.b_in, hf.mlp.c_fc.bias)
        assert torch.equal(block.mlp.W_out, hf.mlp.c_proj.weight)
        assert torch.equal(block.mlp.b_out, hf.mlp.c_proj.bias)
        assert block.mlp.W_in.shape == (bridge.cfg.d_model, bridge.cfg.d_mlp)
        assert block.mlp.W_gate is None
        for ours, theirs in ((block.ln1, hf.ln_1), (block.ln2, hf.ln_2)):
            assert torch.equal(ours.w, theirs.weight) and torch.equal(ours.b, theirs.bias)
    assert torch.equal(bridge.W_E, t.wte.weight)
    assert torch.equal(bridge.W_pos, t.wpe.weight[: bridge.cfg.n_ctx])
    assert torch.equal(bridge.W_U, reference.lm_head.weight.T)
    assert bridge.W_U.shape == (bridge.cfg.d_model, bridge.cfg.d_vocab)
    assert torch.equal(bridge.b_U, torch.zeros(bridge.cfg.d_vocab)), "GPT-2's lm_head has no bias"


def view_and_parameter_pairs(bridge):
    """(name, view, the HF parameter it must share storage with) for every per-block and model view."""
    model = bridge.model
    t = model.transformer
    pairs = [("W_E", bridge.W_E, t.wte.weight), ("W_pos", bridge.W_pos, t.wpe.weight)]
    pairs.append(("W_U", bridge.W_U, model.lm_head.weight))
    for i, block in enumerate(bridge.blocks):
        hf = t.h[i]
        for name in ("W_Q", "W_K", "W_V"):
            pairs.append((f"{i}.{name}", getattr(block.attn, name), hf.attn.c_attn.weight))
            pairs.append((f"{i}.b_{name[-1]}", getattr(block.attn, f"b_{name[-1]}"), hf.attn.c_attn.bias))
        pairs += [
            (f"{i}.W_O", block.attn.W_O, hf.attn.c_proj.weight),
            (f"{i}.b_O", block.attn.b_O, hf.attn.c_proj.bias),
            (f"{i}.W_in", block.mlp.W_in, hf.mlp.c_fc.weight),
            (f"{i}.b_in", block.mlp.b_in, hf.mlp.c_fc.bias),
            (f"{i}.W_out", block.mlp.W_out, hf.mlp.c_proj.weight),
            (f"{i}.b_out", block.mlp.b_out, hf.mlp.c_proj.bias),
            (f"{i}.ln1.w", block.ln1.w, hf.ln_1.weight),
            (f"{i}.ln1.b", block.ln1.b, hf.ln_1.bias),
            (f"{i}.ln2.w", block.ln2.w, hf.ln_2.weight),
            (f"{i}.ln2.b", block.ln2.b, hf.ln_2.bias),
        ]
    return pairs


def test_every_weight_view_shares_storage_with_its_hf_parameter(pair):
    bridge, _ = pair
    for name, view, parameter in view_and_parameter_pairs(bridge):
        assert view.untyped_storage().data_ptr() == parameter.untyped_storage().data_ptr(), name


def test_weight_views_see_in_place_changes_of_the_parameters(pair):
    bridge, _ = pair
    c_attn = bridge.model.transformer.h[0].attn.c_attn
    with torch.no_grad():
        c_attn.weight[:, 0] += 1.0
    assert torch.equal(bridge.blocks[0].attn.W_Q[0, :, 0], c_attn.weight[:, 0])
    assert torch.equal(bridge.W_Q[0, 0, :, 0], c_attn.weight[:, 0]), "stacked weights are never cached"


def test_a_loss_on_W_Q_sends_gradients_to_the_real_c_attn_weight(pair):
    bridge, _ = pair
    bridge.blocks[0].attn.W_Q.sum().backward()
    grad = bridge.model.transformer.h[0].attn.c_attn.weight.grad
    d_model = bridge.cfg.d_model
    assert grad is not None
    assert torch.equal(grad[:, :d_model], torch.ones(d_model, d_model))
    assert torch.equal(grad[:, d_model:], torch.zeros(d_model, 2 * d_model))


def test_gradients_from_weighted_losses_on_views_match_the_hand_sliced_parameters(pair):
    bridge, _ = pair
    cfg = bridge.cfg
    gen = torch.Generator().manual_seed(0)
    weights = {
        "W_V": torch.randn(cfg.n_heads, cfg.d_model, cfg.d_head, generator=gen),
        "W_O": torch.randn(cfg.n_heads, cfg.d_head, cfg.d_model, generator=gen),
    }
    block = bridge.blocks[-1]
    loss = (block.attn.W_V * weights["W_V"]).sum() + (block.attn.W_O * weights["W_O"]).sum()
    loss.backward()
    hf = bridge.model.transformer.h[cfg.n_layers - 1].attn
    v_grad = hf.c_attn.weight.grad[:, 2 * cfg.d_model :]
    for h in range(cfg.n_heads):
        assert torch.equal(v_grad[:, h * cfg.d_head : (h + 1) * cfg.d_head], weights["W_V"][h])
        assert torch.equal(hf.c_proj.weight.grad[h * cfg.d_head : (h + 1) * cfg.d_head], weights["W_O"][h])


def test_a_loss_on_W_U_reaches_the_tied_embedding(pair):
    bridge, _ = pair
    assert bridge.model.lm_head.weight is bridge.model.transformer.wte.weight
    bridge.W_U.sum().backward()
    assert torch.equal(bridge.model.transformer.wte.weight.grad, torch.ones_like(bridge.W_E))


def test_stacked_weights_stack_the_per_block_views_and_carry_gradients(pair):
    bridge, _ = pair
    cfg = bridge.cfg
    assert bridge.W_Q.shape == (cfg.n_layers, cfg.n_heads, cfg.d_model, cfg.d_head)
    assert bridge.W_out.shape == (cfg.n_layers, cfg.d_mlp, cfg.d_model)
    for name, part in (("W_Q", "attn"), ("W_O", "attn"), ("b_V", "attn"), ("W_in", "mlp"), ("b_out", "mlp")):
        stacked = getattr(bridge, name)
        for i, block in enumerate(bridge.blocks):
            assert torch.equal(stacked[i], getattr(getattr(block, part), name))
    bridge.W_in.sum().backward()
    for i in range(cfg.n_layers):
        assert torch.equal(bridge.model.transformer.h[i].mlp.c_fc.weight.grad, torch.ones(cfg.d_model, cfg.d_mlp))


def test_an_unknown_attribute_is_an_attribute_error(pair):
    bridge, _ = pair
    with pytest.raises(AttributeError):
        _ = bridge.W_nope
    assert not hasattr(bridge, "W_gate"), "GPT-2 has no gate"
