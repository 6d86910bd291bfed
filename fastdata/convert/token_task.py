"""Token shard tasks: the plan (which documents go into which shard) and one task's work.

NOTE [ Planning token shards ]
As for images (NOTE [ Shard tasks ] in ``fastdata.convert.plan``), the plan is fixed
before any work, from what is known without tokenizing: each document's byte size. The
driver measures the tokenizer's bytes per token once on a sample of documents spread
evenly over the order (``bytes_per_token``; exactly 1 for ``bytes``, whose tokens are the
UTF-8 bytes) and reckons a document at ``ceil(bytes / bytes_per_token) + 1`` tokens (the
``+ 1`` is its end-of-document token). Shards are cut before the document that would
bring the reckoned count past ``--tokens-per-shard`` (or the bytes past ``--maxsize``).
So ``--tokens-per-shard`` is exact for ``bytes`` and a close target for a BPE: a shard
holds about that many tokens, a little more or less as its documents tokenize more or
less densely than the sample. Every task then tokenizes its own documents and writes its
shard; the plan, and so the output, depends only on the source and the options, never on
the engine or the number of workers. A single document whose tokens exceed
``--tokens-per-shard`` is an error (checked exactly, after tokenizing).

Documents left out leave their shard smaller: empty documents (always, listed as skipped
with the reason ``empty document``) and, with ``--drop-corrupt``, documents that cannot
be read or are not UTF-8. Duplicates (``--dedupe``) are found by the driver before the
plan, from the documents' bytes, and are not planned at all.
"""

from __future__ import annotations

import functools
import math
import os
import uuid
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from fastdata.convert.sources import Item
from fastdata.convert.task import TaskSettings, whole_part, write_part
from fastdata.convert.tokenizers import Tokenizer, load_tokenizer
from fastdata.errors import SourceError
from fastdata.shards.tokens import write_token_shard

EMPTY = "empty document"


@dataclass(frozen=True)
class TokenTask:
    """One token shard to write: its number, documents and where they came from."""

    number: int
    start: int
    items: tuple[Item, ...]
    origins: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.items)


@dataclass(frozen=True)
class TokenSettings(TaskSettings):
    """What every token task shares (``TaskSettings``, whose ``prepare`` is unused, plus these).

    Attributes:
        tokenizer: the ``--tokenize`` spec; each process loads it once.
        dtype: ``"uint16"`` or ``"uint32"``.
        tokens_per_shard: the most tokens of one document (and the shards' target).
        labels: whether shards carry a labels member.
        meta: the fields added to each shard's ``.json`` (tokenizer name, vocab_size, eod, pad).
    """

    tokenizer: str = "bytes"
    dtype: str = "uint16"
    tokens_per_shard: int = 1 << 24
    labels: bool = False
    meta: dict[str, Any] = field(default_factory=dict)


def reckoned_tokens(size: int, bytes_per_token: float) -> int:
    """A document's planned token count (NOTE [ Planning token shards ])."""
    return math.ceil(size / bytes_per_token) + 1


def cut_token_shards(sizes: list[int], bytes_per_token: float, tokens_per_shard: int, max_tokens: float) -> list[int]:
    """The positions where each shard starts, for documents of ``sizes`` bytes in order.

    Args:
        max_tokens: the tokens ``--maxsize`` allows (its bytes over the token size).
    """
    limit = min(tokens_per_shard, max_tokens)
    starts, total = [0], 0
    for pos, size in enumerate(sizes):
        n = reckoned_tokens(size, bytes_per_token)
        if total and total + n > limit:
            starts.append(pos)
            total = 0
        total += n
    return starts


def make_token_tasks(source, order: list[int], starts: list[int]) -> list[TokenTask]:
    """The tasks for the cut points; ``order`` lists the source items to write, in order."""
    ends = starts[1:] + [len(order)]
    tasks = []
    for number, (start, end) in enumerate(zip(starts, ends, strict=True)):
        items = tuple(source.items[order[pos]] for pos in range(start, end))
        tasks.append(TokenTask(number, start, items, tuple(source.origin(item) for item in items)))
    return tasks


