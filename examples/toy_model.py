"""A tiny GPT-2 that has learned six facts, with a word-level tokenizer: the model every example uses.

Built offline in a few seconds: a `tokenizers` WordLevel tokenizer over a twenty-word vocabulary and
a 2-layer GPT-2 trained on sentences "<bos> alice lives in paris ." (each person lives in one city).
Run it directly (`python examples/toy_model.py [DIR]`) to save both to DIR, or to a new temporary
directory, that `Bridge.from_pretrained` and `bridge-core inspect --model DIR --prompt "alice lives in"`
can load.
"""

from __future__ import annotations

import sys
import tempfile

import torch
import transformers
from tokenizers import Tokenizer, models, pre_tokenizers

from bridge_core import Bridge

PEOPLE = ["alice", "bob", "carol", "dave", "erin", "frank"]
CITIES = ["paris", "london", "rome", "tokyo", "cairo", "lima"]
SPECIALS = ["<pad>", "<unk>", "<bos>"]
WORDS = ["lives", "in", "."]


def tokenizer() -> transformers.PreTrainedTokenizerFast:
    """A whitespace word-level tokenizer over the toy vocabulary (BOS `<bos>`, pad `<pad>`)."""
    vocab = {word: i for i, word in enumerate(SPECIALS + WORDS + PEOPLE + CITIES)}
    core = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return transformers.PreTrainedTokenizerFast(
        tokenizer_object=core, bos_token="<bos>", pad_token="<pad>", unk_token="<unk>"
    )


def facts() -> list[str]:
    return [f"{person} lives in {city} ." for person, city in zip(PEOPLE, CITIES, strict=True)]


def trained_bridge(steps: int = 80, seed: int = 0) -> Bridge:
    """The toy GPT-2, trained until it knows every fact, wrapped in a bridge with its tokenizer."""
    tok = tokenizer()
    config = transformers.GPT2Config(
        vocab_size=len(tok), n_positions=16, n_embd=64, n_layer=2, n_head=4, n_inner=128,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.bos_token_id, pad_token_id=tok.pad_token_id,
        attn_pdrop=0.0, embd_pdrop=0.0, resid_pdrop=0.0,
    )  # fmt: skip
    batch = torch.tensor([[tok.bos_token_id, *tok.encode(text)] for text in facts()])
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a model this small trains fastest on one thread
    try:
        torch.manual_seed(seed)
        model = transformers.GPT2LMHeadModel(config)
        optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
        model.train()
        for _ in range(steps):
            logits = model(batch).logits[:, :-1]
            loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    finally:
        torch.set_num_threads(threads)
    model.eval()
    return Bridge.from_hf(model, tokenizer=tok)


if __name__ == "__main__":
    # never into the current directory unasked: a temporary one unless DIR is given
    out = sys.argv[1] if len(sys.argv) > 1 else tempfile.mkdtemp(prefix="toy-gpt2-")
    bridge = trained_bridge()
    bridge.model.save_pretrained(out)
    bridge.tokenizer.save_pretrained(out)
    print(f"saved the toy model and its tokenizer to {out}")
