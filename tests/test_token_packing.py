"""Packing documents into rows: invariants against plain-Python references."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fastdata.loading.packing import (
    IGNORE,
    best_fit_decreasing,
    concat_rows,
    fill_rows,
    pack_documents,
    split_documents,
)

lengths_st = st.lists(st.integers(1, 40), min_size=1, max_size=60)


def offsets_of(lengths) -> np.ndarray:
    return np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)


def marks(starts_per_row, t: int) -> np.ndarray:
    """Start positions per row as the ``(B, T + 1)`` bool array ``fill_rows`` takes."""
    out = np.zeros((len(starts_per_row), t + 1), bool)
    for r, starts in enumerate(starts_per_row):
        out[r, list(starts)] = True
    return out


def check_boundaries(out: dict) -> None:
    """``position_ids`` and ``cu_seqlens`` agree with ``segment_ids`` (an independent walk)."""
    seg, pos = out["segment_ids"], out["position_ids"]
    b, t = seg.shape
    cuts = []
    for r in range(b):
        for j in range(t):
            if j == 0 or seg[r, j] != seg[r, j - 1]:
                cuts.append(r * t + j)
                start = j
            assert pos[r, j] == (j - start if seg[r, j] >= 0 else 0)
        real = seg[r][seg[r] >= 0]
        assert list(real) == sorted(real) and (len(real) == 0 or real[0] == 0)
        assert np.all(seg[r, len(real):] == -1)  # padding only at the end
    assert out["cu_seqlens"].dtype == np.int32
    assert list(out["cu_seqlens"]) == cuts + [b * t]


# -- concat -------------------------------------------------------------------------------


@settings(max_examples=80, deadline=None)
@given(lengths=lengths_st, t=st.integers(1, 17), data=st.data())
def test_concat_rows_are_the_stream_shifted(lengths, t, data):
    offsets = offsets_of(lengths)
    total = int(offsets[-1])
    stream = np.random.default_rng(len(lengths)).integers(0, 60000, total).astype(np.uint16)
    rows = concat_rows(total, t)
    assert rows == max(0, (total - 1) // t)
    if rows == 0:
        return
    ids = np.array(data.draw(st.lists(st.integers(0, rows - 1), min_size=1, max_size=8)))
    window = np.stack([stream[r * t : r * t + t + 1] for r in ids])
    starts = [[int(d) - r * t for d in offsets[:-1] if r * t < d <= r * t + t] for r in ids]
    out = fill_rows(window, np.full(len(ids), t + 1), marks(starts, t), cross_targets=True)
    doc = np.searchsorted(offsets, np.arange(total), side="right") - 1  # document of every token
    for i, r in enumerate(ids):
        span = np.arange(r * t, r * t + t)
        assert out["input_ids"][i].tolist() == stream[span].tolist()
        assert out["targets"][i].tolist() == stream[span + 1].tolist()
        assert out["segment_ids"][i].tolist() == (doc[span] - doc[span[0]]).tolist()
    check_boundaries(out)


@settings(max_examples=40, deadline=None)
@given(total=st.integers(0, 500), t=st.integers(1, 40))
def test_concat_rows_cover_the_stream_once(total, t):
    rows = concat_rows(total, t)
    inputs = np.concatenate([np.arange(r * t, r * t + t) for r in range(rows)] or [np.empty(0, int)])
    assert inputs.tolist() == list(range(rows * t))  # every token an input once ...
    assert rows * t + 1 <= max(total, 1) and total - (rows * t + 1) < t  # ... but a tail < T


# -- aligned ------------------------------------------------------------------------------


@settings(max_examples=80, deadline=None)
@given(lengths=st.lists(st.integers(0, 70), min_size=1, max_size=60), t=st.integers(1, 20))
def test_pieces_cover_every_pair_once(lengths, t):
    offsets = offsets_of(lengths)
    lo, length = split_documents(offsets, t)
    assert np.all((length >= 1) & (length <= t + 1))
    pairs = sorted(p for a, n in zip(lo, length, strict=True) for p in range(a, a + n - 1))
    within = sorted(i for d in range(len(lengths)) for i in range(offsets[d], offsets[d + 1] - 1))
    assert pairs == within  # every (input, target) pair inside a document once
    firsts = {int(a) for a in lo}
    assert all(int(offsets[d]) in firsts for d in range(len(lengths)) if lengths[d])


@settings(max_examples=80, deadline=None)
@given(sizes=st.lists(st.integers(1, 30), min_size=0, max_size=80), extra=st.integers(0, 20))
def test_best_fit_decreasing_against_a_plain_reference(sizes, extra):
    cap = max(sizes, default=1) + extra
    rows = best_fit_decreasing(np.array(sizes, np.int64), cap)
    free: list[int] = []  # the reference: rows opened in order, best fit, longest first
    expect = [0] * len(sizes)
    for i in sorted(range(len(sizes)), key=lambda i: -sizes[i]):
        fits = [r for r in range(len(free)) if free[r] >= sizes[i]]
        if fits:
            best = min(free[r] for r in fits)
            r = [r for r in fits if free[r] == best]
            r = r[0]
        else:
            r = len(free)
            free.append(cap)
        free[r] -= sizes[i]
        expect[i] = r
    # Ties between rows with equal room may go either way: compare the fill of the rows.
    got = np.bincount(rows, weights=sizes, minlength=len(free)) if sizes else np.empty(0)
    assert sorted(got.tolist()) == sorted(float(cap - f) for f in free)
    assert all(got <= cap)


@settings(max_examples=80, deadline=None)
@given(lengths=st.lists(st.integers(1, 90), min_size=1, max_size=80), t=st.integers(1, 40),
       window=st.sampled_from([None, 1, 3, 10]))  # fmt: skip
def test_aligned_rows_hold_every_piece_once_within_the_bound(lengths, t, window):
    offsets = offsets_of(lengths)
    packing = pack_documents(offsets, t, window)
    lo, length = split_documents(offsets, t)
    assert sorted(zip(packing.lo.tolist(), packing.length.tolist(), strict=True)) == sorted(zip(lo.tolist(), length.tolist(), strict=True))
    fill = np.add.reduceat(packing.length, packing.row_starts[:-1]) if packing.rows else np.empty(0)
    assert np.all(fill <= t + 1) and np.all(fill > 0)
    # NOTE [ Best fit decreasing and its waste ]: within one window, row i wastes fewer
    # tokens than the longest piece of row i + 1.
    if window is None:
        longest = np.maximum.reduceat(packing.length, packing.row_starts[:-1])
        assert np.all((t + 1) - fill[:-1] < longest[1:])
        assert packing.padding(t) < (t + 1) + longest[1:].sum()


def test_aligned_waste_is_small_for_short_documents():
    rng = np.random.default_rng(0)
    t = 1024
    for sigma in (0.5, 1.0, 1.5):
        lengths = np.maximum(1, rng.lognormal(np.log(t / 8) - sigma**2 / 2, sigma, 20_000).astype(np.int64))
        packing = pack_documents(offsets_of(lengths), t, window=1000)
        waste = packing.padding(t) / (packing.rows * (t + 1))
        assert waste < 0.02, (sigma, waste)


@settings(max_examples=60, deadline=None)
@given(lengths=st.lists(st.integers(1, 50), min_size=1, max_size=40), t=st.integers(1, 24))
def test_aligned_rows_never_cross_a_document(lengths, t):
    offsets = offsets_of(lengths)
    packing = pack_documents(offsets, t)
    tokens = np.arange(offsets[-1])  # token = its own position: provenance is visible
    window = np.full((packing.rows, t + 1), -7, np.int64)
    row_len, starts = np.zeros(packing.rows, int), []
    for r in range(packing.rows):
        at, starts_r = 0, []
        for p in range(packing.row_starts[r], packing.row_starts[r + 1]):
            a, n = packing.lo[p], packing.length[p]
            window[r, at : at + n] = tokens[a : a + n]
            starts_r.append(at)
            at += n
        row_len[r] = at
        starts.append(starts_r)
    out = fill_rows(window, row_len, marks(starts, t), cross_targets=False, pad_id=5)
    check_boundaries(out)
    doc = np.searchsorted(offsets, np.arange(offsets[-1]), side="right") - 1
    seg, inp, tgt = out["segment_ids"], out["input_ids"], out["targets"]
    for r in range(packing.rows):
        for s in set(seg[r][seg[r] >= 0].tolist()):
            ids = inp[r][seg[r] == s]
            assert len(set(doc[ids].tolist())) == 1  # one document per segment ...
            assert ids.tolist() == list(range(ids[0], ids[0] + len(ids)))  # ... contiguous
        ok = tgt[r] != IGNORE
        assert np.all(tgt[r][ok] == inp[r][ok] + 1)  # the next token of the same document
        assert np.all(doc[tgt[r][ok]] == doc[inp[r][ok]])
        assert np.all(inp[r][seg[r] < 0] == 5)
    trained = sorted(int(i) for r in range(packing.rows) for i in inp[r][tgt[r] != IGNORE])
    within = sorted(i for d in range(len(lengths)) for i in range(offsets[d], offsets[d + 1] - 1))
    assert trained == within  # every pair of a document trained once


# -- padded -------------------------------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(lengths=st.lists(st.integers(1, 40), min_size=1, max_size=12), t=st.integers(1, 24))
def test_padded_rows_mask_past_the_length(lengths, t):
    offsets = offsets_of(lengths)
    tokens = np.random.default_rng(t).integers(0, 1000, offsets[-1])
    window = np.zeros((len(lengths), t + 1), np.int64)
    row_len = np.minimum(lengths, t + 1)
    for d, n in enumerate(row_len):
        window[d, :n] = tokens[offsets[d] : offsets[d] + n]
    out = fill_rows(window, row_len, marks([[0]] * len(lengths), t), cross_targets=False)
    check_boundaries(out)
    for d, n in enumerate(lengths):
        keep = min(n, t)
        mask = out["segment_ids"][d] >= 0
        assert mask.tolist() == [j < keep for j in range(t)]
        assert out["input_ids"][d, :keep].tolist() == tokens[offsets[d] : offsets[d] + keep].tolist()
        want = [int(tokens[offsets[d] + j + 1]) if j + 1 < n else IGNORE for j in range(keep)]
        assert out["targets"][d, :keep].tolist() == want
        assert np.all(out["targets"][d, keep:] == IGNORE)


def test_best_fit_rejects_items_larger_than_a_row():
    with pytest.raises(ValueError, match="sizes in"):
        best_fit_decreasing(np.array([3, 9]), 8)