@functools.lru_cache(maxsize=4)
def cached_tokenizer(spec: str) -> Tokenizer:
    """The tokenizer of ``spec``, loaded once per process."""
    return load_tokenizer(spec)


def read_text(source, item: Item, origin: str) -> tuple[str | None, str | None]:
    """A document's text, or why it cannot be used: ``(text, None)`` or ``(None, reason)``."""
    try:
        data = source.read(item)
    except SourceError as exc:
        return None, exc.message
    except OSError as exc:
        return None, f"cannot read: {exc.strerror or exc}"
    try:
        return data.decode("utf-8"), None
    except UnicodeDecodeError as exc:
        return None, f"not valid UTF-8 text (byte {exc.start}: {exc.reason})"


def run_token_task(source, task: TokenTask, settings: TokenSettings) -> tuple[dict[str, Any], bool]:
    """Tokenizes one task's documents and writes its shard and part; returns the part, and
    whether an earlier run had written it whole (and so it was reused).

    Raises:
        SourceError: a document cannot be read or is not UTF-8 (without ``drop_corrupt``),
            or has more tokens than ``tokens_per_shard``; the error names its file or line.
    """
    part = whole_part(task, settings)
    if part is not None:
        return part, True
    tok = cached_tokenizer(settings.tokenizer)
    texts, kept, skipped = [], [], []
    for offset, item in enumerate(task.items):
        origin = task.origins[offset]
        text, reason = read_text(source, item, origin)
        if reason is not None and not settings.drop_corrupt:
            raise SourceError(origin, f"{reason} (use --drop-corrupt to skip such documents)")
        if reason is None and not text.strip():
            reason = EMPTY
        if reason is not None:
            skipped.append({"pos": task.start + offset, "key": item.key, "source": origin, "reason": reason})
            continue
        texts.append(text)
        kept.append(offset)
    tokens, docs = _pack(tok.encode_arrays(texts), [task.origins[o] for o in kept], tok.eod, settings)
    labels = None
    if settings.labels:
        labels = np.array([-1 if task.items[o].label is None else task.items[o].label for o in kept], np.int64)
    path = settings.shard_path(task.number)
    key = os.path.basename(path).removesuffix(".tar").replace(".", "_")
    entry = write_token_shard(path, key, tokens, docs, labels, settings.meta, tmp_suffix=f".tmp-{uuid.uuid4().hex[:12]}")
    part = {"fingerprint": settings.fingerprint, "number": task.number, "start": task.start,
            "planned": len(task), "shard": entry, "skipped": skipped}  # fmt: skip
    write_part(settings, part)
    return part, False


def _pack(arrays: list[np.ndarray], origins: list[str], eod: int, settings: TokenSettings) -> tuple[np.ndarray, np.ndarray]:
    """The documents' ids one after another, each followed by ``eod``, and their offsets."""
    lengths = np.array([len(a) + 1 for a in arrays], np.int64)
    too_long = np.flatnonzero(lengths > settings.tokens_per_shard)
    if len(too_long):
        n = int(lengths[too_long[0]])
        raise SourceError(origins[too_long[0]], f"the document has {n} tokens (with its end-of-document token), "
                          f"more than a shard holds (--tokens-per-shard {settings.tokens_per_shard}); "
                          f"give a larger --tokens-per-shard, e.g. {1 << max(n - 1, 1).bit_length()}")  # fmt: skip
    docs = np.zeros(len(arrays) + 1, np.int64)
    np.cumsum(lengths, out=docs[1:])
    tokens = np.empty(int(docs[-1]), settings.dtype)
    for i, ids in enumerate(arrays):
        tokens[docs[i] : docs[i + 1] - 1] = ids
        tokens[docs[i + 1] - 1] = eod
    return tokens, docs
