"""A byte-level BPE tokenizer trained offline with the `tokenizers` library (pad, bos, eos, unk specials),
saved as a transformers tokenizer and loaded back from disk: how the tests get a real tokenizer."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerFast


def train_bpe(sentences: Sequence[str], path: Path, vocab_size: int) -> tuple[Tokenizer, object]:
    """(the raw `tokenizers` object, the AutoTokenizer loaded back from `path`)."""
    raw = Tokenizer(models.BPE(unk_token="<unk>"))
    raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    raw.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<pad>", "<bos>", "<eos>", "<unk>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    raw.train_from_iterator(sentences, trainer)
    wrapped = PreTrainedTokenizerFast(
        tokenizer_object=raw, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>", unk_token="<unk>"
    )
    wrapped.save_pretrained(path)
    return raw, AutoTokenizer.from_pretrained(path)
