"""Fixtures of the TransformerLens-compatibility tests: the tokenizer and the (bridge, HookedTransformer) pairs."""

from __future__ import annotations

import pytest
from reference import hooked_transformer as ref

from ._models import pair, train_tokenizer


@pytest.fixture(scope="session")
def tokenizer(tmp_path_factory):
    return train_tokenizer(tmp_path_factory.mktemp("tl_compat_tokenizer"))


@pytest.fixture(params=["gpt2", "llama"])
def models(request, tokenizer):
    """(bridge, HookedTransformer 3.9) over the same weights; skipped when the reference is not installed."""
    if not ref.available():
        pytest.skip(f"TransformerLens 3.9 reference unavailable ({ref.unavailable_reason()})")
    return pair(request.param, tokenizer)
