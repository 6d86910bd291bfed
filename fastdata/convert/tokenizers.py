"""Tokenizers for ``fastdata convert --tokenize``: built-in bytes, Hugging Face, tiktoken.

``load_tokenizer(spec)`` takes:

- ``"bytes"``: the built-in byte-level tokenizer: ids 0..255 are the UTF-8 bytes of the
  text, 256 is the end of a document, 257 padding (vocabulary 258); needs no file;
- the path of a Hugging Face ``tokenizer.json`` (the ``tokenizers`` library);
- the path of a tiktoken BPE file (``*.tiktoken``: lines ``base64token rank``), made into
  a ``tiktoken.Encoding`` with the cl100k split pattern.

The libraries are imported only when such a file is given (``pip install 'fastdata[text]'``).
Documents are encoded without the special tokens a tokenizer's post-processor would add
(``[CLS]``...): each document's ids are its text's, and the converter appends ``eod``.

NOTE [ End of document ]
A Hugging Face tokenizer's end-of-document id is its first special token among
``<|endoftext|>``, ``</s>``, ``[SEP]`` and ``<eos>``; a tokenizer without one gets a new
id, its vocabulary size, and the vocabulary grows by one. A tiktoken file's ranks get
``<|endoftext|>`` after the largest rank. Padding is a ``<pad>``/``[PAD]``/``<|pad|>``
token where there is one, else the end-of-document id (as GPT-2 pads), except for
``bytes``, which has its own.
"""

from __future__ import annotations

import hashlib
import os
import re

import numpy as np

from fastdata.errors import SourceError

__all__ = ["ByteTokenizer", "Tokenizer", "load_tokenizer"]

