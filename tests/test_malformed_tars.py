"""Malformed tar shards: every reader reports a ShardError naming shard and offset, or a counted skip.

The shards are written by ``ShardWriter`` and then damaged in one header (checksum
recomputed), so each case differs from a good shard in exactly the bytes under test;
Python's ``tarfile`` is the reference for which of them are not valid tars.
"""

from __future__ import annotations

import gzip
import io
import os
import subprocess
import sys
import tarfile

import pytest

from fastdata import ShardWriter, iter_samples
from fastdata.errors import FastdataError, ShardError
from fastdata.loading.shard_dataset import ShardDataset
from fastdata.shards.index import write_index
from fastdata.shards.shardmap import load_shard
from fastdata.shards.verify import verify

N = 6


def good_shard(path) -> bytes:
    with ShardWriter(str(path).replace("000000", "%06d"), maxcount=100, index=False) as sink:
        for i in range(N):
            sink.write({"__key__": f"k{i}", "cls": i, "txt": "x" * (100 + i)})
    return path.read_bytes()


def header_offsets(data: bytes) -> list[int]:
    """Byte offsets of the member headers, read with tarfile (the reference)."""
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        return [info.offset for info in tar.getmembers()]


def patch(data: bytes, at: int, field: slice, value: bytes) -> bytes:
    """``data`` with the header at ``at`` given ``value`` in ``field``, checksum recomputed."""
    out = bytearray(data)
    lo, hi = at + field.start, at + field.stop
    out[lo:hi] = value.ljust(hi - lo, b"\0")[: hi - lo]
    out[at + 148 : at + 156] = b" " * 8
    out[at + 148 : at + 156] = b"%06o\0 " % sum(out[at : at + 512])
    return bytes(out)


def pax_member(at_data: bytes, records: bytes) -> bytes:
    """A pax header member (type ``x``) holding ``records`` inserted before the first member."""
    info = tarfile.TarInfo("././@PaxHeader")
    info.type, info.size = tarfile.XHDTYPE, len(records)
    block = info.tobuf(tarfile.USTAR_FORMAT) + records + b"\0" * (-len(records) % 512)
    return block + at_data


def long_name_member(at_data: bytes, name: bytes) -> bytes:
    info = tarfile.TarInfo("././@LongLink")
    info.type, info.size = tarfile.GNUTYPE_LONGNAME, len(name) + 1
    data = name + b"\0"
    return info.tobuf(tarfile.USTAR_FORMAT) + data + b"\0" * (-len(data) % 512) + at_data


SIZE = slice(124, 136)


def mutations(data: bytes) -> dict[str, bytes]:
    """Damaged versions of a good shard, by name (each is a bad tar for tarfile too)."""
    offsets = header_offsets(data)
    cls = offsets[2]  # the second sample's .cls member
    zeroed = bytearray(data)
    zeroed[offsets[6] : offsets[6] + 512] = bytes(512)
    cases = {
        "base256_2**64": patch(data, cls, SIZE, b"\x80" + ((1 << 64) - 1536).to_bytes(11, "big")),
        "base256_2**88": patch(data, cls, SIZE, b"\x81" + bytes(11)),
        "base256_negative": patch(data, cls, SIZE, b"\xff" * 12),
        "octal_huge": patch(data, cls, SIZE, b"777777777777"),
        "octal_garbage": patch(data, cls, SIZE, b"12x4"),
        "pax_no_space": pax_member(data, b"garbage"),
        "pax_bad_length": pax_member(data, b"zz path=a\n"),
        "pax_too_long": pax_member(data, b"99 path=a\n"),
        "pax_not_utf8_key": pax_member(data, b"12 \xff\xfe=abcd\n"),
        "zeroed_header": bytes(zeroed),
        "bad_checksum": data[:cls + 150] + b"7" + data[cls + 151 :],
        "truncated": data[: offsets[5] + 700],
        "empty": b"",
        "garbage": b"this is not a tar file " * 100,
        "gzip": gzip.compress(data),
    }
    assert sorted(cases) == sorted(CASES)
    return cases


def tarfile_rejects(data: bytes) -> bool:
    """Whether Python's tarfile reads fewer members than the good shard or raises."""
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
            members = tar.getmembers()
            for m in members:
                tar.extractfile(m).read()
            return len(members) < 2 * N
    except (tarfile.TarError, OSError, ValueError, OverflowError, UnicodeDecodeError):
        return True


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    folder = tmp_path_factory.mktemp("malformed")
    data = good_shard(folder / "good-000000.tar")
    out = {}
    for name, bad in mutations(data).items():
        path = folder / f"{name.replace('*', '')}.tar"
        path.write_bytes(bad)
        out[name] = str(path)
    return out


def test_mutations_are_bad_tars_for_the_reference(shards):
    for name, path in shards.items():
        if not name.startswith("pax") and name != "zeroed_header":  # tarfile ignores these
            with open(path, "rb") as f:
                assert tarfile_rejects(f.read()), name


CASES = [
    "base256_2**64", "base256_2**88", "base256_negative", "octal_huge", "octal_garbage",
    "pax_no_space", "pax_bad_length", "pax_too_long", "pax_not_utf8_key", "zeroed_header",
    "bad_checksum", "truncated", "empty", "garbage", "gzip",
]  # fmt: skip


@pytest.mark.parametrize("case", CASES)
def test_every_reader_reports_a_shard_error(shards, case):
    path = shards[case]
    with pytest.raises(ShardError) as info:
        list(iter_samples(path))
    assert info.value.url == path
    smap = load_shard(path)
    assert isinstance(smap.error, ShardError) and smap.error.url == path
    problems, _ = verify(path)
    assert problems and all(p.shard == path for p in problems)
    with pytest.raises(ShardError):
        list(ShardDataset(path, fields=("cls",)).iter_batches(2, num_workers=0))
    ds = ShardDataset(path, fields=("cls",), on_error="skip")
    batches = list(ds.iter_batches(2, num_workers=0))
    assert ds.stats.skipped == 1
    assert sum(len(b[0]) for b in batches) == smap.n


