"""Documents into fixed-length rows of tokens: the three packing modes of ``TokenDataset``.

Pure functions of token counts and document offsets (``offsets[d]:offsets[d + 1]`` are
document ``d``'s tokens, every document ending with the end-of-document token); nothing
here reads a shard. A row of sequence length ``T`` is a window of ``T + 1`` tokens:
inputs are its first ``T``, targets its last ``T`` (the inputs shifted by one).

- **concat** (pretraining): the dataset's token stream (shards in list order, documents
  in order) cut into ``concat_rows(total, T) = (total - 1) // T`` rows; row ``r`` is the
  window ``stream[r*T : r*T + T + 1]``, so every token is an input once per epoch but
  for the final tail of fewer than ``T`` tokens. Rows cross documents (and shards).
- **aligned** (document-aligned): documents cut into pieces of at most ``T + 1`` tokens
  (``split_documents``), packed into rows by best fit decreasing (``pack_documents``),
  every row starting at a piece, padding at the row's end. No target crosses from one
  piece into the next.
- **padded**: one document per row, truncated to ``T + 1`` tokens (``T`` inputs).

``fill_rows`` turns rows of raw tokens (with the positions where their documents start)
into the model's arrays: inputs, targets (``IGNORE`` where there is none), ``position_ids``
restarting at 0 at every document start, ``segment_ids`` (the document's number within
its row, -1 on padding) and ``cu_seqlens`` (FlashAttention's varlen offsets of the
segments in the flattened ``(B*T)`` batch).

NOTE [ Best fit decreasing and its waste ]
Pieces of a window (a shard's documents, or a fixed count of them) are taken longest
first (ties in document order) and each goes into the row with the least room left that
still fits it, or opens a new row: best fit decreasing, deterministic, O(pieces * T) at
worst in a compiled loop. Bound: when row ``i + 1`` was opened by its first piece ``x``,
``x`` fitted no earlier row, so row ``i`` already had fewer than ``x`` free slots; rows
only fill up, and later pieces are no longer than ``x``. Hence *row ``i`` wastes fewer
tokens than the first (longest) piece of row ``i + 1``*, and a window's padding is below
``(T + 1) + sum(first piece of every row but the first)``. When documents are short next
to ``T`` (the usual case) that is a few per cent; the worst case, every piece just over
half a row, wastes almost half. The literature bound for the row count (Johnson 1973,
``11/9 * optimal + 4`` for best and first fit decreasing) says the same in other terms.
``tests/test_token_packing.py`` checks the per-row bound on random length distributions
and measures the waste (under 1 % for log-normal lengths of mean ``T / 8`` per window of
1,000 documents).

NOTE [ Pieces overlap by one token ]
A document longer than a row is cut into pieces ``[k*T, k*T + T + 1)``: consecutive
pieces share one token, the last target of one piece being the first input of the next,
so every within-document (input, target) pair is trained exactly once per epoch and no
pair is lost at a cut.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numba import njit

__all__ = [
    "IGNORE",
    "Packing",
    "best_fit_decreasing",
    "concat_rows",
    "fill_rows",
    "pack_documents",
    "split_documents",
]

IGNORE = -100  # torch's cross_entropy ignore_index: a position without a target


def concat_rows(total_tokens: int, seq_len: int) -> int:
    """Rows of ``seq_len`` inputs (and one more token for the last target) in ``total_tokens``."""
    return max(0, (int(total_tokens) - 1) // int(seq_len))


def split_documents(offsets: np.ndarray, seq_len: int) -> tuple[np.ndarray, np.ndarray]:
    """Documents cut into pieces of at most ``seq_len + 1`` tokens (NOTE [ Pieces overlap by one token ]).

    Args:
        offsets: int64 document offsets, ``D + 1`` non-decreasing values.
        seq_len: ``T``.

    Returns:
        ``(lo, length)``: int64 token offset and length of every piece, documents in
        order, empty documents left out.
    """
    offsets = np.asarray(offsets, np.int64)
    lengths = np.diff(offsets)
    pieces = np.where(lengths <= 0, 0, np.maximum(1, -(-(lengths - 1) // seq_len)))
    doc = np.repeat(np.arange(len(lengths), dtype=np.int64), pieces)
    k = np.arange(len(doc), dtype=np.int64) - np.repeat(np.cumsum(pieces) - pieces, pieces)
    lo = offsets[:-1][doc] + k * seq_len
    hi = np.minimum(lo + seq_len + 1, offsets[1:][doc])
    return lo, hi - lo


def best_fit_decreasing(lengths: np.ndarray, capacity: int) -> np.ndarray:
    """The row of every item, packed by best fit decreasing (NOTE [ Best fit decreasing and its waste ]).

    Args:
        lengths: int64 item sizes, each in ``[1, capacity]``.
        capacity: room in a row.

    Returns:
        int64 row number per item; rows are numbered in the order they were opened.

    Raises:
        ValueError: an item does not fit in a row.
    """
    lengths = np.asarray(lengths, np.int64)
    if len(lengths) and (lengths.min() < 1 or lengths.max() > capacity):
        raise ValueError(f"items must have sizes in [1, {capacity}], got {lengths.min()}..{lengths.max()}")
    order = np.argsort(-lengths, kind="stable")
    rows = np.empty(len(lengths), np.int64)
    _best_fit(lengths[order], int(capacity), rows)
    out = np.empty(len(lengths), np.int64)
    out[order] = rows
    return out


@njit(nogil=True, cache=True)
def _best_fit(sizes, capacity, rows):
    # Rows by free room: head[c] is a stack (linked through nxt) of the rows with c free.
    head = np.full(capacity + 1, -1, np.int64)
    nxt = np.empty(len(sizes), np.int64)
    opened = 0
    for i in range(len(sizes)):
        size = sizes[i]
        room = size
        while room <= capacity and head[room] < 0:
            room += 1
        if room > capacity:
            row, left = opened, capacity - size
            opened += 1
        else:
            row = head[room]
            head[room] = nxt[row]
            left = room - size
        nxt[row] = head[left]
        head[left] = row
        rows[i] = row
    return opened


@dataclass(frozen=True)
class Packing:
    """Rows of document pieces (the aligned mode of one shard).

    Attributes:
        row_starts: int64, ``rows + 1`` offsets: row ``r`` holds pieces ``row_starts[r]:row_starts[r + 1]``.
        lo: int64 token offset (within the shard) of every piece, row by row.
        length: int64 token count of every piece.
    """

    row_starts: np.ndarray
    lo: np.ndarray
    length: np.ndarray

    @property
    def rows(self) -> int:
        """Number of rows."""
        return len(self.row_starts) - 1

    def padding(self, seq_len: int) -> int:
        """Slots of the rows' ``T + 1`` left empty."""
        return self.rows * (seq_len + 1) - int(self.length.sum())


