"""The hook function contract of TransformerLens: `fn(tensor, hook)`, `hook.name`, `hook.layer()`,
`prepend=`, `functools.partial`, add_hook/reset_hooks, the hooks() context, name filters, HF module
paths as hook names, and backward hooks whose gradients equal autograd's on the untouched model."""

from __future__ import annotations

import functools

import pytest
import torch

from ._helpers import bridge_and_reference, capture_outputs, tokens

SHAPE = "2L-h2-dh16-inner48"


@pytest.fixture
def pair():
    return bridge_and_reference(SHAPE)


@pytest.fixture(scope="module")
def toks():
    return tokens()


def recorder(log: list, label: str = ""):
    def hook(tensor, hook):
        log.append((label, hook.name))

    return hook


@torch.no_grad()
def test_hook_receives_its_point_with_name_and_layer(pair, toks):
    bridge, _ = pair
    seen = {}

    def record(tensor, hook):
        seen[hook.name] = hook.layer() if hook.name.startswith("blocks.") else None

    bridge.run_with_hooks(toks, fwd_hooks=[(lambda name: True, record)])
    assert set(seen) == set(bridge.hook_names())
    assert seen["blocks.1.attn.hook_pattern"] == 1
    assert seen["blocks.0.ln2.hook_scale"] == 0
    assert seen["blocks.1.hook_resid_post"] == 1


def test_layer_of_a_point_outside_the_blocks_raises(pair):
    bridge, _ = pair
    assert bridge.hook_point("blocks.1.mlp.hook_post").layer() == 1
    with pytest.raises(ValueError):
        bridge.hook_point("hook_embed").layer()
    with pytest.raises(ValueError):
        bridge.hook_point("ln_final.hook_scale").layer()


@torch.no_grad()
def test_prepend_true_runs_a_hook_before_those_added_earlier(pair, toks):
    bridge, _ = pair
    log: list = []
    bridge.add_hook("blocks.0.hook_resid_pre", recorder(log, "first"))
    bridge.add_hook("blocks.0.hook_resid_pre", recorder(log, "second"))
    bridge.add_hook("blocks.0.hook_resid_pre", recorder(log, "prepended"), prepend=True)
    bridge(toks)
    bridge.reset_hooks()
    assert [label for label, _ in log] == ["prepended", "first", "second"]


@torch.no_grad()
def test_functools_partial_is_a_valid_hook_function(pair, toks):
    bridge, _ = pair

    def scale_head(tensor, hook, head, factor):
        tensor[:, :, head] *= factor

    ablated = bridge.run_with_hooks(
        toks, fwd_hooks=[("blocks.0.attn.hook_z", functools.partial(scale_head, head=1, factor=0.0))]
    )

    def by_lambda(tensor, hook):
        tensor[:, :, 1] = 0.0

    assert torch.equal(ablated, bridge.run_with_hooks(toks, fwd_hooks=[("blocks.0.attn.hook_z", by_lambda)]))
    assert not torch.equal(ablated, bridge(toks))


@torch.no_grad()
def test_add_hook_stays_attached_across_calls_until_reset_hooks(pair, toks):
    bridge, reference = pair
    log: list = []
    bridge.add_hook("blocks.1.hook_mlp_out", recorder(log))
    bridge(toks)
    bridge.run_with_cache(toks, names_filter="hook_embed")
    assert len(log) == 2
    bridge.reset_hooks()
    assert torch.equal(bridge(toks), reference(toks).logits)
    assert len(log) == 2


@torch.no_grad()
def test_add_hook_with_a_filter_attaches_to_every_matching_point(pair, toks):
    bridge, _ = pair
    log: list = []
    bridge.add_hook(lambda name: name.endswith("hook_resid_post"), recorder(log))
    bridge(toks)
    bridge.reset_hooks()
    assert [name for _, name in log] == [f"blocks.{i}.hook_resid_post" for i in range(bridge.cfg.n_layers)]


@torch.no_grad()
def test_hooks_context_attaches_hooks_only_inside_the_with_block(pair, toks):
    bridge, reference = pair
    log: list = []
    with bridge.hooks(fwd_hooks=[("blocks.0.hook_attn_out", recorder(log))]) as same:
        assert same is bridge
        bridge(toks)
        bridge(toks)
    bridge(toks)
    assert len(log) == 2
    assert torch.equal(bridge(toks), reference(toks).logits)


@torch.no_grad()
def test_hooks_context_removes_its_hooks_when_the_body_raises(pair, toks):
    bridge, _ = pair
    log: list = []
    with pytest.raises(RuntimeError, match="body failed"), bridge.hooks(fwd_hooks=[("hook_embed", recorder(log))]):
        raise RuntimeError("body failed")
    bridge(toks)
    assert log == []


