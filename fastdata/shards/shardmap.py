"""A whole shard in memory with a table of its samples: the batch path's view of a tar.

``load_shard(url)`` reads a shard into one uint8 array (local files with one read, other
URLs through ``fastdata.shards.urls.open_url``) and scans its tar headers once, with a Numba
kernel, into a ``ShardMap``: for every extension the byte offset and size of that field in
each sample (-1 where a sample lacks it). Nothing per sample is a Python object: the batch
path gathers pixels straight from ``ShardMap.data`` at these offsets, and other fields
decode from ``memoryview`` slices.

The format rules are those of ``fastdata.shards.tario`` (key up to the first dot of the basename,
extension the rest, lower-cased; members without extension and ``__meta__`` members are
skipped; header checksums verified; a key that comes back or an extension twice in a
sample is a ``ShardError``). Shards with pax or GNU long-name members, or ustar name
prefixes, are scanned by ``tario.iter_members`` instead (the writer uses pax only for long
or non-ASCII names).

NOTE [ Keys compared by hash ]
The scanning kernel compares keys by their 64-bit FNV-1a hash: consecutive members with
the same hash form one sample. Two different keys that happen to share a hash would be
taken for one sample only if they are adjacent in the shard (a non-adjacent repeat is
reported as a repeated key); the chance is about one in 2**64 per pair of neighbours.

NOTE [ Mapped shards ]
Local shards are memory-mapped read-only instead of read into a fresh array: no copy out
of the page cache and no page faults on new memory, and the shard's pages count once
however many processes map them. The pages are mapped as they are first read (the kernel
maps 16 neighbours per fault), not all at once with ``MAP_POPULATE``: it costs about the
same CPU (1.3 against 1.5 ms for a 28 MB shard here), outside the job that opens the
shard, and a shard only just opened counts little in resident memory (the benchmark's
peak RSS fell by about 40 MB, with up to four shards mapped at shard boundaries).
Rewriting or truncating a shard file while an epoch reads it is not supported (the
kernel may raise ``SIGBUS`` for pages cut off a mapped file).

NOTE [ Scans kept between epochs ]
The table of a local shard (offsets, sizes, keys, error) is kept after its first scan,
keyed by the file's identity and version, ``(device, inode, size, mtime_ns, ctime_ns)``
from ``fstat`` on the descriptor that is mapped. A later ``load_shard`` of the same file
maps it again (its pages are still in the page cache) and reuses the table, so the epochs
after the first, or after the dataset counted its samples, scan nothing. A shard written
under a temporary name and renamed (``ShardWriter``) is a new inode, and a file rewritten
in place has new times. The tables, a few dozen bytes per sample, are bounded in total
(``_SCAN_CACHE_BYTES``; the least recently used go first). Remote shards are read and
scanned every time.

NOTE [ Bad shards in the batch path ]
A shard that cannot be opened gives an empty map with ``error`` set. A shard that breaks
off (truncation, bad checksum) keeps the samples before the break, except the last one,
which may be incomplete (``tario`` does the same), and records ``error``; the batch path
treats every sample the index promised beyond ``n`` as failed with that error.
"""

from __future__ import annotations

import io
import mmap
import os
import threading
from collections import OrderedDict
from dataclasses import dataclass, field, replace

import numpy as np
from numba import njit

from fastdata.errors import FastdataError, ShardError
from fastdata.shards.tario import is_meta, iter_members, split_name
from fastdata.shards.urls import open_url

__all__ = ["ShardMap", "load_shard", "read_bytes"]

_OK, _TRUNC_HEADER, _NO_END, _BAD_CHECKSUM, _BAD_HEADER, _TRUNC_MEMBER, _TRUNC_PAD = range(7)
_BAD_SIZE, _ZERO_BLOCK = 7, 8
_MESSAGES = {
    _TRUNC_HEADER: "truncated inside a header",
    _NO_END: "ends without the end-of-archive marker (truncated?)",
    _BAD_CHECKSUM: "bad tar header checksum",
    _BAD_HEADER: "bad tar header (not a tar file?)",
    _TRUNC_MEMBER: "truncated inside a member (its size goes past the end of the file)",
    _TRUNC_PAD: "truncated after a member",
    _BAD_SIZE: "bad tar header: negative member size",
    _ZERO_BLOCK: "a zero block is followed by more data (a zeroed header? the end of a tar is "
    "zero blocks up to the end of the file)",
}
_FNV, _PRIME = np.uint64(0xCBF29CE484222325), np.uint64(0x100000001B3)


