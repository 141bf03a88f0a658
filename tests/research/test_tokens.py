"""to_tokens / to_string / to_str_tokens / to_single_token with a BPE tokenizer trained and saved locally."""

from __future__ import annotations

import pytest
import torch
from _bpe import train_bpe
from transformers import PreTrainedTokenizerFast

from bridge_core.bridge import tokens as tk
from bridge_core.bridge.bridge import Bridge
from bridge_core.bridge.loading import random_model
from bridge_core.registry import default_registry

SENTENCES = [
    "the cat sat on the mat",
    "the dog sat on the log",
    "a cat and a dog met on the mat",
    "the end of the story",
] * 5


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """(raw `tokenizers` object, AutoTokenizer loaded back from disk, bridge over a GPT-2 of that vocab size)."""
    raw, loaded = train_bpe(SENTENCES, tmp_path_factory.mktemp("tokenizer"), vocab_size=300)
    spec = default_registry().get("gpt2")
    model = random_model(spec, vocab_size=len(loaded), n_positions=12)
    return raw, loaded, Bridge.from_hf(model, "gpt2", tokenizer=loaded)


def test_to_tokens_prepends_bos_once_and_pads_both_sides(trained):
    raw, _, bridge = trained
    bos, pad = raw.token_to_id("<bos>"), raw.token_to_id("<pad>")
    short, long = raw.encode("the cat").ids, raw.encode("the dog sat on the log").ids
    assert tk.default_prepend_bos(bridge) is True
    assert tk.to_tokens(bridge, "the cat").tolist() == [[bos, *short]]
    assert tk.to_tokens(bridge, "the cat", prepend_bos=False).tolist() == [short]
    right = tk.to_tokens(bridge, ["the cat", "the dog sat on the log"])
    gap = len(long) - len(short)
    assert right.tolist() == [[bos, *short] + [pad] * gap, [bos, *long]]
    left = tk.to_tokens(bridge, ["the cat", "the dog sat on the log"], padding_side="left")
    assert left.tolist() == [[pad] * gap + [bos, *short], [bos, *long]]
    assert right.dtype == torch.long


def test_to_tokens_truncates_to_the_context_and_runs_like_hf(trained):
    raw, _, bridge = trained
    text = " ".join(SENTENCES[:4])
    assert len(raw.encode(text).ids) + 1 > 12
    ids = tk.to_tokens(bridge, text)
    assert ids.shape == (1, 12)
    assert ids[0, 1:].tolist() == raw.encode(text).ids[:11]
    assert tk.to_tokens(bridge, text, truncate=False).shape[1] == len(raw.encode(text).ids) + 1
    torch.testing.assert_close(bridge(ids), bridge.model(ids).logits, atol=0, rtol=0)


def test_to_string_and_str_tokens_decode_as_the_raw_tokenizer(trained):
    raw, _, bridge = trained
    ids = tk.to_tokens(bridge, "the dog sat")
    assert tk.to_string(bridge, ids[0]) == raw.decode(ids[0].tolist(), skip_special_tokens=False)
    assert tk.to_string(bridge, ids[0]) == "<bos>the dog sat"
    assert tk.to_string(bridge, ids) == ["<bos>the dog sat"]
    pieces = tk.to_str_tokens(bridge, "the dog sat")
    assert pieces == [raw.decode([i], skip_special_tokens=False) for i in ids[0].tolist()]
    assert "".join(pieces) == "<bos>the dog sat"
    assert tk.to_str_tokens(bridge, ids) == pieces
    assert tk.to_str_tokens(bridge, ["the cat", "a dog"], prepend_bos=False) == [
        [raw.decode([i]) for i in raw.encode("the cat").ids],
        [raw.decode([i]) for i in raw.encode("a dog").ids],
    ]


def test_to_single_token_accepts_one_token_and_refuses_several(trained):
    raw, _, bridge = trained
    assert tk.to_single_token(bridge, "the") == raw.token_to_id("the")
    with pytest.raises(tk.TokenizerError, match="not a single token"):
        tk.to_single_token(bridge, "the cat sat")


def test_no_bos_token_means_no_prepending_and_no_tokenizer_is_a_typed_error(trained):
    raw, _, bridge = trained
    plain = PreTrainedTokenizerFast(tokenizer_object=raw, pad_token="<pad>")
    other = Bridge.from_hf(bridge.model, "gpt2", tokenizer=plain)
    assert tk.default_prepend_bos(other) is False
    assert tk.to_tokens(other, "the cat").tolist() == [raw.encode("the cat").ids]
    with pytest.raises(tk.TokenizerError, match="no BOS"):
        tk.to_tokens(other, "the cat", prepend_bos=True)
    with pytest.raises(tk.TokenizerError, match="no tokenizer"):
        tk.to_tokens(Bridge.from_hf(bridge.model, "gpt2"), "the cat")
