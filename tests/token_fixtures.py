"""Tiny tokenizers made on the spot, for the token tests and the tokenizing benchmark."""

from __future__ import annotations

import base64
import os

SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "Pack my box with five dozen liquor jugs.",
    "Grüße aus Köln: naïve café, déjà vu — 東京 and emoji 🙂.",
    "the theory of the thing is that there is another thing",
]


def train_bpe(folder: str, vocab_size: int = 320, special: str | None = "<|endoftext|>",
              texts: list[str] | None = None) -> str:
    """Trains a byte-level BPE with the ``tokenizers`` library; returns its tokenizer.json path."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[special] if special else [],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator((texts or SENTENCES) * 4, trainer)
    path = os.path.join(folder, "tokenizer.json")
    tok.save(path)
    return path


def write_tiktoken(folder: str) -> str:
    """A tiny tiktoken BPE file: the 256 bytes plus a few merges."""
    ranks = {bytes([i]): i for i in range(256)}
    for merge in (b"th", b"he", b"the", b" t", b" the", b"in", b"ing"):
        ranks[merge] = len(ranks)
    path = os.path.join(folder, "tiny.tiktoken")
    with open(path, "w") as f:
        f.writelines(f"{base64.b64encode(k).decode()} {v}\n" for k, v in ranks.items())
    return path
