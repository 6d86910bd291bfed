"""Token shards: a language model's tokens, one contiguous array per shard, mapped out of the tar.

A token shard is a WebDataset tar holding one sample, whose members come in this order:

- ``KEY.json``: ``{"format": "fastdata-tokens", "version": 1, "dtype": "uint16"|"uint32",
  "documents": D, "tokens": N, ...}`` plus the writer's metadata (``vocab_size``, ``eod``,
  ``tokenizer``...);
- ``KEY.docs.npy``: int64, length D + 1, the start of each document in the tokens
  (``docs[0] == 0``, ``docs[D] == N``); every document ends with the end-of-document token;
- ``KEY.labels.npy``: int64, length D, one label per document (-1: none); only when given;
- ``KEY.tokens.npy``: the N tokens, 1-D uint16 or uint32, an uncompressed C-order ``.npy``.

NOTE [ Mapped tokens ]
Tar member data starts on a 512-byte boundary and NumPy pads a ``.npy`` header so that
the array starts on a 64-byte boundary from the file's start; the first token thus lies at
a 64-byte aligned byte offset of the tar file (``tokens_offset``, which the index records).
A local shard's tokens are an ``np.memmap`` of the tar at that offset: no copy, pages read
as they are touched and shared by every process that maps the shard. Because the tokens
come last, everything before them (metadata, offsets, labels) is small. Shards on other
URLs (fsspec, ``pipe:``) are read once into memory and the tokens are a view of that copy.
"""

from __future__ import annotations

import io
import json
import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from fastdata.errors import ShardError
from fastdata.shards.shardmap import load_shard
from fastdata.shards.writer import TarShard, check_key

__all__ = ["FORMAT", "VERSION", "TokenShard", "open_token_shard", "write_token_shard"]

FORMAT = "fastdata-tokens"
VERSION = 1
DTYPES = ("uint16", "uint32")
_RESERVED = ("format", "version", "dtype", "documents", "tokens")


def _npy_header(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, np.lib.format.header_data_from_array_1_0(array))
    return buf.getvalue()


