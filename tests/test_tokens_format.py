"""Token shards: written and read back, mapped out of the tar, readable by webdataset, verified."""

from __future__ import annotations

import io
import json
import mmap
import tarfile

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fastdata.errors import ShardError
from fastdata.shards.index import write_index
from fastdata.shards.tokens import open_token_shard, write_token_shard
from fastdata.shards.verify import verify

EOD = 7


def random_docs(rng, n_docs: int, vocab: int = 1000, dtype=np.uint16):
    """Documents of random tokens below ``vocab`` (never EOD), each ended by EOD."""
    lengths = rng.integers(1, 30, n_docs)
    parts = []
    for n in lengths:
        body = rng.integers(0, vocab, n - 1).astype(dtype)
        body[body == EOD] = EOD + 1
        parts.append(np.append(body, dtype(EOD)))
    tokens = np.concatenate(parts) if parts else np.empty(0, dtype)
    docs = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    return tokens.astype(dtype), docs


def write_random(tmp_path, seed=0, n_docs=5, dtype=np.uint16, labels=True, name="t-000000.tar"):
    rng = np.random.default_rng(seed)
    tokens, docs = random_docs(rng, n_docs, dtype=dtype)
    lab = rng.integers(-1, 3, n_docs) if labels else None
    path = str(tmp_path / name)
    entry = write_token_shard(path, "t-000000", tokens, docs, lab, {"vocab_size": 1000, "eod": EOD})
    return path, entry, tokens, docs, lab


@pytest.mark.parametrize("dtype", [np.uint16, np.uint32])
@pytest.mark.parametrize("labels", [True, False])
def test_round_trip(tmp_path, dtype, labels):
    path, entry, tokens, docs, lab = write_random(tmp_path, dtype=dtype, labels=labels)
    shard = open_token_shard(path, entry["tokens_offset"])
    np.testing.assert_array_equal(shard.tokens, tokens)
    assert shard.tokens.dtype == dtype
    np.testing.assert_array_equal(shard.docs, docs)
    if labels:
        np.testing.assert_array_equal(shard.labels, lab)
    else:
        assert shard.labels is None
    assert shard.meta["vocab_size"] == 1000 and shard.meta["eod"] == EOD
    assert (entry["tokens"], entry["documents"], entry["dtype"]) == (len(tokens), len(docs) - 1, np.dtype(dtype).name)
    np.testing.assert_array_equal(shard.document(1), tokens[docs[1] : docs[2]])


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 40), st.integers(0, 2**31), st.sampled_from([np.uint16, np.uint32]))
def test_round_trip_any_size(tmp_path_factory, n_docs, seed, dtype):
    tmp = tmp_path_factory.mktemp("tok")
    path, entry, tokens, docs, _ = write_random(tmp, seed, n_docs, dtype)
    shard = open_token_shard(path)
    np.testing.assert_array_equal(shard.tokens, tokens)
    np.testing.assert_array_equal(shard.docs, docs)
    raw = open(path, "rb").read()
    offset = entry["tokens_offset"]
    assert offset % 64 == 0
    assert raw[offset : offset + tokens.nbytes] == tokens.tobytes()


def test_members_in_order_and_tokens_at_offset(tmp_path):
    path, entry, tokens, docs, _ = write_random(tmp_path)
    with tarfile.open(path) as tar:
        members = tar.getmembers()
        assert [m.name for m in members] == ["t-000000.json", "t-000000.docs.npy", "t-000000.labels.npy",
                                             "t-000000.tokens.npy"]  # fmt: skip
        last = members[-1]
        data = tar.extractfile(last).read()
    # independent: the .npy header length from numpy's own reader
    buf = io.BytesIO(data)
    np.lib.format.read_magic(buf)
    np.lib.format.read_array_header_1_0(buf)
    assert last.offset_data + buf.tell() == entry["tokens_offset"]
    assert entry["tokens_offset"] % 64 == 0
    meta = json.loads(tarfile.open(path).extractfile(members[0]).read())
    assert meta == {"format": "fastdata-tokens", "version": 1, "dtype": "uint16", "documents": len(docs) - 1,
                    "tokens": len(tokens), "vocab_size": 1000, "eod": EOD}  # fmt: skip


def test_local_tokens_are_mapped(tmp_path):
    path, _, tokens, _, _ = write_random(tmp_path)
    shard = open_token_shard(path)
    assert isinstance(shard.tokens, np.memmap)
    assert not shard.tokens.flags.writeable
    base = shard.tokens
    while not isinstance(base, mmap.mmap) and getattr(base, "base", None) is not None:
        base = base.base
    assert isinstance(base, mmap.mmap)  # backed by the file, not a copy


