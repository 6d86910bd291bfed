"""fastdata.Mix: the interleaving rule, what an epoch is, shares, collation and errors."""

from __future__ import annotations

import collections

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from shard_fixtures import write_image_shards

import fastdata
from fastdata import transforms as T
from fastdata.errors import FastdataError
from fastdata.loading.mix import mix_sequence


@settings(max_examples=80, deadline=None)
@given(weights=st.lists(st.floats(0.01, 10), min_size=1, max_size=6), n=st.integers(1, 3000))
def test_every_prefix_keeps_close_to_the_weights(weights, n):
    """NOTE [ Largest sampling error first ]: never a whole sample ahead, less than two behind."""
    seq = mix_sequence(weights, n)
    w = np.asarray(weights) / sum(weights)
    counts = np.zeros((n, len(w)))
    counts[np.arange(n), seq] = 1
    counts = np.cumsum(counts, axis=0)  # counts[t - 1]: draws in the first t positions
    expected = np.arange(1, n + 1)[:, None] * w[None, :]
    assert (counts - expected).max() < 1.0 and (expected - counts).max() < 2.0
    assert np.array_equal(seq, mix_sequence(weights, n))  # a pure function of the weights


def test_a_long_run_realises_the_weights():
    seq = mix_sequence([0.7, 0.2, 0.1], 100_000)
    shares = np.bincount(seq, minlength=3) / len(seq)
    np.testing.assert_allclose(shares, [0.7, 0.2, 0.1], atol=1e-4)


def tf(size=8):
    return T.Compose([T.RandomCrop(size), T.RandomHorizontalFlip(), T.ToDtype(torch.float32, scale=True)])


@pytest.fixture
def sources(tmp_path):
    out = []
    for i, (n, per) in enumerate([(40, 7), (25, 6), (60, 11)]):
        (tmp_path / f"s{i}").mkdir()
        pattern, pixels = write_image_shards(str(tmp_path / f"s{i}"), n, per, seed=i, raw=i != 1)
        out.append((pattern, pixels))
    return out


def make(sources, stop="first_exhausted", weights=(0.5, 0.3, 0.2), transforms=None, seeds=(0, 1, 2), **kw):
    transforms = transforms or [tf() for _ in sources]
    kw.setdefault("names", ["a", "b", "c"][: len(sources)])
    datasets = [fastdata.ShardDataset(p, t, fields=("__key__", "cls"), shuffle=True, buffer_size=9, seed=seeds[i])
                for i, ((p, _), t) in enumerate(zip(sources, transforms, strict=True))]  # fmt: skip
    return fastdata.Mix(datasets, list(weights), stop=stop, **kw)


def epoch_keys(mix, bs=6, workers=2):
    return [k for _, keys, _ in mix.iter_batches(bs, num_workers=workers) for k in keys]


def test_what_an_epoch_is(sources):
    sizes = [len(p) for _, p in sources]
    first = make(sources)
    keys = epoch_keys(first)
    counts = first.stats.sources
    assert len(keys) == len(first) == sum(counts.values())
    assert counts["a"] == sizes[0]  # a runs out first: 40 / 0.5 = 80 positions
    assert all(counts[n] <= s for n, s in zip("abc", sizes, strict=True))  # nobody repeats
    every = make(sources, stop="all_exhausted")
    assert len(epoch_keys(every)) == len(every) == sum(every.stats.sources.values())
    assert all(every.stats.sources[n] >= s for n, s in zip("abc", sizes, strict=True))
    fixed = make(sources, stop=33)
    assert len(epoch_keys(fixed)) == 33


def test_same_seed_same_sequence_and_epochs_differ(sources):
    a, b = make(sources), make(sources)
    e0 = epoch_keys(a)
    assert e0 == epoch_keys(b, workers=0)
    assert epoch_keys(a) != e0


def test_sources_with_their_own_transforms_collate_and_wrong_shapes_are_named(sources):
    mixed = make(sources, transforms=[tf(), T.Compose([T.CenterCrop(8), T.ToDtype(torch.float32, scale=True)]), tf()])
    batches = list(mixed.iter_batches(8, num_workers=0))
    assert all(b[0].shape[1:] == (3, 8, 8) for b in batches)
    bad = make(sources, transforms=[tf(), tf(6), tf()])
    with pytest.raises(FastdataError, match="'b' .*6, 6"):
        list(bad.iter_batches(8, num_workers=0))


