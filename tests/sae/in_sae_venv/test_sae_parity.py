"""SAEs and transcoders on a bridge give what SAELens's `HookedSAETransformer` gives on the same weights:
feature activations, reconstructions, the SAE's hook points, spliced logits and losses, the error term
and interventions on features; on a GPT-2- and a Llama-shaped model, with randomly initialized SAEs.

Runs in `.venv-sae` (scripts/install_sae_reference.sh), launched by tests/sae/test_sae_lens_parity.py.
"""

from __future__ import annotations

import pytest

SKIP_REASON = "sae-lens lives in .venv-sae; tests/sae/test_sae_lens_parity.py runs this file there"
sae_lens = pytest.importorskip("sae_lens", reason=SKIP_REASON)

import torch  # noqa: E402
from sae_lens import StandardSAE, StandardSAEConfig, Transcoder, TranscoderConfig  # noqa: E402
from sae_lens.saes.sae import SAEMetadata  # noqa: E402

from bridge_core import Bridge  # noqa: E402
from bridge_core.errors import HookNameError  # noqa: E402
from bridge_core.sae import SAEAttachError, SAEBridge  # noqa: E402

from . import references  # noqa: E402

TOKENS = torch.tensor([[3, 17, 5, 40, 8, 22, 61, 9], [9, 1, 33, 12, 70, 4, 2, 50]])
ATOL = 1e-5
INNER = ("hook_sae_input", "hook_sae_acts_pre", "hook_sae_acts_post", "hook_sae_recons", "hook_sae_output")


def sae(hook: str, d_in: int = 32, d_sae: int = 64, seed: int = 1) -> StandardSAE:
    torch.manual_seed(seed)
    model = StandardSAE(StandardSAEConfig(d_in=d_in, d_sae=d_sae, metadata=SAEMetadata(hook_name=hook)))
    with torch.no_grad():  # biases away from 0 so a dropped one shows
        model.b_enc.add_(torch.randn_like(model.b_enc) * 0.1)
        model.b_dec.add_(torch.randn_like(model.b_dec) * 0.1)
    return model


def transcoder(hook_in: str, hook_out: str, seed: int = 2) -> Transcoder:
    torch.manual_seed(seed)
    meta = SAEMetadata(hook_name=hook_in, hook_name_out=hook_out)
    model = Transcoder(TranscoderConfig(d_in=32, d_sae=48, d_out=32, apply_b_dec_to_input=False, metadata=meta))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return model


@pytest.fixture(params=["gpt2", "llama"])
def pair(request):
    hf_model = getattr(references, request.param)()
    return SAEBridge.from_bridge(Bridge.from_hf(hf_model)), references.hooked_sae_transformer(hf_model)


def assert_same(ours: torch.Tensor, theirs: torch.Tensor) -> None:
    torch.testing.assert_close(ours.detach().float(), theirs.detach().float(), atol=ATOL, rtol=1e-4)


@pytest.mark.parametrize("hook", ["blocks.1.hook_resid_pre", "blocks.0.hook_mlp_out", "blocks.1.hook_attn_out"])
def test_feature_acts_reconstructions_logits_and_loss_equal_hooked_sae_transformers(pair, hook):
    bridge, tl = pair
    the_sae = sae(hook)
    with torch.no_grad():
        logits, cache = bridge.run_with_cache_with_saes(TOKENS, saes=[the_sae])
        tl_logits, tl_cache = tl.run_with_cache_with_saes(TOKENS, saes=[the_sae])
        loss = bridge.run_with_saes(TOKENS, saes=[the_sae], return_type="loss")
        tl_loss = tl.run_with_saes(TOKENS, saes=[the_sae], return_type="loss")
    for local in INNER:
        assert_same(cache[f"{hook}.{local}"], tl_cache[f"{hook}.{local}"])
    assert (cache[f"{hook}.hook_sae_acts_post"] > 0).any()  # features do fire
    assert_same(logits, tl_logits)
    assert_same(loss, tl_loss)
    assert not torch.allclose(logits, bridge(TOKENS), atol=1e-3)  # the splice changed the forward
    assert bridge.acts_to_saes == {}  # run_with_saes detached it again


def test_error_term_keeps_the_forward_and_equals_hooked_sae_transformers_error(pair):
    bridge, tl = pair
    the_sae = sae("blocks.1.hook_resid_pre")
    with torch.no_grad():
        plain = bridge(TOKENS)
        logits, cache = bridge.run_with_cache_with_saes(TOKENS, saes=[the_sae], use_error_term=True)
        _, tl_cache = tl.run_with_cache_with_saes(TOKENS, saes=[the_sae], use_error_term=True)
    assert_same(logits, plain)
    for local in ("hook_sae_error", "hook_sae_acts_post", "hook_sae_output"):
        name = f"blocks.1.hook_resid_pre.{local}"
        assert_same(cache[name], tl_cache[name])


def test_feature_ablation_through_the_error_term_equals_hooked_sae_transformers(pair):
    bridge, tl = pair
    the_sae = sae("blocks.1.hook_resid_pre")

    def ablate(acts, hook):
        acts[..., :16] = 0.0
        return acts

    hooks = [("blocks.1.hook_resid_pre.hook_sae_acts_post", ablate)]
    with torch.no_grad():
        bridge.add_sae(the_sae, use_error_term=True)
        tl.add_sae(the_sae, use_error_term=True)
        ours = bridge.run_with_hooks(TOKENS, fwd_hooks=hooks)
        theirs = tl.run_with_hooks(TOKENS, fwd_hooks=hooks)
        plain = bridge.run_with_hooks_with_saes(TOKENS, saes=[])  # still attached: error term, no ablation
    assert_same(ours, theirs)
    assert_same(plain, bridge.bridge(TOKENS))
    assert not torch.allclose(ours, plain, atol=1e-4)