KINDS = ("'bytes' (built in)", "a Hugging Face tokenizer.json", "a tiktoken BPE file (*.tiktoken)")
INSTALL = "pip install 'fastdata[text]'"
_EOD_NAMES = ("<|endoftext|>", "</s>", "[SEP]", "<eos>")
_PAD_NAMES = ("<pad>", "[PAD]", "<|pad|>")
# The pre-tokenizer split pattern of tiktoken's cl100k_base encoding.
CL100K_PATTERN = (r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}+| ?[^\s\p{L}\p{N}]++[\r\n]*+"""
                  r"""|\s++$|\s*[\r\n]|\s+(?!\S)|\s""")  # fmt: skip
_TIKTOKEN_LINE = re.compile(rb"^[A-Za-z0-9+/]+=*\s+\d+\s*$")


class Tokenizer:
    """What the converter needs of a tokenizer.

    Attributes:
        name: a short description (``"bytes"``, ``"huggingface:tokenizer.json"``...).
        vocab_size: one more than the largest id it produces (``eod`` included).
        eod: the end-of-document id (NOTE [ End of document ]).
        pad: the padding id.
        digest: SHA-256 of the tokenizer file (``"bytes"`` for the built-in one), so that a
            changed file is a different conversion.
    """

    name: str
    vocab_size: int
    eod: int
    pad: int
    digest: str

    def encode(self, text: str) -> list[int]:
        """The ids of ``text`` (no special tokens added)."""
        raise NotImplementedError

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        """The ids of each text; the library's batch encoder where it has one."""
        return [self.encode(t) for t in texts]

    def encode_arrays(self, texts: list[str]) -> list[np.ndarray]:
        """The ids of each text as int64 arrays."""
        return [np.asarray(ids, dtype=np.int64) for ids in self.encode_batch(texts)]

    def decode(self, ids) -> str:
        """The text of ``ids`` (``eod`` and ``pad`` left out)."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name} vocab_size={self.vocab_size} eod={self.eod}>"


class ByteTokenizer(Tokenizer):
    """UTF-8 bytes as ids 0..255; 256 ends a document, 257 pads."""

    name, vocab_size, eod, pad, digest = "bytes", 258, 256, 257, "bytes"

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def encode_arrays(self, texts: list[str]) -> list[np.ndarray]:
        return [np.frombuffer(t.encode("utf-8"), np.uint8).astype(np.int64) for t in texts]

    def decode(self, ids) -> str:
        return bytes(int(i) for i in ids if 0 <= int(i) < 256).decode("utf-8", errors="replace")


class HuggingFaceTokenizer(Tokenizer):
    """A ``tokenizer.json`` of the Hugging Face ``tokenizers`` library."""

    def __init__(self, path: str, digest: str) -> None:
        tokenizers = _import("tokenizers", path)
        try:
            self._tok = tokenizers.Tokenizer.from_file(path)
        except Exception as exc:  # the library raises a bare Exception for a bad file
            raise SourceError(path, f"not a valid Hugging Face tokenizer.json ({exc}); {_accepted()}") from exc
        self.name, self.digest = f"huggingface:{os.path.basename(path)}", digest
        size = self._tok.get_vocab_size(with_added_tokens=True)
        eod = _first_id(self._tok, _EOD_NAMES)
        self.eod = size if eod is None else eod
        self.vocab_size = max(size, self.eod + 1)
        pad = _first_id(self._tok, _PAD_NAMES)
        self.pad = self.eod if pad is None else pad
        self._fast = getattr(self._tok, "encode_batch_fast", self._tok.encode_batch)

    def encode(self, text: str) -> list[int]:
        return self._tok.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [e.ids for e in self._fast(texts, add_special_tokens=False)]

    def decode(self, ids) -> str:
        return self._tok.decode([int(i) for i in ids if int(i) not in (self.eod, self.pad)])


def _first_id(tok, names: tuple[str, ...]) -> int | None:
    for name in names:
        found = tok.token_to_id(name)
        if found is not None:
            return found
    return None


class TiktokenTokenizer(Tokenizer):
    """A tiktoken BPE file (``base64token rank`` lines) with the cl100k split pattern.

    NOTE [ tiktoken's file cache ]
    ``load_tiktoken_bpe`` keeps a copy of each file it reads in a cache folder, keyed by the
    file's *path*; given the file's hash it checks the copy and reads the file again when
    they differ, so a file rewritten under the same path is never read stale.
    """

    def __init__(self, path: str, digest: str) -> None:
        tiktoken = _import("tiktoken", path)
        from tiktoken.load import load_tiktoken_bpe

        try:
            ranks = load_tiktoken_bpe(path, expected_hash=digest)
        except (ValueError, OSError) as exc:
            raise SourceError(path, f"not a valid tiktoken BPE file ({exc}); {_accepted()}") from exc
        if not ranks:
            raise SourceError(path, f"the tiktoken BPE file has no tokens; {_accepted()}")
        self.name, self.digest = f"tiktoken:{os.path.basename(path)}", digest
        self.eod = self.pad = max(ranks.values()) + 1
        self.vocab_size = self.eod + 1
        self._enc = tiktoken.Encoding(name=self.name, pat_str=CL100K_PATTERN, mergeable_ranks=ranks,
                                      special_tokens={"<|endoftext|>": self.eod})  # fmt: skip

    def encode(self, text: str) -> list[int]:
        return self._enc.encode_ordinary(text)

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return self._enc.encode_ordinary_batch(texts)

    def decode(self, ids) -> str:
        return self._enc.decode([int(i) for i in ids if int(i) != self.eod])


def load_tokenizer(spec: str) -> Tokenizer:
    """The tokenizer named by ``spec``: ``"bytes"``, a ``tokenizer.json`` or a ``*.tiktoken`` file.

    Raises:
        SourceError: the file is missing, unreadable or of another kind (the message says
            which kinds are accepted), or the library it needs is not installed.
    """
    if spec == "bytes":
        return ByteTokenizer()
    if not os.path.exists(spec):
        raise SourceError(spec, f"no such tokenizer file; {_accepted()}")
    if os.path.isdir(spec):
        inner = os.path.join(spec, "tokenizer.json")
        if not os.path.isfile(inner):
            raise SourceError(spec, f"a folder without a tokenizer.json; {_accepted()}")
        spec = inner
    try:
        with open(spec, "rb") as f:
            data = f.read()
    except OSError as exc:
        raise SourceError(spec, f"cannot read the tokenizer file: {exc.strerror or exc}") from exc
    digest = hashlib.sha256(data).hexdigest()
    if data.lstrip()[:1] == b"{":
        return HuggingFaceTokenizer(spec, digest)
    first = data.split(b"\n", 1)[0]
    if _TIKTOKEN_LINE.match(first):
        return TiktokenTokenizer(spec, digest)
    raise SourceError(spec, f"not a tokenizer file of a known kind; {_accepted()}")


def _accepted() -> str:
    return "--tokenize accepts " + ", ".join(KINDS)


def _import(module: str, path: str):
    try:
        return __import__(module)
    except ImportError as exc:
        raise SourceError(path, f"reading this tokenizer needs the {module} library, which is not "
                          f"installed: {INSTALL}") from exc  # fmt: skip
