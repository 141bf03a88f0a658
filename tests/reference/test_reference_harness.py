"""Checks that the TransformerLens 3.9 reference harness computes exactly what the untouched HF model does.

Skipped unless ``scripts/install_reference.sh`` has installed the reference into ``.reference/tl39``.
"""

from __future__ import annotations

import copy
import logging

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from . import hooked_transformer as ref

if not ref.available():
    pytest.skip(
        f"TransformerLens 3.9 reference unavailable ({ref.unavailable_reason()}); run scripts/install_reference.sh",
        allow_module_level=True,
    )

ATOL = 1e-4
N_LAYER = 2


@pytest.fixture(scope="module")
def hf_model() -> GPT2LMHeadModel:
    torch.manual_seed(0)
    config = GPT2Config(
        n_layer=N_LAYER, n_embd=64, n_head=4, vocab_size=97, n_positions=64, attn_implementation="eager"
    )
    return GPT2LMHeadModel(config).eval()


@pytest.fixture(scope="module")
def tokens() -> torch.Tensor:
    return torch.randint(0, 97, (2, 7), generator=torch.Generator().manual_seed(1))


def _hidden_states(hf_model: GPT2LMHeadModel, tokens: torch.Tensor) -> tuple[torch.Tensor, ...]:
    # output_hidden_states only ever on a copy, so the model under test is never reconfigured.
    with torch.no_grad():
        return copy.deepcopy(hf_model)(tokens, output_hidden_states=True).hidden_states


def test_logits_match_hf(hf_model: GPT2LMHeadModel, tokens: torch.Tensor) -> None:
    model = ref.hooked_gpt2_from_hf(hf_model)
    with torch.no_grad():
        expected = hf_model(tokens).logits
        actual = model(tokens)
    assert actual.shape == expected.shape
    torch.testing.assert_close(actual, expected, atol=ATOL, rtol=0)


def test_resid_post_matches_hf_hidden_states(hf_model: GPT2LMHeadModel, tokens: torch.Tensor) -> None:
    cache = ref.reference_cache(hf_model, tokens)
    hidden = _hidden_states(hf_model, tokens)
    assert len(hidden) == N_LAYER + 1
    torch.testing.assert_close(cache["hook_embed"] + cache["hook_pos_embed"], hidden[0], atol=ATOL, rtol=0)
    for layer in range(N_LAYER - 1):  # HF's last hidden state is after ln_f, so it is checked below
        torch.testing.assert_close(cache[f"blocks.{layer}.hook_resid_post"], hidden[layer + 1], atol=ATOL, rtol=0)
    ln_f = hf_model.transformer.ln_f
    final = cache["ln_final.hook_normalized"] * ln_f.weight.detach() + ln_f.bias.detach()
    torch.testing.assert_close(final, hidden[-1], atol=ATOL, rtol=0)
    with torch.no_grad():
        torch.testing.assert_close(cache["unembed.hook_out"], hf_model(tokens).logits, atol=ATOL, rtol=0)


def test_cache_values_are_detached_float32(hf_model: GPT2LMHeadModel, tokens: torch.Tensor) -> None:
    cache = ref.reference_cache(hf_model, tokens)
    assert {"blocks.0.attn.hook_pattern", f"blocks.{N_LAYER - 1}.hook_resid_post"} <= set(cache)
    for name, value in cache.items():
        assert value.dtype == torch.float32, name
        assert not value.requires_grad, name
        assert value.shape[:2] in {tokens.shape, (tokens.shape[0], 4)}, name  # [batch, pos|head, ...]


def test_extra_hooks_add_names_without_changing_values(hf_model: GPT2LMHeadModel, tokens: torch.Tensor) -> None:
    plain = ref.reference_cache(hf_model, tokens)
    extra = ref.reference_cache(hf_model, tokens, extra_hooks=True)
    added = {"hook_tokens", "blocks.0.hook_q_input", "blocks.0.attn.hook_result", "blocks.0.hook_mlp_in"}
    assert set(plain) < set(extra)
    assert added <= set(extra)
    assert torch.equal(extra["hook_tokens"], tokens)
    for name, value in plain.items():
        other = extra[name]
        if ".ln1." in name:  # split qkv input: ln1 runs per head, so these gain a head dim
            assert other.shape == (*value.shape[:2], 4, value.shape[-1]), name
            other = other[:, :, 2]
        torch.testing.assert_close(other, value, atol=1e-6, rtol=0, msg=name)
    # hook_result is per-head attention output: summed over heads plus b_O it is hook_attn_out.
    b_o = hf_model.transformer.h[0].attn.c_proj.bias.detach()
    summed = extra["blocks.0.attn.hook_result"].sum(dim=2) + b_o
    torch.testing.assert_close(summed, plain["blocks.0.hook_attn_out"], atol=ATOL, rtol=0)


@pytest.mark.parametrize("side", ["left", "right"])
def test_padded_batch_real_positions_match_unpadded_rows(hf_model: GPT2LMHeadModel, side: str) -> None:
    rows = [torch.tensor([5, 17, 3, 88, 41]), torch.tensor([9, 60, 2])]
    width, pad_id = 5, 0
    tokens = torch.full((len(rows), width), pad_id)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        span = slice(width - len(row), width) if side == "left" else slice(0, len(row))
        tokens[i, span], mask[i, span] = row, 1

    padded = ref.reference_cache(hf_model, tokens, mask)
    for i, row in enumerate(rows):
        alone = ref.reference_cache(hf_model, row[None])
        real = mask[i].bool()
        names = ("hook_pos_embed", "blocks.0.attn.hook_z", "blocks.1.hook_resid_post", "unembed.hook_out")
        for name in names:
            torch.testing.assert_close(padded[name][i, real], alone[name][0], atol=ATOL, rtol=0, msg=name)
        pattern = padded["blocks.1.attn.hook_pattern"][i][:, real][..., real]
        torch.testing.assert_close(pattern, alone["blocks.1.attn.hook_pattern"][0], atol=ATOL, rtol=0)

    # HF agrees once given the same position ids (it would otherwise count left pads as positions).
    position_ids = (mask.cumsum(dim=1) - 1).clamp(min=0)
    with torch.no_grad():
        expected = hf_model(tokens, attention_mask=mask, position_ids=position_ids).logits
    real = mask.bool()
    torch.testing.assert_close(padded["unembed.hook_out"][real], expected[real], atol=ATOL, rtol=0)


def test_reference_import_leaves_global_state_alone() -> None:
    # Importing TransformerLens 3.9 sets the "transformers" logger to ERROR and patches huggingface_hub's
    # dataclass validator; the harness undoes both (module import above already ran available()).
    from huggingface_hub import dataclasses as hub_dataclasses
    from transformers.utils import logging as hf_logging

    assert logging.getLogger("transformers").level == hf_logging._get_default_logging_level()
    assert not hasattr(hub_dataclasses._validate_simple_type, "__wrapped__")
