"""BLOOM from the example plugin, read through the bound model: the whole conformance catalogue passes,
hook_embed sits after the embedding LayerNorm (as in HookedTransformer), and the residual decompositions
add up to the residual HF feeds its final norm. BLOOM's attention and MLP add the residual themselves,
so their contributions live on their output projections; a spec that forgets that is caught."""

from __future__ import annotations

import copy
from pathlib import Path

import torch

from bridge_core import Bridge, conformance
from bridge_core.spec.loader import read_raw_spec, validate_spec

from .test_example_alibi_plugin import PLUGIN_DIR, alibi_plugin, bloom, registry  # noqa: F401  (fixtures)

SPEC = PLUGIN_DIR / "bridge_core_alibi" / "specs" / "bloom.yaml"


def _hf_residuals(model, tokens):
    """What HF feeds its embedding LayerNorm, its first block and its final LayerNorm (a plain torch hook)."""
    seen = {}
    t = model.transformer

    def keep(name):
        return lambda module, args: seen.setdefault(name, args[0].detach().clone())

    handles = [t.h[0].register_forward_pre_hook(keep("block0")), t.ln_f.register_forward_pre_hook(keep("final"))]
    try:
        with torch.no_grad():
            model(tokens)
    finally:
        for handle in handles:
            handle.remove()
    return seen


def test_bloom_passes_the_whole_conformance_catalogue(registry):  # noqa: F811
    report = conformance.run("bloom", registry=registry)
    assert report.ok, str(report.failures())
    failed = [r.name for r in report.results if r.status == "fail"]
    assert failed == []


def test_hook_embed_is_the_embedding_norm_output_and_the_decompositions_add_up(registry):  # noqa: F811
    model = bloom()
    reference = copy.deepcopy(model)
    bridge = Bridge.from_hf(model, registry=registry)
    tokens = torch.randint(4, 97, (2, 7), generator=torch.Generator().manual_seed(1))
    hf = _hf_residuals(reference, tokens)
    with torch.no_grad():
        _, cache = bridge.run_with_cache(tokens)
    torch.testing.assert_close(cache["hook_embed"], hf["block0"], atol=1e-6, rtol=0)
    assert "embed.ln.hook_normalized" in cache
    final = hf["final"]
    torch.testing.assert_close(cache.decompose_resid().sum(0), final, atol=1e-5, rtol=0)
    torch.testing.assert_close(cache.accumulated_resid()[-1], final, atol=1e-6, rtol=0)
    # direct logit attribution: the components' attributions add up to that of HF's final residual
    attrs = cache.logit_attrs(cache.decompose_resid(), tokens=5)
    whole = cache.logit_attrs(final[None], tokens=5)
    torch.testing.assert_close(attrs.sum(0), whole[0], atol=1e-4, rtol=0)


def test_a_bloom_spec_without_its_contribution_places_fails_residual_stream(registry, tmp_path: Path):  # noqa: F811
    text = SPEC.read_text()
    for line in ("  attn_out_at: self_attention.dense\n", "  mlp_out_at: mlp.dense_4h_to_h\n"):
        assert line in text
        text = text.replace(line, "")
    text = (
        text.replace("name: bloom", "name: bloom_no_contributions")
        .replace("[BloomForCausalLM]", "[BloomNoContributions]")
        .replace("[bloom]", "[bloom_no_contributions]")
    )
    path = tmp_path / "bloom_no_contributions.yaml"
    path.write_text(text)
    spec = validate_spec(read_raw_spec(path))
    report = conformance.run(spec, registry=registry)
    failed = {r.name for r in report.results if r.status == "fail"}
    assert {"residual_stream", "attn_output"} & failed, failed
    assert "residual_stream" in failed
