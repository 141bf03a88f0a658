"""`bridge_core.compat.HookedTransformer` is a one-import-line drop-in: a HookedTransformer-style notebook runs
through it, its processed weights give the hook values of TransformerLens 3.9's own processing, and the
constructor arguments a bridge cannot honour are refused with a typed error.
"""

from __future__ import annotations

import copy
import textwrap
from pathlib import Path

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

from bridge_core import Bridge
from bridge_core.compat import CompatError, HookedTransformer
from bridge_core.errors import BridgeCoreError
from tests.reference import hooked_transformer as ref

TOKENS = torch.tensor([[5, 17, 3, 40, 8, 22, 61], [9, 1, 33, 12, 70, 4, 2]])

# The notebook as written against TransformerLens; only its first line changes.
NOTEBOOK = textwrap.dedent(
    """
    from transformer_lens import HookedTransformer
    model = HookedTransformer.from_pretrained(CHECKPOINT, fold_ln=True, center_writing_weights=True,
                                              center_unembed=True, device="cpu", dtype="float32")
    logits, cache = model.run_with_cache(TOKENS)
    pattern = cache["pattern", 0]
    resid = cache["resid_pre", 1]

    def ablate_head_0(z, hook):
        z[:, :, 0] = 0.0
        return z

    ablated_loss = model.run_with_hooks(TOKENS, return_type="loss", fwd_hooks=[("blocks.0.attn.hook_z", ablate_head_0)])
    loss = model(TOKENS, return_type="loss")
    n_layers, d_model = model.cfg.n_layers, model.cfg.d_model
    W_U = model.W_U
    """
)


def gpt2() -> GPT2LMHeadModel:
    torch.manual_seed(0)
    config = GPT2Config(n_layer=2, n_embd=32, n_head=4, vocab_size=97, n_positions=32)
    model = GPT2LMHeadModel(config).eval()
    with torch.no_grad():  # norms and biases away from 1 and 0, so folding them matters
        for p in model.parameters():
            if p.dim() == 1:
                p.add_(torch.randn_like(p) * 0.2)
    return model


def run_notebook(checkpoint: object) -> dict:
    source = NOTEBOOK.replace("from transformer_lens import", "from bridge_core.compat import")
    scope: dict = {"CHECKPOINT": checkpoint, "TOKENS": TOKENS}
    exec(compile(source, "<notebook>", "exec"), scope)
    return scope


def processed_reference(hf_model: GPT2LMHeadModel):
    tl = ref.hooked_gpt2_from_hf(hf_model)
    tl.load_and_process_state_dict(
        tl.state_dict(), fold_ln=True, center_writing_weights=True, center_unembed=True, fold_value_biases=True
    )
    return tl


needs_reference = pytest.mark.skipif(not ref.available(), reason=f"TL 3.9 reference: {ref.unavailable_reason()}")