@torch.no_grad()
def test_run_with_hooks_with_reset_hooks_end_false_keeps_hooks_until_reset(pair, toks):
    bridge, _ = pair
    log: list = []
    bridge.run_with_hooks(toks, fwd_hooks=[("hook_embed", recorder(log))], reset_hooks_end=False)
    bridge(toks)
    assert len(log) == 2
    bridge.reset_hooks()
    bridge(toks)
    assert len(log) == 2


@torch.no_grad()
def test_name_filters_select_points_in_run_with_hooks_and_run_with_cache(pair, toks):
    bridge, _ = pair
    log: list = []
    bridge.run_with_hooks(toks, fwd_hooks=[(lambda n: "attn.hook_" in n, recorder(log))])
    assert [name for _, name in log] == [n for n in bridge.hook_names() if "attn.hook_" in n]
    _, by_callable = bridge.run_with_cache(toks, names_filter=lambda n: n.endswith("hook_q"))
    _, by_str = bridge.run_with_cache(toks, names_filter="blocks.1.attn.hook_q")
    _, by_list = bridge.run_with_cache(toks, names_filter=["blocks.0.attn.hook_q", "blocks.1.attn.hook_q"])
    assert sorted(by_callable) == ["blocks.0.attn.hook_q", "blocks.1.attn.hook_q"]
    assert list(by_str) == ["blocks.1.attn.hook_q"]
    assert sorted(by_list) == sorted(by_callable)
    assert torch.equal(by_str["blocks.1.attn.hook_q"], by_list["blocks.1.attn.hook_q"])


@torch.no_grad()
def test_cache_understands_hooked_transformer_short_keys(pair, toks):
    bridge, _ = pair
    _, cache = bridge.run_with_cache(toks)
    assert torch.equal(cache["pattern", 1], cache["blocks.1.attn.hook_pattern"])
    assert torch.equal(cache["resid_post", 0], cache["blocks.0.hook_resid_post"])
    assert torch.equal(cache["q", 1], cache["blocks.1.attn.hook_q"])
    assert torch.equal(cache["post", 0], cache["blocks.0.mlp.hook_post"])
    assert torch.equal(cache["scale", 1, "ln2"], cache["blocks.1.ln2.hook_scale"])


# --------------------------------------------------------------------------- HF module paths
@torch.no_grad()
def test_an_hf_module_path_is_a_hook_name_for_that_modules_output(pair, toks):
    bridge, reference = pair
    paths = ["transformer.h.0.mlp", "transformer.h.1.attn.c_attn", "transformer.ln_f"]
    _, cache = bridge.run_with_cache(toks, names_filter=paths)
    hf = capture_outputs(reference, toks, None, paths)
    for path in paths:
        assert torch.equal(cache[path], hf[path])
    _, named = bridge.run_with_cache(toks, names_filter=["blocks.0.hook_mlp_out"])
    assert torch.equal(cache["transformer.h.0.mlp"], named["blocks.0.hook_mlp_out"])


@torch.no_grad()
def test_editing_through_an_hf_module_path_equals_editing_the_named_hook_point(pair, toks):
    bridge, _ = pair
    seen: list = []

    def zero(tensor, hook):
        seen.append(hook.name)
        return torch.zeros_like(tensor)

    by_path = bridge.run_with_hooks(toks, fwd_hooks=[("transformer.h.1.mlp", zero)])
    by_name = bridge.run_with_hooks(toks, fwd_hooks=[("blocks.1.hook_mlp_out", zero)])
    assert seen == ["transformer.h.1.mlp", "blocks.1.hook_mlp_out"]
    assert torch.equal(by_path, by_name)
    assert not torch.equal(by_path, bridge(toks))


# --------------------------------------------------------------------------- backward hooks
def reference_gradient(reference, toks, module_path: str, weights: torch.Tensor, pick=lambda t: t):
    """d(loss)/d(pick(module output)) on the untouched model, by autograd with retain_grad."""
    module = dict(reference.named_modules())[module_path]
    kept = {}

    def keep(mod, args, output):
        tensor = output[0] if isinstance(output, tuple) else output
        tensor.retain_grad()
        kept["t"] = tensor

    handle = module.register_forward_hook(keep)
    try:
        logits = reference(toks).logits
    finally:
        handle.remove()
    (logits * weights).sum().backward()
    reference.zero_grad(set_to_none=True)
    return pick(kept["t"].grad)


