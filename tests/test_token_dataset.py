"""TokenDataset: batches against plain NumPy references over fresh random token shards."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import fastdata
from fastdata.errors import FastdataError
from fastdata.loading.tokens import TokenDataset
from fastdata.shards.index import write_index
from fastdata.shards.tokens import write_token_shard

IGNORE = -100


def write_tokens(folder, lengths_per_shard, *, seed=0, positions=False, labels=False, index=True):
    """Token shards of random documents (each ending with the eod token 0); returns urls, tokens, docs, labels.

    ``positions`` makes every token its position in the dataset's stream (uint32), so a
    batch shows where each of its tokens came from.
    """
    rng = np.random.default_rng(seed)
    urls, tokens, docs, labs, entries, base = [], [], [], [], [], 0
    for i, lengths in enumerate(lengths_per_shard):
        offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        n = int(offsets[-1])
        if positions:
            tok = np.arange(base, base + n, dtype=np.uint32)
        else:
            tok = rng.integers(1, 50_000, n).astype(np.uint16)
            tok[offsets[1:] - 1] = 0  # every document ends with the end-of-document token
        lab = rng.integers(-1, 5, len(lengths)) if labels else None
        url = str(folder / f"tok-{i:06d}.tar")
        entries.append(write_token_shard(url, f"s{i:06d}", tok, offsets, lab, meta={"eod": 0}))
        urls.append(url)
        tokens.append(tok)
        docs.append(offsets)
        labs.append(lab)
        base += n
    if index:
        write_index(str(folder / "tok.index.json"), {"shards": entries, "vocab_size": 50_000, "eod": 0})
    return urls, tokens, docs, labs


def batches_of(ds, bs, **kw):
    return [{k: v.clone() for k, v in b.items()} for b in ds.iter_batches(bs, **kw)]


def same(a: list[dict], b: list[dict]) -> bool:
    return len(a) == len(b) and all(x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)
                                    for x, y in zip(a, b, strict=True))  # fmt: skip


def concat_reference(tokens, docs, rows, t):
    """Inputs, targets, positions, segments and cu_seqlens of concat rows, from the raw arrays."""
    stream = np.concatenate([x.astype(np.float64) for x in tokens])
    shift = np.cumsum([0] + [len(x) for x in tokens[:-1]])
    starts = np.unique(np.concatenate([d[:-1] + s for d, s in zip(docs, shift, strict=True)]))
    doc_of = np.searchsorted(starts, np.arange(len(stream)), side="right") - 1
    inp, tgt, pos, seg, cu = [], [], [], [], []
    for i, r in enumerate(rows):
        span = np.arange(r * t, r * t + t)
        inp.append(stream[span])
        tgt.append(stream[span + 1])
        d = doc_of[span]
        seg.append(d - d[0])
        first = np.array([np.flatnonzero(d == x)[0] for x in d])
        pos.append(np.arange(t) - first)
        cu += [i * t + j for j in range(t) if j == 0 or d[j] != d[j - 1]]
    cu.append(len(rows) * t)
    return {"input_ids": np.array(inp), "targets": np.array(tgt), "position_ids": np.array(pos),
            "segment_ids": np.array(seg), "cu_seqlens": np.array(cu)}  # fmt: skip


# -- concat -------------------------------------------------------------------------------------


@settings(max_examples=25, deadline=None)
@given(lengths=st.lists(st.lists(st.integers(1, 30), min_size=0, max_size=8), min_size=1, max_size=4),
       t=st.integers(1, 16), bs=st.integers(1, 5), seed=st.integers(0, 9))  # fmt: skip
def test_concat_batches_match_the_stream(tmp_path_factory, lengths, t, bs, seed):
    folder = tmp_path_factory.mktemp("tok")
    urls, tokens, docs, _ = write_tokens(folder, lengths, seed=seed)
    ds = TokenDataset(urls, t, drop_last=False)
    total = sum(len(x) for x in tokens)
    assert len(ds) == max(0, (total - 1) // t)
    rows = 0
    for batch in ds.iter_batches(bs, num_workers=0):
        ids = list(range(rows, rows + len(batch["input_ids"])))
        want = concat_reference(tokens, docs, ids, t)
        for key, value in want.items():
            assert np.array_equal(batch[key].numpy(), value), key
        assert batch["input_ids"].dtype == torch.int64 and batch["segment_ids"].dtype == torch.int32
        assert batch["cu_seqlens"].dtype == torch.int32
        rows += len(ids)
    assert rows == len(ds)


@pytest.mark.parametrize("world", [1, 2, 3])
def test_concat_every_token_once_per_epoch_over_ranks(tmp_path, world):
    rng = np.random.default_rng(world)
    urls, tokens, _, _ = write_tokens(tmp_path, [rng.integers(1, 40, 12) for _ in range(4)], positions=True)
    t, total = 7, sum(len(x) for x in tokens)
    rows = (total - 1) // t
    seen = []
    for rank in range(world):
        ds = TokenDataset(urls, t, shuffle=True, seed=3, rank=rank, world_size=world, drop_last=False)
        got = batches_of(ds, 4, num_workers=2)
        assert len(got) == ds.num_batches(4)
        seen += [b["input_ids"].numpy().ravel() for b in got]
        for b in got:
            assert torch.equal(b["targets"], b["input_ids"] + 1)  # the next token of the stream
    seen = np.sort(np.concatenate(seen))
    assert len(np.unique(seen)) == len(seen)  # no token twice
    assert len(seen) == (rows // world) * world * t
    if rows % world == 0:
        assert np.array_equal(seen, np.arange(rows * t))  # every token an input once


def test_shuffle_changes_with_the_epoch_and_not_with_the_run(tmp_path):
    urls, *_ = write_tokens(tmp_path, [[20] * 10, [15] * 10])
    a, b = TokenDataset(urls, 8, shuffle=True, seed=1), TokenDataset(urls, 8, shuffle=True, seed=1)
    first = batches_of(a, 4, num_workers=0)
    assert same(first, batches_of(b, 4, num_workers=2))
    assert not same(first, batches_of(a, 4, num_workers=0))  # epoch 1


# -- aligned ------------------------------------------------------------------------------------


@settings(max_examples=20, deadline=None)
@given(lengths=st.lists(st.lists(st.integers(1, 40), min_size=1, max_size=10), min_size=1, max_size=3),
       t=st.integers(1, 16), window=st.sampled_from([None, 2]))  # fmt: skip
def test_aligned_trains_every_document_pair_once(tmp_path_factory, lengths, t, window):
    folder = tmp_path_factory.mktemp("tok")
    urls, tokens, docs, _ = write_tokens(folder, lengths, positions=True)
    ds = TokenDataset(urls, t, mode="aligned", shuffle=True, window=window, drop_last=False)
    stream_docs = np.concatenate([d[:-1] + int(x[0]) if len(x) else d[:-1] for d, x in zip(docs, tokens, strict=True)])
    total = sum(len(x) for x in tokens)
    doc_of = np.searchsorted(np.unique(stream_docs), np.arange(total), side="right") - 1
    trained = []
    for batch in ds.iter_batches(3, num_workers=1):
        inp, tgt, seg = batch["input_ids"].numpy(), batch["targets"].numpy(), batch["segment_ids"].numpy()
        for r in range(len(inp)):
            real = seg[r] >= 0
            assert np.all(inp[r][~real] == 0) and np.all(tgt[r][~real] == IGNORE)
            for s in np.unique(seg[r][real]):
                ids = inp[r][seg[r] == s]
                assert len(np.unique(doc_of[ids])) == 1  # never across a document
                assert np.array_equal(ids, np.arange(ids[0], ids[0] + len(ids)))
            ok = tgt[r] != IGNORE
            assert np.array_equal(tgt[r][ok], inp[r][ok] + 1)
            trained += inp[r][ok].tolist()
    pairs = [i for i in range(total - 1) if doc_of[i] == doc_of[i + 1]]
    assert sorted(trained) == pairs


# -- padded -------------------------------------------------------------------------------------


def test_padded_rows_are_documents_with_labels(tmp_path):
    rng = np.random.default_rng(5)
    urls, tokens, docs, labels = write_tokens(tmp_path, [rng.integers(1, 30, 7) for _ in range(3)], labels=True)
    t = 12
    ds = TokenDataset(urls, t, mode="padded", drop_last=False, pad_id=7)
    all_docs = [(x, d, lab) for x, off, labs in zip(tokens, docs, labels, strict=True)
                for d, lab in zip(zip(off[:-1], off[1:], strict=True), labs, strict=True)]  # fmt: skip
    got = batches_of(ds, 4, num_workers=2)
    assert sorted(got[0]) == ["attention_mask", "input_ids", "labels", "lengths", "targets"]
    rows = [(b, i) for b in got for i in range(len(b["input_ids"]))]
    assert len(rows) == len(all_docs) == len(ds)
    for (b, i), (x, (lo, hi), lab) in zip(rows, all_docs, strict=True):
        doc = x[lo:hi].astype(np.float64)
        keep = min(len(doc), t)
        assert b["lengths"][i] == keep and b["labels"][i] == lab
        assert b["attention_mask"][i].tolist() == [j < keep for j in range(t)]
        assert np.array_equal(b["input_ids"][i].numpy(), np.concatenate([doc[:keep], [7] * (t - keep)]))
        want = [doc[j + 1] if j + 1 < len(doc) else IGNORE for j in range(keep)] + [IGNORE] * (t - keep)
        assert np.array_equal(b["targets"][i].numpy(), want)


# -- state, loaders, formats --------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["concat", "aligned", "padded"])
def test_resume_at_random_points(tmp_path, mode):
    rng = np.random.default_rng(11)
    urls, *_ = write_tokens(tmp_path, [rng.integers(1, 40, 15) for _ in range(3)], seed=2)
    make = lambda: TokenDataset(urls, 9, mode=mode, shuffle=True, seed=4, rank=1, world_size=2)  # noqa: E731
    whole = make()
    epochs = [batches_of(whole, 3, num_workers=0) for _ in range(2)]
    full = epochs[0] + epochs[1]
    assert len(epochs[0]) > 3
    for k in sorted(rng.choice(len(epochs[0]) + 1, 4, replace=False)):
        first = make()
        it = first.iter_batches(3, num_workers=2)
        for _ in range(k):
            next(it)
        state = first.state_dict()
        it.close()
        again = make()
        again.load_state_dict(state)
        rest = batches_of(again, 3, num_workers=1)
        # a state taken after the last batch resumes at the start of the next epoch
        assert same(rest, full[k : len(epochs[0])] if k < len(epochs[0]) else epochs[1]), k


def test_state_refuses_another_order(tmp_path):
    urls, *_ = write_tokens(tmp_path, [[10] * 20])
    ds = TokenDataset(urls, 4, shuffle=True, seed=1)
    next(ds.iter_batches(2, num_workers=0))
    other = TokenDataset(urls, 4, shuffle=True, seed=2)
    with pytest.raises(ValueError, match="seed=1"):
        other.load_state_dict(ds.state_dict())
    same_ds = TokenDataset(urls, 4, shuffle=True, seed=1)
    same_ds.load_state_dict(ds.state_dict())
    with pytest.raises(ValueError, match="batch_size=2"):
        next(same_ds.iter_batches(3))


def test_dataloader_gives_the_same_batches_and_state(tmp_path):
    urls, *_ = write_tokens(tmp_path, [[13] * 30, [9] * 30])
    ds = TokenDataset(urls, 16, shuffle=True)
    loader = fastdata.DataLoader(ds, batch_size=4, num_workers=2)
    assert len(loader) == ds.num_batches(4)
    got = [{k: v.clone() for k, v in b.items()} for b in loader]
    assert same(got, batches_of(TokenDataset(urls, 16, shuffle=True), 4, num_workers=0))
    assert loader.state_dict()["epoch"] == 1 and ds.stats.batches == len(got)


def test_equal_batches_on_every_rank(tmp_path):
    urls, *_ = write_tokens(tmp_path, [[11] * 17, [5] * 3])
    for mode in ("concat", "aligned", "padded"):
        counts = {TokenDataset(urls, 8, mode=mode, rank=r, world_size=3).num_batches(2) for r in range(3)}
        assert len(counts) == 1
    for mode in ("concat", "aligned", "padded"):
        n = {len(batches_of(TokenDataset(urls, 8, mode=mode, rank=r, world_size=3, drop_last=False), 2, num_workers=0))
             for r in range(3)}  # fmt: skip
        assert len(n) == 1


def test_webdataset_reads_the_same_tokens(tmp_path):
    wds = pytest.importorskip("webdataset")
    urls, tokens, docs, _ = write_tokens(tmp_path, [[5, 9, 3], [7, 7]])
    theirs = []
    for sample in wds.WebDataset(urls, shardshuffle=False, empty_check=False):
        theirs.append(np.load(io.BytesIO(sample["tokens.npy"])))
        assert np.array_equal(np.load(io.BytesIO(sample["docs.npy"])), docs[len(theirs) - 1])
    stream = np.concatenate(theirs).astype(np.int64)
    assert np.array_equal(stream, np.concatenate(tokens))
    ds = TokenDataset(urls, 5, drop_last=False)
    inputs = torch.cat([b["input_ids"].ravel() for b in ds.iter_batches(2, num_workers=0)])
    assert np.array_equal(inputs.numpy(), stream[: len(inputs)])


def test_shards_without_an_index(tmp_path):
    urls, tokens, _, _ = write_tokens(tmp_path, [[6] * 5, [4] * 3], index=False)
    local = TokenDataset(urls, 4)  # the counts come from the shards' metadata
    assert len(local) == (sum(len(x) for x in tokens) - 1) // 4
    remote = TokenDataset([f"pipe:cat {u}" for u in urls], 4)
    with pytest.raises(FastdataError, match="convert --tokenize"):
        len(remote)


def test_other_dtypes_and_arguments(tmp_path):
    urls, *_ = write_tokens(tmp_path, [[9] * 10])
    batch = next(TokenDataset(urls, 4, dtype=torch.int32).iter_batches(2, num_workers=0))
    assert batch["input_ids"].dtype == torch.int32 and batch["cu_seqlens"].dtype == torch.int32
    with pytest.raises(ValueError, match="mode"):
        TokenDataset(urls, 4, mode="packed")
    with pytest.raises(ValueError, match="seq_len"):
        TokenDataset(urls, 0)
    with pytest.raises(ValueError, match="batch_size"):
        TokenDataset(urls, 4).iter_batches(0)
