"""Writing WebDataset-layout tar shards.

``ShardWriter`` takes sample dicts (``{"__key__": key, ext: value, ...}``), as the
webdataset library's writer does, and splits them into shards by sample count and byte
size. Each shard is written under ``<name>.tmp`` and renamed when complete, so a killed
writer never leaves a shard that looks whole. Headers carry a fixed mtime, owner and mode,
so the same samples always give byte-identical shards (and the same content hashes).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import tarfile
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any, BinaryIO

import numpy as np

from fastdata.shards.files import create_new
from fastdata.shards.index import index_path_for_shard, write_index


@dataclass
class ShardInfo:
    """What the index records about one complete shard."""

    name: str
    count: int
    bytes: int
    sha256: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def encode_value(key: str, ext: str, value: Any) -> bytes:
    """Encodes one field's value to bytes by its type (bytes pass through unchanged).

    ``str`` becomes UTF-8, integers their decimal text (the ``.cls`` convention), NumPy
    arrays the ``.npy`` format, dicts and lists JSON.

    Raises:
        TypeError: the value's type has no encoding; the error names key and field.
    """
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    if isinstance(value, str):
        return value.encode("utf-8")
    if isinstance(value, (bool, np.bool_)):
        raise TypeError(f"sample {key!r}, field {ext!r}: booleans have no encoding; use int")
    if isinstance(value, (int, np.integer)):
        return str(int(value)).encode("ascii")
    if isinstance(value, np.ndarray):
        buf = io.BytesIO()
        np.save(buf, value, allow_pickle=False)
        return buf.getvalue()
    if isinstance(value, (dict, list)):
        return json.dumps(value).encode("utf-8")
    raise TypeError(
        f"sample {key!r}, field {ext!r}: cannot encode {type(value).__name__}; "
        "give bytes, str, int, a NumPy array, a dict or a list"
    )


def check_key(key: Any) -> str:
    """Checks a sample key against the WebDataset rules and returns it.

    Raises:
        ValueError: the key is empty or its basename has a dot (which would move part of
            the key into the extension when read back).
    """
    if not isinstance(key, str) or not key:
        raise ValueError(f"sample key must be a non-empty string, got {key!r}")
    base = key.rsplit("/", 1)[-1]
    if not base or "." in base:
        raise ValueError(
            f"sample key {key!r}: the basename must be non-empty and have no dot "
            "(the WebDataset key ends at the first dot); replace dots, e.g. with '_'"
        )
    return key


def tar_header(name: str, size: int, mtime: int = 0) -> bytes:
    """The tar header block(s) of a regular file (mode 0444, owner 0, fixed mtime).

    Short ASCII names get a plain ustar header built directly; longer names, non-ASCII
    names and huge sizes go through ``tarfile``'s pax encoding.
    """
    raw = name.encode("utf-8", errors="surrogateescape")
    if len(raw) > 100 or not name.isascii() or size >= 8**11:
        info = tarfile.TarInfo(name)
        info.size, info.mtime, info.mode = size, mtime, 0o444
        return info.tobuf(format=tarfile.PAX_FORMAT, encoding="utf-8", errors="surrogateescape")
    header = bytearray(
        raw.ljust(100, b"\0") + b"0000444\0" + b"0000000\0" + b"0000000\0"
        + b"%011o\0" % size + b"%011o\0" % mtime + b" " * 8 + b"0" + b"\0" * 100
        + b"ustar\x0000" + b"\0" * 247
    )
    header[148:156] = b"%06o\0 " % sum(header)
    return bytes(header)


def member_size(name: str, size: int) -> int:
    """The bytes one tar member of ``size`` bytes named ``name`` takes in a shard."""
    simple = name.isascii() and len(name) <= 100 and size < 8**11
    header = 512 if simple else len(tar_header(name, size))
    return header + size + (-size % tarfile.BLOCKSIZE)


_NUMBER_FIELD = re.compile(r"%0?\d*d")


def check_pattern(pattern: str) -> None:
    """Checks a shard pattern: one number field (``%d``, ``%06d``) in the file name, nothing else.

    Raises:
        ValueError: no number field, two, another conversion (``%s``), or a field in the folder.
    """
    folder, name = os.path.split(pattern)
    name = name.replace("%%", "")
    fields = _NUMBER_FIELD.findall(name)
    if len(fields) != 1 or "%" in _NUMBER_FIELD.sub("", name) or "%" in folder.replace("%%", ""):
        raise ValueError(
            f"shard pattern {pattern!r} needs exactly one number field such as %06d in its file "
            "name and no other % field (write %% for a literal %), e.g. out/train-%06d.tar"
        )


class TarShard:
    """One tar file being written under a temporary name; ``finish`` renames it.

    Args:
        path: the shard's final path.
        mtime: the modification time stamped on every member.
        tmp_suffix: appended to ``path`` while writing; give each writer its own when two
            could write the same shard at once (a retried task and its lost first attempt).
    """

    def __init__(self, path: str, mtime: int = 0, tmp_suffix: str = ".tmp") -> None:
        self.path = path
        self.tmp_path = path + tmp_suffix
        self.mtime = mtime
        self.count = 0
        self.size = 0
        self._hash = hashlib.sha256()
        self._file: BinaryIO = create_new(self.tmp_path)  # NOTE [ Temporary files ]

    def _put(self, data: bytes) -> None:
        self._file.write(data)
        self._hash.update(data)
        self.size += len(data)

    def add_file(self, name: str, data: bytes) -> None:
        self._put(tar_header(name, len(data), self.mtime))
        self._put(data)
        pad = -len(data) % tarfile.BLOCKSIZE
        if pad:
            self._put(b"\0" * pad)

    def finish(self) -> ShardInfo:
        """Writes the end-of-archive marker, closes and renames the shard into place."""
        self._put(b"\0" * (2 * tarfile.BLOCKSIZE))
        self._file.close()
        os.replace(self.tmp_path, self.path)
        return ShardInfo(os.path.basename(self.path), self.count, self.size, self._hash.hexdigest())

    def abandon(self) -> None:
        """Closes and deletes the incomplete shard."""
        self._file.close()
        if os.path.exists(self.tmp_path):
            os.remove(self.tmp_path)


class ShardWriter:
    """Writes samples into a numbered series of tar shards.

    Args:
        pattern: output path with a printf-style number, e.g. ``"out/train-%06d.tar"``.
        maxcount: most samples per shard.
        maxsize: most bytes per shard (a shard is closed once it reaches this size).
        start_shard: number of the first shard.
        on_shard: called with the ``ShardInfo`` of each shard when it is complete.
        index: on ``close``, write the index beside the shards (``out/train.index.json``
            for ``out/train-%06d.tar``; the format ``fastdata convert`` writes: per shard
            name, count, bytes and SHA-256, plus the sample count and the class counts of
            integer ``cls`` fields), so that readers know the lengths without counting.
        tmp_suffix: appended to a shard's name while it is written (see ``TarShard``).

    Example:
        >>> with ShardWriter("out/train-%06d.tar", maxcount=1000) as sink:
        ...     sink.write({"__key__": "cat/0001", "jpg": jpeg_bytes, "cls": 3})
        >>> sink.shards  # ShardInfo for every complete shard (out/train.index.json lists them)
    """

    def __init__(
        self,
        pattern: str,
        maxcount: int = 100_000,
        maxsize: float = 3e9,
        start_shard: int = 0,
        on_shard: Callable[[ShardInfo], None] | None = None,
        tmp_suffix: str = ".tmp",
        index: bool = True,
    ) -> None:
        check_pattern(pattern)
        if maxcount < 1 or maxsize < 1:
            raise ValueError(f"maxcount and maxsize must be positive, got {maxcount}, {maxsize}")
        self.pattern = pattern
        self.maxcount = maxcount
        self.maxsize = maxsize
        self.next_shard = start_shard
        self.on_shard = on_shard
        self.index_path = index_path_for_shard(pattern % start_shard) if index else None
        self.class_counts: dict[str, int] = {}
        self.tmp_suffix = tmp_suffix
        self.shards: list[ShardInfo] = []
        self._current: TarShard | None = None

    def write(self, sample: dict[str, Any]) -> None:
        """Writes one sample; its fields are encoded by ``encode_value``."""
        key = check_key(sample.get("__key__"))
        files = [
            (ext, encode_value(key, ext, value))
            for ext, value in sample.items()
            if not ext.startswith("__")
        ]
        if not files:
            raise ValueError(f"sample {key!r} has no fields to write")
        shard = self._shard_for_next()
        for ext, data in files:
            if not ext or ext.startswith(".") or "/" in ext:
                raise ValueError(f"sample {key!r}: bad field name {ext!r}")
            shard.add_file(f"{key}.{ext}", data)
        shard.count += 1
        label = sample.get("cls")
        if isinstance(label, (int, np.integer)) and not isinstance(label, (bool, np.bool_)):
            self.class_counts[str(int(label))] = self.class_counts.get(str(int(label)), 0) + 1
        if shard.count >= self.maxcount or shard.size >= self.maxsize:
            self._finish_current()

    def _shard_for_next(self) -> TarShard:
        cur = self._current
        if cur is None:
            path = self.pattern % self.next_shard
            os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
            cur = self._current = TarShard(path, tmp_suffix=self.tmp_suffix)
            self.next_shard += 1
        return cur

    def _finish_current(self) -> None:
        if self._current is None:
            return
        info = self._current.finish()
        self._current = None
        self.shards.append(info)
        if self.on_shard is not None:
            self.on_shard(info)

    def close(self, empty_shard: bool = False) -> list[ShardInfo]:
        """Completes the last shard and writes the index (unless ``index=False``); returns
        the infos of every shard written.

        Args:
            empty_shard: when no sample was written at all, write one empty shard (a valid
                tar of no members), so that a numbered series of shards has no gap.
        """
        if empty_shard and not self.shards:
            self._shard_for_next()
        self._finish_current()
        if self.index_path is not None and self.shards:
            stats = {"class_counts": dict(sorted(self.class_counts.items(), key=lambda kv: int(kv[0])))}
            write_index(self.index_path, {
                "num_samples": sum(s.count for s in self.shards),
                "shards": [s.to_dict() for s in self.shards],
                "stats": stats if self.class_counts else {},
            })  # fmt: skip
        return self.shards

    def abort(self) -> None:
        """Drops the shard being written (complete shards stay)."""
        if self._current is not None:
            self._current.abandon()
            self._current = None

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()