BACKWARD_CASES = {
    "blocks.0.hook_resid_post": ("transformer.h.0", lambda g, cfg: g),
    "blocks.1.hook_mlp_out": ("transformer.h.1.mlp", lambda g, cfg: g),
    "blocks.0.hook_attn_out": ("transformer.h.0.attn", lambda g, cfg: g),
    "blocks.1.attn.hook_q": (
        "transformer.h.1.attn.c_attn",
        lambda g, cfg: g[..., : cfg.d_model].unflatten(-1, (cfg.n_heads, cfg.d_head)),
    ),
    "blocks.0.attn.hook_v": (
        "transformer.h.0.attn.c_attn",
        lambda g, cfg: g[..., 2 * cfg.d_model :].unflatten(-1, (cfg.n_heads, cfg.d_head)),
    ),
    "hook_embed": ("transformer.wte", lambda g, cfg: g),
    "hook_unembed": ("lm_head", lambda g, cfg: g),
}


@pytest.mark.parametrize("point", list(BACKWARD_CASES))
@pytest.mark.parametrize("how", ["bwd_hooks", "add_hook_dir_bwd"])
def test_backward_hook_receives_the_gradient_autograd_computes_on_the_untouched_model(pair, toks, point, how):
    bridge, reference = pair
    module_path, pick = BACKWARD_CASES[point]
    weights = torch.randn(*toks.shape, bridge.cfg.d_vocab, generator=torch.Generator().manual_seed(5))
    grads: list = []

    def save(grad, hook):
        assert hook.name == point
        grads.append(grad.detach().clone())

    if how == "bwd_hooks":
        logits = bridge.run_with_hooks(toks, bwd_hooks=[(point, save)])
    else:
        bridge.add_hook(point, save, dir="bwd")
        logits = bridge(toks)
        bridge.reset_hooks()
    (logits * weights).sum().backward()
    expected = reference_gradient(reference, toks, module_path, weights, lambda g: pick(g, bridge.cfg))
    assert len(grads) == 1
    torch.testing.assert_close(grads[0], expected, rtol=0, atol=1e-6)


def test_backward_hook_on_a_recomputed_point_receives_the_chain_rule_gradient(pair, toks):
    """ln1.hook_normalized feeds `normalized * w + b`: its gradient is the ln_1 output's gradient times w."""
    bridge, reference = pair
    weights = torch.randn(*toks.shape, bridge.cfg.d_vocab, generator=torch.Generator().manual_seed(5))
    grads: list = []
    logits = bridge.run_with_hooks(toks, bwd_hooks=[("blocks.1.ln1.hook_normalized", lambda g, h: grads.append(g))])
    (logits * weights).sum().backward()
    w = reference.transformer.h[1].ln_1.weight.detach()
    expected = reference_gradient(reference, toks, "transformer.h.1.ln_1", weights) * w
    torch.testing.assert_close(grads[0], expected, rtol=1e-5, atol=1e-6)


def test_add_hook_rejects_an_unknown_direction(pair):
    bridge, _ = pair
    with pytest.raises(ValueError):
        bridge.add_hook("hook_embed", lambda t, h: None, dir="sideways")


# --------------------------------------------------------------------------- hooks() context vs add_hook / reset_hooks
@torch.no_grad()
def test_a_hook_added_with_add_hook_inside_a_hooks_context_survives_the_context(pair, toks):
    bridge, _ = pair
    log: list = []
    with bridge.hooks(fwd_hooks=[("hook_embed", recorder(log, "context"))]):
        bridge.add_hook("hook_pos_embed", recorder(log, "added"))
    bridge(toks)
    bridge.reset_hooks()
    assert [label for label, _ in log] == ["added"]


@torch.no_grad()
def test_reset_hooks_inside_a_hooks_context_stays_in_effect_after_the_context(pair, toks):
    bridge, _ = pair
    log: list = []
    bridge.add_hook("hook_pos_embed", recorder(log, "added_before"))
    with bridge.hooks(fwd_hooks=[("hook_embed", recorder(log, "context"))]):
        bridge.reset_hooks()
    bridge(toks)
    bridge.reset_hooks()
    assert log == []


@torch.no_grad()
def test_nested_hooks_contexts_remove_only_their_own_hooks(pair, toks):
    bridge, _ = pair
    log: list = []
    with bridge.hooks(fwd_hooks=[("hook_embed", recorder(log, "outer"))]):
        with bridge.hooks(fwd_hooks=[("hook_pos_embed", recorder(log, "inner"))]):
            bridge(toks)
        bridge(toks)
    bridge(toks)
    assert [label for label, _ in log] == ["outer", "inner", "outer"]


@torch.no_grad()
def test_run_with_cache_remove_batch_dim_and_device(pair, toks):
    bridge, _ = pair
    _, cache = bridge.run_with_cache(toks[:1], names_filter="blocks.0.hook_resid_post", remove_batch_dim=True)
    assert cache["blocks.0.hook_resid_post"].shape == (toks.shape[1], bridge.cfg.d_model)
    _, cache = bridge.run_with_cache(toks, names_filter="blocks.0.hook_resid_post", device="cpu")
    assert cache["blocks.0.hook_resid_post"].device.type == "cpu"
    assert not cache["blocks.0.hook_resid_post"].requires_grad