def test_a_mixed_batch_holds_each_sources_samples_transformed_by_that_source(sources):
    """Against each source read alone: a sample's pixels in the mix are those of its own dataset."""
    center = T.Compose([T.CenterCrop(8), T.ToDtype(torch.float32, scale=True)])
    mix = make(sources, transforms=[center, center, center])
    alone = {}
    for i, (p, _) in enumerate(sources):
        ds = fastdata.ShardDataset(p, center, fields=("__key__", "cls"))
        for images, keys, _ in ds.iter_batches(16):
            alone.update({(i, k): img for k, img in zip(keys, images, strict=True)})
    seen = collections.Counter()
    for images, keys, labels in mix.iter_batches(7, num_workers=2):
        for img, key, label in zip(images, keys, labels.tolist(), strict=True):
            owners = [i for i in range(3) if (i, key) in alone and torch.equal(alone[(i, key)], img)]
            assert owners, key
            seen[owners[0]] += 1
            assert label == int(key[1:]) % 7
    assert set(seen) == {0, 1, 2}


def test_torch_dataloader_reads_the_mix(sources):
    mix = make(sources, stop=40)
    got = [k for _, keys, _ in torch.utils.data.DataLoader(mix, batch_size=5, num_workers=0) for k in keys]
    assert len(got) == 40


@pytest.mark.parametrize("kwargs, match", [
    ({"weights": (1, 2)}, "weights"), ({"weights": (1, -1, 1)}, "weights"), ({"weights": (0, 0, 0)}, "weights"),
    ({"stop": "never"}, "stop"), ({"stop": 0}, "stop"),
])  # fmt: skip
def test_bad_arguments_are_named(sources, kwargs, match):
    with pytest.raises(ValueError, match=match):
        make(sources, **kwargs)


def test_a_state_of_another_mix_is_refused(sources):
    mix = make(sources)
    it = mix.iter_batches(4)
    next(it)
    state = mix.state_dict()
    it.close()
    with pytest.raises(ValueError, match="mix"):
        make(sources, weights=(0.4, 0.4, 0.2)).load_state_dict(state)
    with pytest.raises(ValueError, match="mix|sources"):
        make(sources[:2], weights=(0.5, 0.3)).load_state_dict(state)
    with pytest.raises(ValueError, match="sources"):  # another seed of a source
        make(sources, seeds=(0, 99, 2)).load_state_dict(state)


# -- token datasets -------------------------------------------------------------------------------


def token_sources(tmp_path, mode="concat"):
    from test_token_dataset import write_tokens

    rng = np.random.default_rng(5)
    out = []
    for i in range(2):
        (tmp_path / f"t{i}").mkdir(exist_ok=True)
        urls, *_ = write_tokens(tmp_path / f"t{i}", [rng.integers(3, 30, 8) for _ in range(3 + i)], seed=i)
        out.append(urls)
    return [fastdata.TokenDataset(u, 8, mode=mode, shuffle=True, seed=i, drop_last=False) for i, u in enumerate(out)]


def rows_alone(ds) -> set:
    return {tuple(r) for b in ds.iter_batches(16, num_workers=0) for r in b["input_ids"].tolist()}


@pytest.mark.parametrize("mode", ["concat", "aligned"])
def test_a_mix_of_token_datasets(tmp_path, mode):
    mix = fastdata.Mix(token_sources(tmp_path, mode), [0.6, 0.4], stop="all_exhausted", names=["a", "b"])
    alone = [rows_alone(ds) for ds in token_sources(tmp_path, mode)]
    batches = list(mix.iter_batches(5, num_workers=0))
    assert sum(len(b["input_ids"]) for b in batches) == len(mix) == sum(mix.stats.sources.values())
    for b in batches:
        for row in b["input_ids"].tolist():
            assert tuple(row) in alone[0] | alone[1]  # every row is one of a source's rows
        seg = b["segment_ids"].numpy()  # cu_seqlens again, independently: row starts and id changes
        flat = np.concatenate([[True] if j == 0 else [seg[r, j] != seg[r, j - 1]] for r in range(seg.shape[0])
                               for j in range(seg.shape[1])])  # fmt: skip
        expect = np.append(np.flatnonzero(flat), seg.size)
        assert np.array_equal(b["cu_seqlens"].numpy(), expect)
        starts = flat.reshape(seg.shape) | (seg < 0)  # positions restart per document (0 on padding)
        assert torch.equal(b["position_ids"] == 0, torch.from_numpy(starts))


def test_a_token_mix_resumes_elastically(tmp_path):
    def make(rank, world):
        return fastdata.Mix(token_sources(tmp_path), [0.5, 0.5], stop="first_exhausted", rank=rank, world_size=world)

    full = collections.Counter(tuple(r) for k in range(2) for b in make(k, 2).iter_batches(3, num_workers=0)
                               for r in b["input_ids"].tolist())  # fmt: skip
    mixes = [make(k, 2) for k in range(2)]
    iters = [m.iter_batches(3, num_workers=0) for m in mixes]
    done = [tuple(r) for it in iters for _ in range(2) for r in next(it)["input_ids"].tolist()]
    state = mixes[0].state_dict()
    rest = []
    for k in range(3):
        m = make(k, 3)
        m.load_state_dict(state)
        rest += [tuple(r) for b in m.iter_batches(2, num_workers=0) for r in b["input_ids"].tolist()]
    assert collections.Counter(done + rest) == full