def test_remote_urls_are_read_once(tmp_path):
    path, _, tokens, docs, _ = write_random(tmp_path)
    shard = open_token_shard(f"pipe:cat {path}")
    np.testing.assert_array_equal(shard.tokens, tokens)
    np.testing.assert_array_equal(shard.docs, docs)


def test_webdataset_reads_it(tmp_path):
    wds = pytest.importorskip("webdataset")
    path, _, tokens, docs, lab = write_random(tmp_path)
    samples = list(wds.WebDataset(path, shardshuffle=False).decode())
    assert len(samples) == 1
    s = samples[0]
    assert s["__key__"] == "t-000000"
    np.testing.assert_array_equal(s["tokens.npy"], tokens)
    np.testing.assert_array_equal(s["docs.npy"], docs)
    np.testing.assert_array_equal(s["labels.npy"], lab)
    assert s["json"]["tokens"] == len(tokens)


def test_verify_passes_and_checks_the_index(tmp_path):
    path, entry, *_ = write_random(tmp_path)
    index = tmp_path / "t.index.json"
    write_index(str(index), {"num_samples": 1, "shards": [entry]})
    assert verify(str(index)) == ([], 1)
    write_index(str(index), {"num_samples": 1, "shards": [{**entry, "tokens_offset": entry["tokens_offset"] + 64}]})
    problems, _ = verify(str(index))
    assert [p.message.split(" is ")[0] for p in problems] == ["tokens_offset"]


def test_verify_finds_a_document_without_eod(tmp_path):
    tokens = np.array([1, 2, EOD, 3, 4], np.uint16)
    path = str(tmp_path / "t-000000.tar")
    write_token_shard(path, "t", tokens, np.array([0, 3, 5]), meta={"eod": EOD, "vocab_size": 10})
    problems, _ = verify(path)
    assert len(problems) == 1 and "document 1 does not end with the end-of-document token 7" in problems[0].message


def test_truncated_shard(tmp_path):
    path, *_ = write_random(tmp_path, n_docs=20)
    raw = open(path, "rb").read()
    open(path, "wb").write(raw[: len(raw) - 1100])
    with pytest.raises(ShardError, match=r"t-000000\.tar.*truncated"):
        open_token_shard(path)
    problems, _ = verify(path)
    assert problems


def test_altered_metadata(tmp_path):
    path, *_ = write_random(tmp_path)
    raw = bytearray(open(path, "rb").read())
    at = raw.find(b'"tokens": ')
    raw[at + 10] = ord("9") if raw[at + 10] != ord("9") else ord("8")
    # keep the tar header checksum valid: only member content changed
    open(path, "wb").write(bytes(raw))
    with pytest.raises(ShardError, match=r"t-000000\.tar.*the metadata says"):
        open_token_shard(path)


def test_altered_offsets(tmp_path):
    tokens = np.array([1, EOD, 3, EOD], np.uint16)
    path = str(tmp_path / "t-000000.tar")
    write_token_shard(path, "t", tokens, np.array([0, 2, 4]))
    raw = bytearray(open(path, "rb").read())
    buf = io.BytesIO()
    np.save(buf, np.array([0, 2, 4], np.int64))
    at = raw.find(buf.getvalue())
    raw[at + len(buf.getvalue()) - 8] = 5  # docs[-1] = 5 != 4 tokens
    open(path, "wb").write(bytes(raw))
    with pytest.raises(ShardError, match=r"t-000000\.tar.*run from 0 to the number of tokens \(4\)"):
        open_token_shard(path)


def test_not_a_token_shard(tmp_path):
    path = str(tmp_path / "x.tar")
    with tarfile.open(path, "w") as tar:
        info = tarfile.TarInfo("a.json")
        info.size = 2
        tar.addfile(info, io.BytesIO(b"{}"))
    with pytest.raises(ShardError, match=r"x\.tar.*not a token shard"):
        open_token_shard(path)


def test_writer_rejects_bad_input(tmp_path):
    path = str(tmp_path / "t.tar")
    with pytest.raises(ValueError, match="uint16 or uint32"):
        write_token_shard(path, "t", np.array([1, 2], np.int64), np.array([0, 2]))
    with pytest.raises(ValueError, match="run from 0"):
        write_token_shard(path, "t", np.array([1, 2], np.uint16), np.array([0, 1]))
    with pytest.raises(ValueError, match="one label per document"):
        write_token_shard(path, "t", np.array([1, 2], np.uint16), np.array([0, 2]), np.array([1, 2]))
    with pytest.raises(ValueError, match="no dot"):
        write_token_shard(path, "t.x", np.array([1, 2], np.uint16), np.array([0, 2]))
    assert not list(tmp_path.iterdir())
