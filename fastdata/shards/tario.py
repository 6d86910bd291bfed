"""Tar streams to samples: the reading half of the WebDataset format.

Three plain stages, chained by ``iter_samples``:

1. ``open_url`` (in ``fastdata.shards.urls``) gives a byte stream per shard;
2. ``iter_members`` walks the tar headers of one stream and yields ``(name, bytes)``;
3. ``group_samples`` groups consecutive members by key into sample dicts
   ``{"__key__": key, "__url__": url, ext: bytes, ...}``.

Key and extension follow the webdataset rule: the key is the member path up to the first
dot of its basename, the extension is the rest, lower-cased. A sample ends where its key
changes or where its shard ends, so samples never merge across shards. A key that comes
back after another key in the same shard means the sample's files were not contiguous,
which is a ``ShardError``.

NOTE [ Why a hand-written tar parser ]
Python's ``tarfile`` builds a ``TarInfo`` object per member and decodes every header field;
for shards of small samples (a 32×32 PNG plus a label) that dominates reading time. This
parser reads only name, size, type and checksum from each 512-byte header with three
buffered ``read`` calls per member, handles the POSIX pax (``x``/``g``) and GNU long-name
(``L``) extensions that ``tarfile`` writes for long paths, and verifies every header
checksum so a corrupt header is reported rather than misread.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from typing import BinaryIO

from fastdata.errors import ShardError
from fastdata.shards.urls import expand_urls, open_url

BLOCK = 512
_REGULAR = (b"0", b"\0", b"7")
_META_PREFIX = "__"


def is_meta(name: str) -> bool:
    """Whether a member is webdataset metadata (``__name__`` at the top level), which readers skip."""
    return "/" not in name and name.startswith(_META_PREFIX) and name.endswith(_META_PREFIX)



def iter_samples(urls: str | Iterable[str], *, fields: set[str] | None = None) -> Iterator[dict]:
    """Yields the samples of the given shards, in order.

    Args:
        urls: shard paths or URLs; brace patterns and ``::`` lists are expanded.
        fields: if given, only these extensions are kept in each sample.

    Raises:
        ShardError: a shard cannot be opened, is truncated, has a bad header or a
            non-contiguous sample; the error names the shard and key.
    """
    for url in expand_urls(urls):
        with open_url(url) as stream:
            yield from group_samples(iter_members(stream, url), url, fields=fields)


def iter_members(stream: BinaryIO, url: str) -> Iterator[tuple[str, bytes]]:
    """Yields ``(name, data)`` for each regular file of a tar stream.

    Every header field is validated before it is used (NOTE [ Malformed headers ]).

    Raises:
        ShardError: the stream ends inside a member or lacks the end-of-archive marker, a
            header's checksum or size is wrong, a pax record or long name is malformed, or
            a zero block is followed by more data; the error names the byte offset.
    """
    read = stream.read
    long_name: str | None = None
    pax_global: dict[str, str] = {}
    pax: dict[str, str] = {}
    last = None
    pos = 0
    while True:
        header = read(BLOCK)
        if len(header) < BLOCK:
            raise ShardError(url, _truncated(header, last, pos))
        if header.count(0) == BLOCK:
            _check_end(read, url, pos)
            return
        name, size, kind = _parse_header(header, url, last, pos)
        data = _read_exact(read, size)
        if len(data) < size:
            raise ShardError(
                url, f"truncated inside member {name!r} at byte {pos} ({len(data)} of {size} bytes)"
            )
        pad = -size % BLOCK
        if pad and len(read(pad)) < pad:
            raise ShardError(url, f"truncated after member {name!r} at byte {pos}")
        at, pos = pos, pos + BLOCK + size + pad
        if kind in _REGULAR:
            name = pax.get("path") or long_name or name
            long_name, pax = None, {}
            last = name
            yield name, data
        elif kind == b"L":
            long_name = data.split(b"\0", 1)[0].decode("utf-8", errors="surrogateescape")
        elif kind == b"x":
            pax = {**pax_global, **_parse_pax(data, url, at)}
        elif kind == b"g":
            pax_global = _parse_pax(data, url, at)
        else:
            long_name, pax = None, {}


# NOTE [ Malformed headers ]
# A shard is untrusted input: a header may claim any size, a pax record any length, a name
# any bytes. Sizes are read in pieces of at most ``_READ_PIECE`` bytes, so a size field of
# 2**63 or an octal 777777777777 meets the end of the stream (a truncation error) instead
# of allocating it; a negative base-256 size is an error. Pax records are parsed field by
# field and any inconsistency (a length that is not a number, that points past the block,
# a record without ``=``, a key that is not UTF-8) is a ``ShardError`` naming the shard
# and the offset of the header, never a ``ValueError``, ``UnicodeDecodeError``,
# ``OverflowError`` or ``MemoryError``. Names that are not UTF-8 are kept with
# ``surrogateescape``, as ``tarfile`` does. One zero block ends the archive only if
# nothing but zeros follows it (the two end blocks and the record padding): a zeroed
# header in the middle of a shard would otherwise hide every member after it.
_READ_PIECE = 1 << 26


def _read_exact(read, size: int) -> bytes:
    """Up to ``size`` bytes; fewer only at the end of the stream (NOTE [ Malformed headers ])."""
    if size <= _READ_PIECE:
        return read(size)
    pieces, got = [], 0
    while got < size:
        piece = read(min(_READ_PIECE, size - got))
        if not piece:
            break
        pieces.append(piece)
        got += len(piece)
    return b"".join(pieces)


def _check_end(read, url: str, pos: int) -> None:
    """After a zero block at ``pos``: only zeros may follow (NOTE [ Malformed headers ])."""
    where = pos + BLOCK
    while True:
        rest = read(_READ_PIECE if where - pos > 16 * BLOCK else BLOCK)
        if not rest:
            return
        if rest.count(0) != len(rest):
            first = where + next(i for i, b in enumerate(rest) if b)
            raise ShardError(
                url,
                f"a zero block at byte {pos} is followed by more data at byte {first} "
                "(a zeroed header? the end of a tar is zero blocks up to the end of the file)",
            )
        where += len(rest)


def _parse_header(header: bytes, url: str, last: str | None, pos: int) -> tuple[str, int, bytes]:
    stored = header[148:156]
    if sum(header) - sum(stored) + 8 * 32 != _octal(stored, url, last, pos):
        raise ShardError(url, f"bad tar header checksum at byte {pos} (after member {last!r})")
    name = header[:100].split(b"\0", 1)[0]
    if header[257:262] == b"ustar" and header[345] != 0:
        name = header[345:500].split(b"\0", 1)[0] + b"/" + name
    size_field = header[124:136]
    if size_field[0] & 0x80:  # GNU base-256 encoding for sizes of 8 GiB and more
        if size_field[0] & 0x40:  # the sign bit
            raise ShardError(url, f"bad tar header at byte {pos}: negative member size")
        size = int.from_bytes(bytes([size_field[0] & 0x3F]) + size_field[1:], "big")
    else:
        size = _octal(size_field, url, last, pos)
    return name.decode("utf-8", errors="surrogateescape"), size, header[156:157]


def _octal(field: bytes, url: str, last: str | None, pos: int) -> int:
    text = field.split(b"\0", 1)[0].strip()
    if text and not all(48 <= c <= 55 for c in text):
        raise ShardError(url, f"bad tar header at byte {pos} (not a tar file?) after member {last!r}")
    return int(text, 8) if text else 0


def _parse_pax(data: bytes, url: str, pos: int) -> dict[str, str]:
    """The records ``"LEN key=value\\n"`` of a pax header at byte ``pos`` (NOTE [ Malformed headers ])."""
    records: dict[str, str] = {}
    i = 0
    while i < len(data) and data[i] != 0:
        space = data.find(b" ", i, i + 24)
        digits = data[i:space] if space > i else b""
        if not digits or not digits.isdigit():
            raise ShardError(url, f"bad pax header at byte {pos}: record length {digits[:24]!r}")
        length = int(digits)
        end = i + length
        if end > len(data) or end <= space + 1 or data[end - 1] != 0x0A:
            raise ShardError(url, f"bad pax header at byte {pos}: record of length {length} does not fit")
        key, eq, value = data[space + 1 : end - 1].partition(b"=")
        try:
            text = key.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ShardError(url, f"bad pax header at byte {pos}: key {key[:40]!r} is not UTF-8") from exc
        if not eq or not text:
            raise ShardError(url, f"bad pax header at byte {pos}: record without key=value")
        records[text] = value.decode("utf-8", errors="surrogateescape")
        i = end
    return records


def _truncated(header: bytes, last: str | None, pos: int) -> str:
    if not header:
        return f"ends at byte {pos} without the end-of-archive marker after member {last!r} (truncated?)"
    return f"truncated inside a header at byte {pos} after member {last!r}"


_KEY_EXT = re.compile(r"^((?:.*/|)[^.]+)[.]([^/]*)$")


def split_name(name: str) -> tuple[str | None, str | None]:
    """Splits a member path into ``(key, extension)`` by the webdataset rule.

    The key is the path up to the first dot of the basename; the extension is the rest,
    lower-cased. Returns ``(None, None)`` for a name without an extension.
    """
    match = _KEY_EXT.match(name)
    if match is None:
        return None, None
    return match.group(1), match.group(2).lower()


def group_samples(
    members: Iterable[tuple[str, bytes]], url: str, *, fields: set[str] | None = None
) -> Iterator[dict]:
    """Groups consecutive tar members by key into sample dicts.

    Members without an extension and webdataset metadata members (``__name__``) are
    skipped, as the webdataset library does (a key that only starts with ``__`` is kept).

    Raises:
        ShardError: a key reappears after another key (files not contiguous), or a
            sample holds the same extension twice.
    """
    sample: dict | None = None
    seen: set[str] = set()
    for name, data in members:
        key, ext = split_name(name)
        if key is None or is_meta(name):
            continue
        if sample is None or key != sample["__key__"]:
            if sample is not None:
                yield sample
            if key in seen:
                raise ShardError(url, "files of this sample are not contiguous in the shard", key)
            seen.add(key)
            sample = {"__key__": key, "__url__": url}
        if ext in sample:
            raise ShardError(url, f"duplicate file {name!r} (extension {ext!r} twice)", key)
        if fields is None or ext in fields:
            sample[ext] = data
    if sample is not None:
        yield sample