def _npy(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    return buf.getvalue()


def _check_arrays(tokens: np.ndarray, docs: np.ndarray, labels: np.ndarray | None) -> str | None:
    """What is wrong with a shard's arrays, or None (shared by the writer and the reader)."""
    if tokens.ndim != 1 or tokens.dtype.name not in DTYPES:
        return f"tokens must be a 1-D uint16 or uint32 array, not {tokens.ndim}-D {tokens.dtype}"
    if docs.ndim != 1 or len(docs) < 1 or docs.dtype.kind not in "iu":
        return f"document offsets must be a 1-D integer array of length documents + 1, not {docs.shape} {docs.dtype}"
    if docs[0] != 0 or docs[-1] != len(tokens):
        return (f"document offsets must run from 0 to the number of tokens ({len(tokens)}), "
                f"they run from {docs[0]} to {docs[-1]}")  # fmt: skip
    if len(docs) > 1 and np.any(np.diff(docs) < 0):
        at = int(np.argmax(np.diff(docs) < 0))
        return f"document offsets must not decrease, offset {at + 1} ({docs[at + 1]}) < offset {at} ({docs[at]})"
    if labels is not None and (labels.ndim != 1 or len(labels) != len(docs) - 1 or labels.dtype.kind not in "iu"):
        return f"labels must be a 1-D integer array of one label per document ({len(docs) - 1}), not {labels.shape} {labels.dtype}"
    return None


def write_token_shard(
    path: str,
    key: str,
    tokens: np.ndarray,
    docs: np.ndarray,
    labels: np.ndarray | None = None,
    meta: dict | None = None,
    tmp_suffix: str = ".tmp",
) -> dict[str, Any]:
    """Writes one token shard (see the module docstring) under a temporary name, then renames it.

    Args:
        path: the shard's path.
        key: the sample key (no dot in its basename).
        tokens: 1-D uint16 or uint32 tokens of every document, one after another.
        docs: int64 start offsets of the documents, length documents + 1.
        labels: one int64 label per document (-1: none), or None for no labels member.
        meta: more fields for ``KEY.json`` (``vocab_size``, ``eod``, ``tokenizer``...).
        tmp_suffix: appended to ``path`` while writing (see ``fastdata.shards.writer.TarShard``).

    Returns:
        The shard's index entry: ``name``, ``count`` (1), ``bytes``, ``sha256``, ``tokens``,
        ``documents``, ``dtype`` and ``tokens_offset`` (NOTE [ Mapped tokens ]).

    Raises:
        ValueError: a bad key, arrays that break the format, or ``meta`` that overrides a
            format field.
    """
    check_key(key)
    tokens, docs = np.asarray(tokens), np.asarray(docs)
    labels = None if labels is None else np.asarray(labels)
    problem = _check_arrays(tokens, docs, labels)
    if problem is not None:
        raise ValueError(f"token shard {path!r}: {problem}")
    meta = dict(meta or {})
    clash = sorted(set(meta) & set(_RESERVED))
    if clash:
        raise ValueError(f"token shard {path!r}: meta must not set the format fields {clash}")
    tokens = np.ascontiguousarray(tokens, dtype=tokens.dtype.newbyteorder("="))
    head = {"format": FORMAT, "version": VERSION, "dtype": tokens.dtype.name,
            "documents": len(docs) - 1, "tokens": len(tokens), **meta}  # fmt: skip
    members = [(f"{key}.json", json.dumps(head).encode("utf-8")),
               (f"{key}.docs.npy", _npy(docs.astype(np.int64)))]  # fmt: skip
    if labels is not None:
        members.append((f"{key}.labels.npy", _npy(labels.astype(np.int64))))
    header = _npy_header(tokens)
    members.append((f"{key}.tokens.npy", header + tokens.tobytes()))
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    shard = TarShard(path, tmp_suffix=tmp_suffix)
    try:
        for name, data in members:
            shard.add_file(name, data)
        offset = shard.size - len(members[-1][1]) - (-len(members[-1][1]) % 512) + len(header)
        shard.count = 1
        info = shard.finish()
    except BaseException:
        shard.abandon()
        raise
    return {**info.to_dict(), "tokens": len(tokens), "documents": len(docs) - 1,
            "dtype": tokens.dtype.name, "tokens_offset": offset}  # fmt: skip


@dataclass
class TokenShard:
    """An opened token shard.

    Attributes:
        url: the shard.
        tokens: the tokens (an ``np.memmap`` of the tar for a local shard).
        docs: int64 start offsets of the documents, length documents + 1.
        labels: one int64 label per document, or None.
        meta: the shard's ``KEY.json``.
    """

    url: str
    tokens: np.ndarray
    docs: np.ndarray
    labels: np.ndarray | None
    meta: dict = field(default_factory=dict)

    @property
    def num_documents(self) -> int:
        return len(self.docs) - 1

    def document(self, i: int) -> np.ndarray:
        """The tokens of document ``i`` (its end-of-document token included)."""
        return self.tokens[self.docs[i] : self.docs[i + 1]]


def open_token_shard(url: str, tokens_offset: int | None = None) -> TokenShard:
    """Opens a token shard: metadata, offsets and labels read, tokens mapped (NOTE [ Mapped tokens ]).

    Args:
        url: a local path, ``file:``, fsspec URL or ``pipe:`` command.
        tokens_offset: where the index says the tokens start; checked against the shard.

    Raises:
        ShardError: the shard cannot be read, is not a token shard of a known version, or
            its parts disagree; the error names the shard and what is wrong.
    """
    smap = load_shard(url)
    if smap.error is not None:
        raise smap.error
    if smap.n != 1:
        raise ShardError(url, f"a token shard holds exactly one sample, this one holds {smap.n}")
    key = smap.key(0)
    meta = _read_meta(url, key, smap.view("json", 0))
    docs = _read_npy(url, key, "docs.npy", smap.view("docs.npy", 0))
    raw_labels = smap.view("labels.npy", 0)
    labels = None if raw_labels is None else _read_npy(url, key, "labels.npy", raw_labels)
    start, dtype, count = _tokens_place(url, key, smap)
    if dtype.name != meta["dtype"]:
        raise ShardError(url, f"the tokens are {dtype.name} but the metadata says {meta['dtype']}", key)
    if tokens_offset is not None and tokens_offset != start:
        raise ShardError(url, f"the tokens start at byte {start}, the index says {tokens_offset} "
                         "(a shard rewritten after its index? run fastdata index again)", key)  # fmt: skip
    tokens = _map_tokens(url, smap.data, start, dtype, count)
    problem = _check_arrays(tokens, docs, labels)
    if problem is None and (meta.get("tokens") != count or meta.get("documents") != len(docs) - 1):
        problem = (f"the metadata says {meta.get('tokens')} tokens in {meta.get('documents')} documents, "
                   f"the shard holds {count} tokens in {len(docs) - 1}")  # fmt: skip
    if problem is not None:
        raise ShardError(url, problem, key)
    return TokenShard(url, tokens, docs, labels, meta)


def _read_meta(url: str, key: str, raw: memoryview | None) -> dict:
    if raw is None:
        raise ShardError(url, "not a token shard: no .json member", key)
    try:
        meta = json.loads(bytes(raw))
    except ValueError as exc:
        raise ShardError(url, f"the .json member is not JSON: {exc}", key) from exc
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise ShardError(url, f"not a token shard: the .json member has no \"format\": {FORMAT!r}", key)
    if meta.get("version") != VERSION:
        raise ShardError(url, f"token shard version {meta.get('version')!r}; this fastdata reads version "
                         f"{VERSION} (upgrade fastdata)", key)  # fmt: skip
    if meta.get("dtype") not in DTYPES:
        raise ShardError(url, f"token dtype {meta.get('dtype')!r}; expected one of {DTYPES}", key)
    return meta


def _read_npy(url: str, key: str, ext: str, raw: memoryview | None) -> np.ndarray:
    if raw is None:
        raise ShardError(url, f"not a token shard: no .{ext} member", key)
    try:
        return np.load(io.BytesIO(bytes(raw)), allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise ShardError(url, f"the .{ext} member is not a valid .npy array: {exc}", key) from exc


def _tokens_place(url: str, key: str, smap) -> tuple[int, np.dtype, int]:
    """The byte offset, dtype and count of the tokens, from the ``.tokens.npy`` header."""
    offsets, sizes = smap.fields.get("tokens.npy", (None, None))
    if offsets is None or offsets[0] < 0:
        raise ShardError(url, "not a token shard: no .tokens.npy member", key)
    lo, size = int(offsets[0]), int(sizes[0])
    stream = io.BytesIO(bytes(smap.data[lo : lo + min(size, 65536)]))
    try:
        version = np.lib.format.read_magic(stream)
        if version != (1, 0):
            raise ValueError(f".npy format version {version}; token shards use 1.0")
        shape, fortran, dtype = np.lib.format.read_array_header_1_0(stream)
    except ValueError as exc:
        raise ShardError(url, f"the .tokens.npy member has a bad header: {exc}", key) from exc
    header = stream.tell()
    if len(shape) != 1 or fortran or dtype.name not in DTYPES or not dtype.isnative:
        raise ShardError(url, f"the tokens must be a 1-D C-order native uint16/uint32 array, not "
                         f"shape {shape} {dtype.str} fortran={fortran}", key)  # fmt: skip
    if header + shape[0] * dtype.itemsize != size:
        raise ShardError(url, f"the .tokens.npy member holds {size - header} bytes of data, "
                         f"its header says {shape[0]} {dtype.name} tokens (altered or truncated?)", key)  # fmt: skip
    return lo + header, dtype, shape[0]


def _map_tokens(url: str, data: np.ndarray, start: int, dtype: np.dtype, count: int) -> np.ndarray:
    path = url[len("file:") :].removeprefix("//") if url.startswith("file:") else url
    if "://" in path or path.startswith("pipe:"):
        return data[start : start + count * dtype.itemsize].view(dtype)
    if count == 0:
        return np.empty(0, dtype)
    try:
        return np.memmap(path, dtype=dtype, mode="r", offset=start, shape=(count,))
    except (OSError, ValueError) as exc:
        raise ShardError(url, f"cannot map the tokens: {exc}") from exc


def is_token_meta(data: bytes) -> bool:
    """Whether a ``.json`` member's bytes declare a token shard (a cheap test before parsing)."""
    if FORMAT.encode() not in data[:256]:
        return False
    try:
        return json.loads(data).get("format") == FORMAT
    except (ValueError, AttributeError):
        return False


def token_shard_problems(url: str, entry: dict | None = None) -> list[str]:
    """What is wrong with a token shard (``fastdata verify``): its format, each document's
    end-of-document token, labels, token ids within the vocabulary, and the index entry.

    Args:
        url: the shard.
        entry: the shard's index entry, or None when there is no index.
    """
    try:
        shard = open_token_shard(url)
    except ShardError as exc:
        return [exc.message]
    problems = []
    meta, tokens, docs = shard.meta, shard.tokens, shard.docs
    if np.any(np.diff(docs) == 0):
        problems.append(f"document {int(np.argmax(np.diff(docs) == 0))} is empty (every document ends "
                        "with the end-of-document token)")  # fmt: skip
    eod = meta.get("eod")
    if isinstance(eod, int) and len(docs) > 1 and len(tokens):
        ends = tokens[np.maximum(docs[1:] - 1, 0)]
        bad = np.flatnonzero((ends != eod) & (np.diff(docs) > 0))
        if len(bad):
            problems.append(f"document {int(bad[0])} does not end with the end-of-document token {eod} "
                            f"({len(bad)} such documents)")  # fmt: skip
    vocab = meta.get("vocab_size")
    if isinstance(vocab, int) and len(tokens) and int(tokens.max()) >= vocab:
        problems.append(f"token id {int(tokens.max())} is not below the vocabulary size {vocab}")
    if shard.labels is not None and len(shard.labels) and int(shard.labels.min()) < -1:
        problems.append(f"label {int(shard.labels.min())}: labels are >= 0, or -1 for none")
    if entry is not None:
        start = _tokens_place(url, "", load_shard(url))[0]
        found = {"tokens": len(tokens), "documents": len(docs) - 1, "dtype": tokens.dtype.name,
                 "tokens_offset": start}  # fmt: skip
        for name, actual in found.items():
            if name in entry and entry[name] != actual:
                problems.append(f"{name} is {actual}, the index says {entry[name]}")
    return problems