def pack_documents(offsets: np.ndarray, seq_len: int, window: int | None = None) -> Packing:
    """Document pieces packed into rows of ``seq_len + 1`` tokens, window by window.

    Args:
        offsets: int64 document offsets of one shard, ``D + 1`` values.
        seq_len: ``T``.
        window: documents packed together (None: all of them); each window's rows
            follow the previous window's.

    Returns:
        The rows; within a row, pieces in document order.
    """
    offsets = np.asarray(offsets, np.int64)
    docs = len(offsets) - 1
    window = docs if window is None else int(window)
    parts_lo, parts_len, parts_row, base = [], [], [], 0
    for first in range(0, docs, max(1, window)):
        lo, length = split_documents(offsets[first : first + window + 1], seq_len)
        rows = best_fit_decreasing(length, seq_len + 1)
        parts_lo.append(lo)
        parts_len.append(length)
        parts_row.append(rows + base)
        base += int(rows.max()) + 1 if len(rows) else 0
    if not parts_lo:
        empty = np.empty(0, np.int64)
        return Packing(np.zeros(1, np.int64), empty, empty)
    lo, length, row = (np.concatenate(p) for p in (parts_lo, parts_len, parts_row))
    order = np.argsort(row, kind="stable")
    starts = np.zeros(base + 1, np.int64)
    np.cumsum(np.bincount(row, minlength=base), out=starts[1:])
    return Packing(starts, lo[order], length[order])


def fill_rows(
    window: np.ndarray,
    row_len: np.ndarray,
    starts: np.ndarray,
    *,
    cross_targets: bool,
    pad_id: int = 0,
) -> dict[str, np.ndarray]:
    """The model's arrays for rows of raw tokens.

    Args:
        window: ``(B, T + 1)`` int64 tokens of every row (anything past ``row_len`` is ignored).
        row_len: ``(B,)`` tokens in each row (``T + 1`` for a full row).
        starts: ``(B, T + 1)`` bool, True where a document or piece starts (a row's first
            token always starts one).
        cross_targets: whether the last token of a segment has the next segment's first
            token as target (concat) or none (aligned, padded).
        pad_id: input token of the padding.

    Returns:
        ``input_ids``, ``targets``, ``position_ids`` (int64 ``(B, T)``), ``segment_ids``
        (int32 ``(B, T)``, -1 on padding) and ``cu_seqlens`` (int32: the segments' offsets
        in the flattened batch and ``B*T``; a row's padding counts as one segment).
    """
    b, t = window.shape[0], window.shape[1] - 1
    out = {
        "input_ids": np.empty((b, t), np.int64),
        "targets": np.empty((b, t), np.int64),
        "position_ids": np.empty((b, t), np.int64),
        "segment_ids": np.empty((b, t), np.int32),
    }
    cu = np.empty(b * t + 1, np.int32)
    n = _fill(window, np.asarray(row_len, np.int64), starts, bool(cross_targets), int(pad_id),
              out["input_ids"], out["targets"], out["position_ids"], out["segment_ids"], cu)  # fmt: skip
    out["cu_seqlens"] = cu[:n].copy()
    return out


@njit(nogil=True, cache=True)
def _fill(window, row_len, starts, cross, pad_id, inp, tgt, pos, seg, cu):
    rows, t = inp.shape
    n = 0
    for b in range(rows):
        length = min(row_len[b], t + 1)
        real = min(length, t)
        segment, first = -1, 0
        for j in range(real):
            if j == 0 or starts[b, j]:
                segment += 1
                first = j
                cu[n] = b * t + j
                n += 1
            inp[b, j] = window[b, j]
            pos[b, j] = j - first
            seg[b, j] = segment
            if j + 1 < length and (cross or not starts[b, j + 1]):
                tgt[b, j] = window[b, j + 1]
            else:
                tgt[b, j] = -100
        if real < t:
            cu[n] = b * t + real
            n += 1
        for j in range(real, t):
            inp[b, j] = pad_id
            pos[b, j] = 0
            seg[b, j] = -1
            tgt[b, j] = -100
    cu[n] = rows * t
    return n + 1
