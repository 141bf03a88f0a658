"""GPTBigCode's fused c_attn is laid out by `multi_query`: [q (h·d) | k (d) | v (d)] with one key/value head,
else per head [q k v]. The draft writes `block.attn.qkv.order` as an expression over the config and a variant;
the bridge's q/k/v hooks equal HF's own split of c_attn's output on both settings, and a draft whose order
ignores the config fails qkv_recompute on the setting it misses."""

from __future__ import annotations

import copy

import pytest
import torch

from bridge_core import Bridge
from bridge_core.bridge import loading
from bridge_core.conformance.runner import run
from bridge_core.drafting import draft_model_type, to_spec
from bridge_core.errors import BridgeCoreError
from bridge_core.spec.schema import Spec

EXPRESSION = "'qkv' if multi_query else 'per_head_interleaved'"


def _fields() -> dict:
    return draft_model_type("gpt_bigcode").fields


def test_the_draft_writes_the_order_as_an_expression_with_a_variant():
    draft = draft_model_type("gpt_bigcode")
    assert not draft.gaps, draft.gaps
    assert draft.fields["block"]["attn"]["qkv"]["order"] == EXPRESSION
    assert {"multi_query": False} in draft.fields["variants"].values()


@pytest.mark.parametrize("multi_query", [True, False])
def test_q_k_v_hooks_are_hf_own_split_of_c_attn(multi_query):
    spec = to_spec(draft_model_type("gpt_bigcode"))
    variant = None if multi_query else next(k for k, v in spec.variants.items() if v == {"multi_query": False})
    model = loading.random_model(spec, seed=3, tiny=True, variant=variant)
    assert model.config.multi_query is multi_query
    hf = copy.deepcopy(model).eval()
    bridge = Bridge.from_hf(model, spec)
    tokens = torch.randint(0, model.config.vocab_size, (2, 6), generator=torch.Generator().manual_seed(5))
    seen: dict[str, torch.Tensor] = {}
    handle = hf.transformer.h[0].attn.c_attn.register_forward_hook(lambda m, i, o: seen.setdefault("qkv", o))
    try:
        with torch.no_grad():
            hf(tokens)
    finally:
        handle.remove()
    with torch.no_grad():
        _, cache = bridge.run_with_cache(tokens)
    h, d = model.config.n_head, model.config.n_embd // model.config.n_head
    out = seen["qkv"]
    if multi_query:  # [q (h·d) | k (d) | v (d)], one key/value head shared by all queries
        q, k, v = out[..., : h * d].unflatten(-1, (h, d)), out[..., h * d : h * d + d], out[..., h * d + d :]
        k, v = k.unsqueeze(-2), v.unsqueeze(-2)
    else:  # per head [q k v]
        q, k, v = out.unflatten(-1, (h, 3, d)).unbind(-2)
    for name, expected in (("q", q), ("k", k), ("v", v)):
        got = cache[f"blocks.0.attn.hook_{name}"]
        torch.testing.assert_close(got, expected.expand_as(got), rtol=0, atol=1e-6)


@pytest.mark.parametrize(("order", "variant"), [("qkv", "multi_head"), ("per_head_interleaved", None)])
def test_an_order_that_ignores_multi_query_fails_qkv_recompute(order, variant):
    fields = _fields()
    fields["block"]["attn"]["qkv"]["order"] = order
    name = next(k for k, v in fields["variants"].items() if v == {"multi_query": False}) if variant else None
    report = run(Spec.model_validate(fields), checks=["qkv_recompute"], variant=name)
    assert not report.ok


def test_the_expression_passes_qkv_recompute_on_both_settings():
    spec = Spec.model_validate(_fields())
    for variant in (None, *spec.variants):
        report = run(spec, checks=["qkv_recompute", "attention_semantics"], variant=variant)
        assert report.ok, (variant, [r.explain() for r in report.failed()])


def test_an_order_outside_the_two_layouts_is_a_typed_error_naming_the_field():
    fields = _fields()
    fields["block"]["attn"]["qkv"]["order"] = "'kqv' if multi_query else 'qkv'"
    model = loading.random_model(Spec.model_validate(fields), seed=3, tiny=True)
    with pytest.raises(BridgeCoreError, match=r"block\.attn\.qkv\.order"):
        Bridge.from_hf(model, Spec.model_validate(fields))