@needs_reference
def test_notebook_through_the_dropin_equals_hooked_transformers_processed_model(tmp_path: Path):
    hf_model = gpt2()
    hf_model.save_pretrained(tmp_path / "ckpt")
    scope = run_notebook(str(tmp_path / "ckpt"))
    tl = processed_reference(hf_model)
    with torch.no_grad():
        tl_logits, tl_cache = tl.run_with_cache(TOKENS)
        tl_loss = tl(TOKENS, return_type="loss")

        def ablate(z, hook):
            z[:, :, 0] = 0.0
            return z

        tl_ablated = tl.run_with_hooks(TOKENS, return_type="loss", fwd_hooks=[("blocks.0.attn.hook_z", ablate)])
    # center_unembed shifts logits per position: compare log-probs, and the processed residual itself
    torch.testing.assert_close(scope["logits"].log_softmax(-1), tl_logits.log_softmax(-1), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(scope["resid"], tl_cache["blocks.1.hook_resid_pre"], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(scope["pattern"], tl_cache["blocks.0.attn.hook_pattern"], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(scope["loss"], tl_loss, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(scope["ablated_loss"], tl_ablated, atol=1e-5, rtol=1e-5)
    assert scope["W_U"].shape == tl.W_U.shape  # values differ: GPT-2 ties W_U to W_E (see the report of issue 20)
    assert (scope["n_layers"], scope["d_model"]) == (2, 32)


@needs_reference
def test_unprocessed_bridge_differs_from_the_processed_reference():
    """The broken input: without processing the residual is not centered, and the comparison above sees it."""
    hf_model = gpt2()
    bridge = HookedTransformer.from_pretrained_no_processing(copy.deepcopy(hf_model))
    _, cache = bridge.run_with_cache(TOKENS)
    _, tl_cache = processed_reference(hf_model).run_with_cache(TOKENS)
    assert not torch.allclose(cache["blocks.1.hook_resid_pre"], tl_cache["blocks.1.hook_resid_pre"], atol=1e-3)


def test_a_model_passed_in_is_processed_on_a_copy_and_left_as_found():
    hf_model = gpt2()
    before = copy.deepcopy(hf_model.state_dict())
    bridge = HookedTransformer.from_pretrained(hf_model, device="cpu")
    assert bridge.model is not hf_model
    assert all(torch.equal(before[k], v) for k, v in hf_model.state_dict().items())
    with torch.no_grad():
        theirs = hf_model(TOKENS).logits.log_softmax(-1)
    torch.testing.assert_close(bridge(TOKENS).log_softmax(-1), theirs, atol=1e-5, rtol=1e-5)


def test_no_processing_returns_a_bridge_over_the_model_itself():
    hf_model = gpt2()
    bridge = HookedTransformer.from_pretrained_no_processing(hf_model)
    assert isinstance(bridge, Bridge) and bridge.model is hf_model
    torch.testing.assert_close(bridge(TOKENS), hf_model(TOKENS).logits)


def test_rmsnorm_model_skips_centering_with_a_warning_as_hooked_transformer_does():
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=97, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=32)  # fmt: skip
    hf_model = LlamaForCausalLM(config).eval()
    with pytest.warns(UserWarning, match="center_writing_weights skipped"):
        bridge = HookedTransformer.from_pretrained(hf_model)
    with torch.no_grad():
        theirs = hf_model(TOKENS).logits.log_softmax(-1)
    torch.testing.assert_close(bridge(TOKENS).log_softmax(-1), theirs, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("n_devices", 2),
        ("refactor_factored_attn_matrices", True),
        ("first_n_layers", 1),
        ("checkpoint_index", 3),
        ("default_prepend_bos", False),
        ("default_padding_side", "left"),
        ("not_an_argument", 1),
    ],
)
def test_arguments_a_bridge_cannot_honour_are_refused_with_a_typed_error(option, value):
    with pytest.raises(CompatError, match=option):
        HookedTransformer.from_pretrained(gpt2(), **{option: value})


def test_defaults_of_refused_arguments_are_accepted():
    bridge = HookedTransformer.from_pretrained(gpt2(), n_devices=1, default_padding_side="right", first_n_layers=None)
    assert isinstance(bridge, Bridge)


@pytest.mark.parametrize(
    "call",
    [
        lambda m: HookedTransformer.from_pretrained(m, dtype="float16"),  # would cast the user's model
        lambda m: HookedTransformer.from_pretrained(m, dtype="not_a_dtype"),
        lambda m: HookedTransformer.from_pretrained_no_processing(m, device="meta"),  # would move it
        lambda m: HookedTransformer(m),
        lambda m: HookedTransformer.from_pretrained(3),
    ],
    ids=["cast-users-model", "unknown-dtype", "move-users-model", "construct", "not-a-model"],
)
def test_changing_the_users_model_or_bad_values_are_typed_errors(call):
    model = gpt2()
    with pytest.raises(BridgeCoreError):
        call(model)
    assert next(model.parameters()).dtype == torch.float32 and next(model.parameters()).device.type == "cpu"