@dataclass
class ShardMap:
    """A shard's bytes and where each sample's fields lie in them.

    Attributes:
        url: the shard.
        data: the whole shard as a uint8 array.
        n: samples found.
        fields: ``{ext: (offsets, sizes)}``, int64 arrays of length ``n``; -1: absent.
        error: why the shard ended early (NOTE [ Bad shards in the batch path ]), or None.
    """

    url: str
    data: np.ndarray
    n: int
    fields: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)
    error: ShardError | None = None
    _key_pos: np.ndarray | None = None
    _key_len: np.ndarray | None = None
    _keys: list[str] | None = None

    def key(self, i: int) -> str:
        """The key of sample ``i``."""
        if self._keys is not None:
            return self._keys[i]
        pos, n = int(self._key_pos[i]), int(self._key_len[i])
        return bytes(self.data[pos : pos + n]).decode("utf-8", errors="surrogateescape")

    def view(self, ext: str, i: int) -> memoryview | None:
        """The bytes of field ``ext`` of sample ``i`` (None if absent)."""
        offsets, sizes = self.fields.get(ext, (None, None))
        if offsets is None or i >= self.n or offsets[i] < 0:
            return None
        lo = int(offsets[i])
        return memoryview(self.data)[lo : lo + int(sizes[i])]


def read_bytes(url: str) -> np.ndarray:
    """The whole shard as a uint8 array (local paths memory-mapped).

    Raises:
        ShardError: the shard cannot be opened or read.
    """
    return _read(url)[0]


def _read(url: str) -> tuple[np.ndarray, tuple | None]:
    """The shard's bytes and, for a local file, its identity (NOTE [ Scans kept between epochs ])."""
    path = url[len("file:") :].removeprefix("//") if url.startswith("file:") else url
    if "://" not in path and not path.startswith("pipe:"):
        try:
            return _map_file(path)
        except (OSError, ValueError) as exc:
            raise ShardError(url, f"cannot open: {exc}") from exc
    with open_url(url) as stream:
        try:
            return np.frombuffer(stream.read(), dtype=np.uint8), None
        except OSError as exc:
            raise ShardError(url, f"cannot read: {exc}") from exc


def _map_file(path: str) -> tuple[np.ndarray, tuple]:
    """A local file as a read-only uint8 array over the page cache (NOTE [ Mapped shards ])."""
    with open(path, "rb") as f:
        st = os.fstat(f.fileno())
        ident = (
            os.path.abspath(path),
            st.st_dev,
            st.st_ino,
            st.st_size,
            st.st_mtime_ns,
            st.st_ctime_ns,
        )
        if st.st_size == 0:
            return np.empty(0, np.uint8), ident
        flags = mmap.MAP_PRIVATE
        return np.frombuffer(
            mmap.mmap(f.fileno(), st.st_size, flags=flags, prot=mmap.PROT_READ), np.uint8
        ), ident


def load_shard(url: str) -> ShardMap:
    """Reads and scans one shard (see the module docstring). Never raises for bad data.

    A shard that cannot be read, or whose samples are not contiguous, gives a map with
    ``n == 0`` and ``error`` set; other damage keeps the samples before it. A local shard
    scanned before is not scanned again (NOTE [ Scans kept between epochs ]).
    """
    try:
        data, ident = _read(url)
    except ShardError as exc:
        return ShardMap(url, np.empty(0, np.uint8), 0, error=exc)
    table = _SCANS.get(ident) if ident is not None else None
    if table is not None:
        return replace(table, url=url, data=data)
    try:
        smap = _scan_shard(url, data)
    except ShardError as exc:
        smap = ShardMap(url, data, 0, error=exc)
    if ident is not None:
        _SCANS.put(ident, replace(smap, data=_NO_DATA))
    return smap


_NO_DATA = np.empty(0, np.uint8)
_SCAN_CACHE_BYTES = 64 << 20


class _ScanCache:
    """Shard tables by file identity, least recently used dropped beyond ``limit`` bytes."""

    def __init__(self, limit: int) -> None:
        self.limit, self.total = limit, 0
        self.tables: OrderedDict[tuple, tuple[ShardMap, int]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, ident: tuple) -> ShardMap | None:
        with self._lock:
            hit = self.tables.get(ident)
            if hit is None:
                return None
            self.tables.move_to_end(ident)
            return hit[0]

    def put(self, ident: tuple, table: ShardMap) -> None:
        for offsets, sizes in table.fields.values():
            offsets.flags.writeable = sizes.flags.writeable = False  # shared by every later map
        size = 256 + sum(o.nbytes + s.nbytes for o, s in table.fields.values()) + 16 * table.n
        with self._lock:
            old = self.tables.pop(ident, None)
            self.total += size - (old[1] if old else 0)
            self.tables[ident] = (table, size)
            while self.total > self.limit and len(self.tables) > 1:
                self.total -= self.tables.popitem(last=False)[1][1]


