"""The token shards under ``TokenDataset``: their sizes, a cache of opened shards, and the gather.

``TokenSource(urls, index)`` knows every shard's token and document counts before opening
any: from the index (``fastdata convert --tokenize`` writes one beside the shards), or, for
local shards without one, from each shard's small ``KEY.json`` member (its tokens are not
read). Remote shards without an index are refused: their counts would need a download.

Shards are opened (``fastdata.shards.tokens.open_token_shard``: local tokens memory-mapped
straight out of the tar) on first use and kept in a small least-recently-used cache, so a
map is dropped once the epoch has moved past its shard. ``gather`` copies *pieces* (a run
of one shard's tokens into a row of the batch) with one compiled call per shard touched,
marking where documents start.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import numpy as np
from numba import njit

from fastdata.errors import FastdataError, ShardError
from fastdata.shards.index import find_index, read_index
from fastdata.shards.tokens import TokenShard, open_token_shard
from fastdata.shards.urls import open_url

__all__ = ["TokenSource"]

_NO_INDEX = (
    "{what}: token shards on remote URLs need their index for their token and document "
    "counts; `fastdata convert --tokenize` writes one beside the shards (`fastdata index SHARDS "
    "-o shards.index.json` makes one for existing shards): pass index=<its path or URL>"
)


class TokenSource:
    """Token shards, their counts and a cache of opened shards.

    Args:
        urls: the shard URLs, in dataset order.
        index: path or URL of their index (default: the one beside local shards).
        cache: opened shards kept at once.

    Attributes:
        tokens: int64 tokens per shard.
        documents: int64 documents per shard.
        meta: dataset-level fields of the index (``vocab_size``, ``eod``, ``labels``...) or
            of the first shard's metadata.

    Raises:
        FastdataError: remote shards without an index, or an index that lacks a shard.
    """

    def __init__(self, urls: Sequence[str], index: str | None = None, cache: int = 16) -> None:
        self.urls = list(urls)
        self._offsets: list[int | None] = [None] * len(self.urls)
        self._cache: OrderedDict[int, TokenShard] = OrderedDict()
        self._size = max(1, int(cache))
        self._lock = threading.Lock()
        path = index or find_index(self.urls)
        if path is not None:
            self._from_index(path)
        elif any("://" in u or u.startswith("pipe:") for u in self.urls):
            raise FastdataError(_NO_INDEX.format(what=self.urls[0]))
        else:
            self._from_shards()
        self.token_starts = np.zeros(len(self.urls) + 1, np.int64)
        np.cumsum(self.tokens, out=self.token_starts[1:])

    def _from_index(self, path: str) -> None:
        body = _remote_json(path) if "://" in path else read_index(path)
        by_name = {s.get("name"): s for s in body.get("shards", [])}
        entries = []
        for url in self.urls:
            entry = by_name.get(url.rsplit("/", 1)[-1])
            if entry is None or "tokens" not in entry or "documents" not in entry:
                raise FastdataError(
                    f"{path}: the index has no token counts for {url} (an index of other shards, "
                    "or written before `--tokenize`?); " + _NO_INDEX.format(what="rewrite it")
                )
            entries.append(entry)
        self.tokens = np.array([int(e["tokens"]) for e in entries], np.int64)
        self.documents = np.array([int(e["documents"]) for e in entries], np.int64)
        self._offsets = [e.get("tokens_offset") for e in entries]
        self.meta = {k: v for k, v in body.items() if k not in ("shards", "format", "version")}

    def _from_shards(self) -> None:
        shards = [open_token_shard(url) for url in self.urls]  # maps only: no token is read
        self.tokens = np.array([len(s.tokens) for s in shards], np.int64)
        self.documents = np.array([s.num_documents for s in shards], np.int64)
        self.meta = dict(shards[0].meta) if shards else {}

    def shard(self, i: int) -> TokenShard:
        """Shard ``i``, opened (or from the cache)."""
        with self._lock:
            shard = self._cache.get(i)
            if shard is not None:
                self._cache.move_to_end(i)
                return shard
        shard = open_token_shard(self.urls[i], self._offsets[i])
        if len(shard.tokens) != self.tokens[i] or shard.num_documents != self.documents[i]:
            raise ShardError(self.urls[i], f"the shard holds {len(shard.tokens)} tokens in {shard.num_documents} "
                             f"documents, the index says {self.tokens[i]} in {self.documents[i]} "
                             "(rewritten after its index? run the indexing again)")  # fmt: skip
        with self._lock:
            self._cache[i] = shard
            while len(self._cache) > self._size:
                self._cache.popitem(last=False)
        return shard

    def clear(self) -> None:
        """Drops every opened shard (their maps close when no batch refers to them)."""
        with self._lock:
            self._cache.clear()

    def gather(self, shard: np.ndarray, row: np.ndarray, lo: np.ndarray, n: np.ndarray, at: np.ndarray,
               window: np.ndarray, starts: np.ndarray, force: bool) -> None:  # fmt: skip
        """Copies pieces into rows and marks document starts.

        Piece ``p`` is tokens ``lo[p] : lo[p] + n[p]`` of shard ``shard[p]``, copied to
        ``window[row[p], at[p]:]``; every document start inside it is marked in ``starts``
        (and its first position too when ``force``: a piece that begins a segment).
        """
        order = np.argsort(shard, kind="stable")
        cuts = np.flatnonzero(np.diff(shard[order])) + 1
        for group in np.split(order, cuts):
            if len(group) == 0:
                continue
            s = self.shard(int(shard[group[0]]))
            _copy_pieces(s.tokens, s.docs, row[group], lo[group], n[group], at[group], window, starts, force)


@njit(nogil=True, cache=True)
def _copy_pieces(tokens, docs, rows, lo, n, at, window, starts, force):
    for p in range(len(rows)):
        r, a, k, dst = rows[p], lo[p], n[p], at[p]
        for j in range(k):
            window[r, dst + j] = tokens[a + j]
        if force:
            starts[r, dst] = True
        d = np.searchsorted(docs, a)
        while d < len(docs) - 1 and docs[d] < a + k:
            starts[r, dst + docs[d] - a] = True
            d += 1


def _remote_json(url: str) -> dict[str, Any]:
    import json

    with open_url(url) as f:
        body = json.load(f)
    if not isinstance(body, dict) or not isinstance(body.get("shards"), list):
        raise FastdataError(f"{url}: not a fastdata index (no list of shards)")
    return body