def test_transcoder_reads_one_hook_and_writes_another_as_hooked_sae_transformer_does(pair):
    bridge, tl = pair
    tc = transcoder("blocks.0.ln2.hook_normalized", "blocks.0.hook_mlp_out")
    with torch.no_grad():
        logits, cache = bridge.run_with_cache_with_saes(TOKENS, saes=[tc])
        tl_logits, tl_cache = tl.run_with_cache_with_saes(TOKENS, saes=[tc])
        kept = bridge.run_with_saes(TOKENS, saes=[tc], use_error_term=True)
    for local in INNER:
        name = f"blocks.0.hook_mlp_out.{local}"  # named under the point it writes, as SAELens names them
        assert_same(cache[name], tl_cache[name])
    assert_same(logits, tl_logits)
    assert_same(kept, bridge(TOKENS))


def test_saes_context_restores_the_saes_attached_before(pair):
    bridge, _ = pair
    first, second = sae("blocks.1.hook_resid_pre", seed=1), sae("blocks.1.hook_resid_pre", seed=5)
    bridge.add_sae(first)
    with bridge.saes(saes=[second]):
        assert bridge.acts_to_saes == {"blocks.1.hook_resid_pre": second}
    assert bridge.acts_to_saes == {"blocks.1.hook_resid_pre": first}
    bridge.reset_saes()
    assert bridge.acts_to_saes == {}
    with torch.no_grad():
        assert_same(bridge(TOKENS), bridge.bridge(TOKENS))


def test_an_sae_whose_width_does_not_fit_its_hook_point_is_a_typed_error(pair):
    bridge, _ = pair
    with pytest.raises(SAEAttachError, match=r"d_in=48 .*blocks\.0\.hook_resid_post"):
        bridge.add_sae(sae("blocks.0.hook_resid_post", d_in=48))
    with pytest.raises(SAEAttachError, match="d_in=32"):
        bridge.add_sae(sae("blocks.0.mlp.hook_post"))  # d_mlp 48 (llama) or 128 (gpt2)
    assert bridge.acts_to_saes == {}


def test_unknown_hook_names_are_typed_errors_with_suggestions(pair):
    bridge, _ = pair
    with pytest.raises(HookNameError, match=r"blocks\.1\.hook_resid_pre"):
        bridge.add_sae(sae("blocks.1.hook_resid_pree"))
    with pytest.raises(HookNameError):
        bridge.run_with_hooks(TOKENS, fwd_hooks=[("blocks.1.hook_resid_pre.hook_sae_acts_post", print)])


def test_an_sae_spliced_at_another_layer_differs_from_the_reference(pair):
    """The broken input the comparisons above must catch: the same SAE one block early."""
    bridge, tl = pair
    early, right = sae("blocks.0.hook_resid_pre"), sae("blocks.1.hook_resid_pre")
    with torch.no_grad():
        ours = bridge.run_with_saes(TOKENS, saes=[early])
        theirs = tl.run_with_saes(TOKENS, saes=[right])
    assert not torch.allclose(ours, theirs, atol=1e-3)


def test_hook_z_sae_with_heads_flattened_equals_hooked_sae_transformer(pair):
    bridge, tl = pair
    the_sae = sae("blocks.0.attn.hook_z", d_in=32)  # n_heads * d_head
    the_sae.turn_on_forward_pass_hook_z_reshaping()
    with torch.no_grad():
        logits, cache = bridge.run_with_cache_with_saes(TOKENS, saes=[the_sae])
        tl_logits, tl_cache = tl.run_with_cache_with_saes(TOKENS, saes=[the_sae])
    for local in INNER:
        assert_same(cache[f"blocks.0.attn.hook_z.{local}"], tl_cache[f"blocks.0.attn.hook_z.{local}"])
    assert_same(logits, tl_logits)


def test_gradients_at_sae_points_equal_hooked_sae_transformers(pair):
    bridge, tl = pair
    the_sae = sae("blocks.1.hook_resid_pre")
    name = "blocks.1.hook_resid_pre.hook_sae_acts_post"
    loss, cache = bridge.run_with_cache_with_saes(
        TOKENS, saes=[the_sae], names_filter=[name], incl_bwd=True, return_type="loss"
    )
    tl_loss, tl_cache = tl.run_with_cache_with_saes(
        TOKENS, saes=[the_sae], names_filter=[name], incl_bwd=True, return_type="loss"
    )
    assert_same(loss, tl_loss)
    assert_same(cache[name + "_grad"], tl_cache[name + "_grad"])
    assert cache[name + "_grad"].abs().sum() > 0


def test_the_bridge_point_shows_the_value_entering_the_sae(pair):
    bridge, _ = pair
    the_sae = sae("blocks.1.hook_resid_pre")
    with torch.no_grad():
        _, plain = bridge.bridge.run_with_cache(TOKENS)
        _, cache = bridge.run_with_cache_with_saes(TOKENS, saes=[the_sae])
    assert_same(cache["blocks.1.hook_resid_pre"], plain["blocks.1.hook_resid_pre"])
    assert_same(cache["blocks.1.hook_resid_pre"], cache["blocks.1.hook_resid_pre.hook_sae_input"])
    assert not torch.allclose(cache["blocks.1.hook_resid_post"], plain["blocks.1.hook_resid_post"], atol=1e-3)