_SCANS = _ScanCache(_SCAN_CACHE_BYTES)


def _scan_shard(url: str, data: np.ndarray) -> ShardMap:
    cap = len(data) // 512 + 1
    hdr, off, size = np.empty(cap, np.int64), np.empty(cap, np.int64), np.empty(cap, np.int64)
    kind = np.empty(cap, np.uint8)
    count, status, at = _scan_headers(data, hdr, off, size, kind)
    hdr, off, size, kind = hdr[:count], off[:count], size[:count], kind[:count]
    error = None
    if status != _OK:
        error = ShardError(url, f"{_MESSAGES[status]} at byte {at}, after {count} members")
    if count == 0 and error is not None:
        return ShardMap(url, data, 0, error=error)
    regular = (kind == ord("0")) | (kind == 0) | (kind == ord("7"))
    if not regular.all() or _has_prefix(data, hdr):
        return _slow_scan(url, data)
    key_len, key_hash, ext_hash, keep = (
        np.empty(count, t) for t in (np.int64, np.uint64, np.uint64, np.bool_)
    )
    _name_parts(data, hdr, key_len, key_hash, ext_hash, keep)
    hdr, off, size = hdr[keep], off[keep], size[keep]
    key_len, key_hash, ext_hash = key_len[keep], key_hash[keep], ext_hash[keep]
    if len(hdr) == 0:
        return ShardMap(url, data, 0, error=error)
    start = np.ones(len(hdr), bool)
    start[1:] = key_hash[1:] != key_hash[:-1]
    sample = np.cumsum(start) - 1
    n = int(sample[-1]) + 1
    if len(np.unique(key_hash[start])) != n:
        dup = _first_duplicate(key_hash[start])
        raise ShardError(
            url,
            "files of this sample are not contiguous in the shard",
            _key_at(data, hdr[start][dup], key_len[start][dup]),
        )
    ext_values, ext_id = np.unique(ext_hash, return_inverse=True)
    if len(np.unique(sample * len(ext_values) + ext_id)) != len(sample):
        raise ShardError(url, "a sample holds the same extension twice (duplicate file)")
    fields = {}
    for e in range(len(ext_values)):
        m = int(np.argmax(ext_id == e))
        name = (
            bytes(data[hdr[m] : hdr[m] + 100]).split(b"\0", 1)[0].decode("utf-8", "surrogateescape")
        )
        ext = split_name(name)[1]
        fields[ext] = _columns(n, sample[ext_id == e], off[ext_id == e], size[ext_id == e])
    smap = ShardMap(url, data, n, fields, error, _key_pos=hdr[start], _key_len=key_len[start])
    return _drop_last_if_broken(smap)