def test_offsets_are_named(shards):
    with pytest.raises(ShardError, match=r"at byte \d+"):
        list(iter_samples(shards["zeroed_header"]))
    assert "at byte" in str(load_shard(shards["base256_2**64"]).error)


def test_zeroed_header_is_not_the_end(shards):
    """A zero block followed by data: reported, not read as the end (3 of 6 samples)."""
    problems, total = verify(shards["zeroed_header"])
    assert any("zero block" in p.message for p in problems)
    assert "zero block" in str(load_shard(shards["zeroed_header"]).error)


def test_good_shard_with_trailing_record_padding_is_fine(tmp_path):
    path = tmp_path / "pad-000000.tar"
    data = good_shard(path)
    path.write_bytes(data + bytes(10240))  # tarfile's record padding: zeros to the end
    assert len(list(iter_samples(str(path)))) == N
    assert load_shard(str(path)).error is None
    assert verify(str(path)) == ([], N)


def test_huge_size_does_not_crash_the_process(shards):
    """The issue's repro (exit 139 before): run in a child so a crash fails the test."""
    code = (
        "from fastdata.loading.shard_dataset import ShardDataset\n"
        f"ds = ShardDataset({shards['base256_2**64']!r}, fields=('cls',), on_error='skip')\n"
        "print(sum(len(b[0]) for b in ds.iter_batches(2, num_workers=0)), ds.stats.skipped)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == [str(len(list(_good_prefix(shards["base256_2**64"])))), "1"]


def test_missing_shard_raises_or_counts(tmp_path):
    path = str(tmp_path / "does-not-exist.tar")
    with pytest.raises(ShardError):
        list(ShardDataset(path, fields=("cls",)).iter_batches(4))
    ds = ShardDataset(path, fields=("cls",), on_error="skip")
    assert list(ds.iter_batches(4)) == [] and ds.stats.skipped == 1


def test_torch_iteration_counts_a_broken_shard(shards):
    ds = ShardDataset(shards["truncated"], fields=("cls",), on_error="skip")
    samples = list(ds)
    assert len(samples) == len(list(_good_prefix(shards["truncated"]))) and ds.stats.skipped == 1


def _good_prefix(path):
    try:
        yield from iter_samples(path)
    except ShardError:
        return


def test_a_truncated_pipe_shard_needs_an_index_and_its_lost_samples_are_skipped(shards, tmp_path):
    """A remote shard has no index beside it: the error says how to make one; with the index
    of the whole shard, the samples the truncation lost are counted skips, the batches kept."""
    url = f"pipe:cat {shards['truncated']}"
    with pytest.raises(FastdataError, match="fastdata index SHARDS"):
        ShardDataset(url, fields=("cls",), on_error="skip").counts()
    index = str(tmp_path / "t.index.json")
    write_index(index, {"shards": [{"name": os.path.basename(shards["truncated"]), "count": N}]})
    ds = ShardDataset(url, fields=("cls",), on_error="skip", index=index)
    batches = list(ds.iter_batches(2, num_workers=1))
    good = len(list(_good_prefix(shards["truncated"])))
    assert sum(len(b[0]) for b in batches) == N and ds.stats.skipped == N - good
    with pytest.raises(ShardError):
        list(ShardDataset(url, fields=("cls",), index=index).iter_batches(2, num_workers=1))


def test_non_utf8_long_name_is_read_like_tarfile(tmp_path):
    path = tmp_path / "ln-000000.tar"
    data = long_name_member(good_shard(path), b"caf\xe9/" + b"n" * 120 + b".cls")
    path.write_bytes(data)
    ours = [s["__key__"] for s in iter_samples(str(path))]
    with tarfile.open(path, encoding="utf-8", errors="surrogateescape") as tar:
        assert tar.getnames()[0].split(".")[0] == ours[0]


@pytest.mark.parametrize("case", ["duplicate", "out_of_order"])
def test_contiguity_errors_without_an_index(tmp_path, case):
    path = tmp_path / f"{case}.tar"
    names = ["a.cls", "a.cls", "b.cls"] if case == "duplicate" else ["a.cls", "b.cls", "a.txt"]
    with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as tar:
        for name in names:
            info = tarfile.TarInfo(name)
            info.size = 1
            tar.addfile(info, io.BytesIO(b"1"))
    with pytest.raises(ShardError):
        list(iter_samples(str(path)))
    with pytest.raises(ShardError):
        list(ShardDataset(str(path), fields=("cls",)).iter_batches(2, num_workers=0))
    ds = ShardDataset(str(path), fields=("cls",), on_error="skip")
    list(ds.iter_batches(2, num_workers=0))
    assert ds.stats.skipped == 1


def test_verify_cli_reports_every_shard_and_exits_1(shards):
    """Each bad shard's own problem is printed, one line each, no traceback."""
    names = ["octal_huge", "base256_2**88", "pax_no_space", "zeroed_header"]
    paths = [shards[n] for n in names]
    done = subprocess.run(
        [sys.executable, "-m", "fastdata.cli", "verify", *paths], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 1
    assert "Traceback" not in done.stderr + done.stdout
    lines = done.stdout.splitlines()
    for path in paths:
        assert any(line.startswith(path + ":") for line in lines), (path, lines)
    assert lines[-1].startswith(f"{len(lines) - 1} problem")
