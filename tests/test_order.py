"""The epoch model: one order per epoch, split by ranges, elastic resumption (pure functions)."""

from __future__ import annotations

import numpy as np
from hypothesis import example, given, settings
from hypothesis import strategies as st

from fastdata.loading.order import Split, epoch_order, intervals_positions, shard_permutation


@settings(max_examples=60, deadline=None)
@given(counts=st.lists(st.integers(0, 12), min_size=1, max_size=12), seed=st.integers(0, 2**40),
       epoch=st.integers(0, 5), window=st.integers(0, 30), shuffle=st.booleans())  # fmt: skip
def test_epoch_order_is_every_sample_once_and_windows_are_whole_shards(counts, seed, epoch, window, shuffle):
    shard, member = epoch_order(counts, seed=seed, epoch=epoch, shuffle=shuffle, window=window)
    pairs = list(zip(shard.tolist(), member.tolist(), strict=True))
    assert sorted(pairs) == [(s, m) for s, c in enumerate(counts) for m in range(c)]
    again = epoch_order(counts, seed=seed, epoch=epoch, shuffle=shuffle, window=window)
    assert np.array_equal(again[0], shard) and np.array_equal(again[1], member)
    # the shards of the permuted order, grouped into windows, come window after window
    perm = shard_permutation(len(counts), seed=seed, epoch=epoch, shuffle=shuffle).tolist()
    if not shuffle:
        assert pairs == [(s, m) for s in range(len(counts)) for m in range(counts[s])]
    else:  # windows of whole shards (>= window samples) in the shard order, one after another
        windows, start, total = [], 0, 0
        cur = []
        for s in perm:
            cur.append(s)
            total += counts[s]
            if total - start >= window:
                windows.append(set(cur))
                cur, start = [], total
        if cur:
            windows.append(set(cur))
        w_of = {s: i for i, w in enumerate(windows) for s in w}
        seq = [w_of[s] for s in shard.tolist()]
        assert seq == sorted(seq)


def test_the_order_changes_with_seed_and_epoch():
    counts = [10] * 8
    a = epoch_order(counts, seed=1, epoch=0, shuffle=True, window=25)[0]
    assert not np.array_equal(a, epoch_order(counts, seed=1, epoch=1, shuffle=True, window=25)[0])
    assert not np.array_equal(a, epoch_order(counts, seed=2, epoch=0, shuffle=True, window=25)[0])


def _deliver(split: Split, batches: int | None = None) -> tuple[list[int], list[int]]:
    """Positions every rank delivers in its first ``batches`` batches, and the batch counts."""
    out, counts = [], []
    for rank in range(split.world_size):
        s = split.schedule(rank)
        counts.append(s.batches)
        n = s.batches if batches is None else min(batches, s.batches)
        out += s.pos[: s.starts[n]].tolist()
        assert np.all(np.diff(s.starts) >= 1) and np.all(np.diff(s.starts) <= split.batch_size)
    return out, counts


@settings(max_examples=150, deadline=None)
@given(size=st.integers(0, 120), world=st.integers(1, 5), bs=st.integers(1, 9), drop=st.booleans())
def test_a_split_gives_equal_batches_and_every_sample_once(size, world, bs, drop):
    split = Split.whole(0, size, world, bs, drop)
    got, counts = _deliver(split)
    assert len(set(counts)) == 1
    if drop:
        assert len(got) == len(set(got)) and len(got) > size - world * bs
        assert all(c * bs == len(split.schedule(0).pos) for c in counts[:1])
    elif split.padded:
        assert set(got) == set(range(size)) and len(got) - size < world
    else:
        assert sorted(got) == list(range(size))


@settings(max_examples=150, deadline=None)
@given(size=st.integers(0, 150), topologies=st.lists(st.tuples(st.integers(1, 5), st.integers(1, 8)), min_size=2,
       max_size=5), cut=st.lists(st.floats(0, 1), min_size=5, max_size=5), drop=st.booleans())  # fmt: skip
@example(size=5, topologies=[(1, 1), (1, 1), (1, 1), (4, 1), (1, 1)], cut=[0, 0, 0, 0.5, 0], drop=False)  # a repeat
def test_elastic_resumption_delivers_the_rest_exactly_once(size, topologies, cut, drop):
    """Stop after some batches, resume on another (ranks, batch size): the union over all
    stretches is the epoch, with no sample twice (without padding or dropping)."""
    w, b = topologies[0]
    split, delivered = Split.whole(3, size, w, b, drop), []
    for (w2, b2), frac in zip([*topologies[1:], (None, None)], cut, strict=False):
        k = int(frac * split.batches)
        if w2 is None:
            k = split.batches
        got, _ = _deliver(split, k)
        delivered += got
        left = intervals_positions(split.remaining(k)).tolist()
        assert not set(left) & set(got)
        if w2 is None:
            break
        state = split.state(k)
        restored, done = Split.from_state(state, drop)
        assert done == k and np.array_equal(restored.intervals, split.intervals)
        split = restored.resplit(done, w2, b2)
    if drop:
        assert len(delivered) == len(set(delivered))
    else:
        assert set(delivered) == set(range(size))
        repeats = len(delivered) - len(set(delivered))
        assert repeats < sum(t[0] for t in topologies)  # only the padding of tiny remainders


def test_unchanged_topology_continues_the_same_batches():
    split = Split.whole(0, 101, 3, 7, False)
    state = split.state(4)
    again, done = Split.from_state(state, False)
    for rank in range(3):
        a, b = split.schedule(rank), again.schedule(rank)
        assert np.array_equal(a.pos[a.starts[done]:], b.pos[b.starts[done]:])


def test_the_state_is_small():
    """1,000 shards on 8 ranks x 8 workers: the state is the split and a few counters."""
    import json

    split = Split.whole(0, 1000 * 1250, 8, 256, False)
    assert len(json.dumps(split.state(17))) < 200
    after = split.resplit(17, 6, 256)
    assert len(json.dumps(after.state(5))) < 600