def _columns(
    n: int, sample: np.ndarray, off: np.ndarray, size: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    offsets, sizes = np.full(n, -1, np.int64), np.zeros(n, np.int64)
    offsets[sample], sizes[sample] = off, size
    return offsets, sizes


def _drop_last_if_broken(smap: ShardMap) -> ShardMap:
    if smap.error is not None and smap.n > 0:
        smap.n -= 1
        smap.fields = {k: (o[: smap.n], s[: smap.n]) for k, (o, s) in smap.fields.items()}
    return smap


def _slow_scan(url: str, data: np.ndarray) -> ShardMap:
    """The same map through ``tario.iter_members`` (pax / long names / ustar prefixes)."""
    stream = io.BytesIO(data.tobytes())
    keys: list[str] = []
    cols: dict[str, dict[int, tuple[int, int]]] = {}
    error = None
    try:
        for name, payload in iter_members(stream, url):
            end = stream.tell() - (-len(payload) % 512)
            key, ext = split_name(name)
            if key is None or is_meta(name):
                continue
            if not keys or keys[-1] != key:
                if key in keys:
                    raise ShardError(
                        url, "files of this sample are not contiguous in the shard", key
                    )
                keys.append(key)
            col = cols.setdefault(ext, {})
            if len(keys) - 1 in col:
                raise ShardError(url, f"duplicate file {name!r} (extension {ext!r} twice)", key)
            col[len(keys) - 1] = (end - len(payload), len(payload))
    except ShardError as exc:
        if "not contiguous" in exc.message or "duplicate" in exc.message:
            raise
        error = exc
    n = len(keys)
    fields = {}
    for ext, col in cols.items():
        idx = np.fromiter(col, np.int64, len(col))
        vals = np.array(list(col.values()), np.int64).reshape(-1, 2)
        fields[ext] = _columns(n, idx, vals[:, 0], vals[:, 1])
    return _drop_last_if_broken(ShardMap(url, data, n, fields, error, _keys=keys))


def _first_duplicate(values: np.ndarray) -> int:
    seen: set[int] = set()
    for i, v in enumerate(values.tolist()):
        if v in seen:
            return i
        seen.add(v)
    raise FastdataError("no duplicate found")  # unreachable: the caller saw one


def _key_at(data: np.ndarray, pos: int, length: int) -> str:
    return bytes(data[pos : pos + length]).decode("utf-8", errors="surrogateescape")


def _has_prefix(data: np.ndarray, hdr: np.ndarray) -> bool:
    if len(hdr) == 0:
        return False
    ustar = np.all(
        data[hdr[:, None] + np.arange(257, 262)] == np.frombuffer(b"ustar", np.uint8), axis=1
    )
    return bool(np.any(ustar & (data[hdr + 345] != 0)))


@njit(nogil=True, cache=True)
def _octal(buf, lo, n):
    value, i = 0, lo
    while i < lo + n and buf[i] == 32:
        i += 1
    while i < lo + n and buf[i] != 0 and buf[i] != 32:
        d = buf[i] - 48
        if d < 0 or d > 7:
            return -1
        value = value * 8 + d
        i += 1
    return value


@njit(nogil=True, cache=True)
def _scan_headers(buf, hdr, off, size, kind):
    """Walks the headers: fills the member arrays; returns ``(count, status, byte offset)``.

    Every size is checked against the end of ``buf`` before it moves the position
    (NOTE [ Malformed headers ] in ``fastdata.shards.tario``).
    """
    pos, n, total = 0, 0, len(buf)
    while True:
        if pos >= total:
            return n, _NO_END, pos
        if pos + 512 > total:
            return n, _TRUNC_HEADER, pos
        check, zero = 0, True
        for k in range(512):
            b = buf[pos + k]
            check += b
            if b != 0:
                zero = False
        if zero:
            for k in range(pos + 512, total):
                if buf[k] != 0:
                    return n, _ZERO_BLOCK, pos
            return n, _OK, pos
        for k in range(148, 156):
            check -= buf[pos + k]
        stored = _octal(buf, pos + 148, 8)
        if stored < 0:
            return n, _BAD_HEADER, pos
        if check + 256 != stored:
            return n, _BAD_CHECKSUM, pos
        first = buf[pos + 124]
        if first & 0xC0 == 0x80:  # GNU base-256; stop before the value can overflow int64
            length = first & 0x3F
            for k in range(125, 136):
                length = length * 256 + buf[pos + k]
                if length > total:
                    return n, _TRUNC_MEMBER, pos
        elif first & 0x80:  # the sign bit of base-256
            return n, _BAD_SIZE, pos
        else:
            length = _octal(buf, pos + 124, 12)
            if length < 0:
                return n, _BAD_HEADER, pos
        if length > total - pos - 512:
            return n, _TRUNC_MEMBER, pos
        hdr[n], off[n], size[n], kind[n] = pos, pos + 512, length, buf[pos + 156]
        n += 1
        pos += 512 + length + (-length) % 512
        if pos > total:
            return n - 1, _TRUNC_PAD, pos


@njit(nogil=True, cache=True)
def _name_parts(buf, hdr, key_len, key_hash, ext_hash, keep):
    """Per member: key length, FNV-1a hashes of key and lower-cased extension, and whether to keep it."""
    for m in range(len(hdr)):
        p = hdr[m]
        length = 0
        while length < 100 and buf[p + length] != 0:
            length += 1
        slash = -1
        for k in range(length):
            if buf[p + k] == 47:
                slash = k
        dot = -1
        for k in range(slash + 1, length):
            if buf[p + k] == 46:
                dot = k
                break
        meta = (
            slash < 0 and length >= 2 and buf[p] == 95 and buf[p + 1] == 95
            and buf[p + length - 2] == 95 and buf[p + length - 1] == 95
        )  # fmt: skip
        keep[m] = dot > slash + 1 and not meta
        key_len[m] = dot
        h = _FNV
        for k in range(max(dot, 0)):
            h = (h ^ np.uint64(buf[p + k])) * _PRIME
        key_hash[m] = h
        h = _FNV
        for k in range(dot + 1, length):
            c = buf[p + k]
            if 65 <= c <= 90:
                c += 32
            h = (h ^ np.uint64(c)) * _PRIME
        ext_hash[m] = h
