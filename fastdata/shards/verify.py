"""``fastdata verify``: checks shards against the format rules and their index.

Every problem is reported with its shard and key rather than stopping at the first:
unreadable or truncated shards, bad tar headers, members without an extension, dotted
folder names, dotted file names that split a key (``img.2.jpg`` read as key ``img`` with
extension ``2.jpg``), a sample's files not contiguous, an extension twice in a sample, and
sample counts, byte sizes and SHA-256 hashes that do not match the index. Token shards
(``fastdata.shards.tokens``) are also checked for their own rules: document offsets
consistent with the tokens, each document ending with the end-of-document token, and the
token counts and offset the index records.
"""

from __future__ import annotations

import hashlib
import os
import sys
from dataclasses import dataclass

from fastdata.errors import FastdataError, ShardError
from fastdata.shards.index import resolve_shards
from fastdata.shards.tario import is_meta, iter_members, split_name
from fastdata.shards.tokens import is_token_meta, token_shard_problems
from fastdata.shards.urls import open_url


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a shard (``key`` is None for shard-level problems)."""

    shard: str
    message: str
    key: str | None = None

    def __str__(self) -> str:
        where = self.shard + (f" [{self.key}]" if self.key is not None else "")
        return f"{where}: {self.message}"


@dataclass
class ShardScan:
    """What reading one shard found."""

    url: str
    count: int
    size: int
    sha256: str
    problems: list[Problem]
    tokens: bool = False  # a token shard (its .json member says so)


class _HashingReader:
    """Wraps a stream, counting and hashing the bytes read through it."""

    def __init__(self, stream) -> None:
        self._stream = stream
        self.size = 0
        self.hash = hashlib.sha256()

    def read(self, n: int = -1) -> bytes:
        data = self._stream.read(n)
        self.size += len(data)
        self.hash.update(data)
        return data

    def drain(self) -> None:
        while self.read(1 << 20):
            pass


def scan_shard(url: str) -> ShardScan:
    """Reads one shard to the end, collecting every problem instead of raising."""
    problems: list[Problem] = []
    samples: dict[str, set[str]] = {}
    order: list[str] = []
    tokens = False
    try:
        with open_url(url) as raw:
            stream = _HashingReader(raw)
            for name, data in iter_members(stream, url):
                _check_member(url, name, samples, order, problems)
                tokens = tokens or (len(samples) == 1 and name.endswith(".json") and is_token_meta(data))
            problems += _split_keys(url, samples)
            stream.drain()
    except ShardError as exc:
        problems.append(Problem(url, exc.message))
        stream = locals().get("stream") or _HashingReader(None)
    except OSError as exc:  # a read that fails after opening (a remote or pipe: stream)
        problems.append(Problem(url, f"cannot read: {exc}"))
        stream = locals().get("stream") or _HashingReader(None)
    return ShardScan(url, len(samples), stream.size, stream.hash.hexdigest(), problems, tokens)


def _check_member(url: str, name: str, samples: dict, order: list, problems: list[Problem]) -> None:
    key, ext = split_name(name)
    if key is None:
        if not is_meta(name):
            problems.append(Problem(url, f"member {name!r} has no extension; readers skip it"))
        return
    folders = key.split("/")[:-1]
    if any("." in part and part not in (".", "..") for part in folders):
        problems.append(Problem(url, f"member {name!r} has a dotted folder name", key))
    if "." in ext and ext.split(".", 1)[0].isdigit():
        problems.append(Problem(url, f"member {name!r}: a dotted file name split the key (extension {ext!r})", key))
    if key in samples and order[-1] != key:
        problems.append(Problem(url, f"files of this sample are not contiguous ({name!r})", key))
    elif key in samples and ext in samples[key]:
        problems.append(Problem(url, f"extension {ext!r} twice in this sample", key))
    if key not in samples:
        samples[key] = set()
        order.append(key)
    samples[key].add(ext)


def _split_keys(url: str, samples: dict[str, set[str]]) -> list[Problem]:
    """Samples that are several keys with a dot merged into one: ``img.v1.jpg``,
    ``img.v1.cls``, ``img.v2.jpg``, ``img.v2.cls`` read as key ``img`` with extensions
    ``v1.jpg``... The sign: every extension has two parts, and two or more first parts
    carry the same set of last parts (fields of one sample, such as ``seg.png`` beside
    ``jpg``, leave a one-part extension)."""
    problems = []
    for key, exts in samples.items():
        if not exts or any("." not in e for e in exts):
            continue
        groups: dict[str, set[str]] = {}
        for ext in exts:
            head, rest = ext.split(".", 1)
            groups.setdefault(head, set()).add(rest)
        if len(groups) > 1 and len({frozenset(v) for v in groups.values()}) == 1:
            names = ", ".join(repr(f"{key}.{h}") for h in sorted(groups))
            problems.append(Problem(url, f"dotted names split keys {names} read as one sample {key!r};"
                                    " the key ends at the first dot: replace the dots", key))  # fmt: skip
    return problems


def verify(shards: str | list[str]) -> tuple[list[Problem], int]:
    """Verifies shards; returns (problems, number of samples read).

    Args:
        shards: an index JSON path, or shard paths/patterns (the index beside them is
            used when it exists).
    """
    urls, index_path, index = resolve_shards(shards)
    expected = {s["name"]: s for s in index["shards"]} if index else {}
    problems: list[Problem] = []
    total = 0
    scans = []
    for url in urls:
        if "://" not in url and not url.startswith("pipe:") and not os.path.exists(url):
            problems.append(Problem(url, "missing"))
            continue
        scan = scan_shard(url)
        scans.append(scan)
        entry = expected.get(os.path.basename(url))
        problems += scan.problems + _compare(scan, entry, index is not None)
        if scan.tokens and not scan.problems:
            problems += [Problem(url, message) for message in token_shard_problems(url, entry)]
        total += scan.count
    if index is not None and index.get("num_samples") not in (None, total) and len(scans) == len(urls):
        problems.append(Problem(index_path, f"index says {index['num_samples']} samples, shards hold {total}"))
    return problems, total


def _compare(scan: ShardScan, entry: dict | None, indexed: bool) -> list[Problem]:
    if entry is None:
        return [Problem(scan.url, "not listed in the index")] if indexed else []
    out = []
    for field, actual in (("count", scan.count), ("bytes", scan.size), ("sha256", scan.sha256)):
        if entry.get(field) != actual:
            out.append(Problem(scan.url, f"{field} is {actual}, the index says {entry.get(field)}"))
    return out


def plural(n: int, noun: str) -> str:
    """``"1 problem"``, ``"2 problems"``."""
    return f"{n} {noun}" + ("" if n == 1 else "s")


def register(subparsers) -> None:
    """Adds ``fastdata verify``."""
    p = subparsers.add_parser("verify", help="check shards against the format rules and their index")
    p.add_argument("shards", nargs="+", help="an index .json, or shard paths / brace patterns")
    p.set_defaults(func=run)


def run(args) -> int:
    """Runs ``fastdata verify``; exit status 1 when any problem is found."""
    target = args.shards[0] if len(args.shards) == 1 else args.shards
    try:
        problems, total = verify(target)
    except (FastdataError, ValueError) as exc:
        print(f"fastdata verify: error: {exc}", file=sys.stderr)
        return 1
    for problem in problems:
        print(problem)
    status = "OK" if not problems else plural(len(problems), "problem")
    print(f"{status}: {plural(total, 'sample')} checked")
    return 1 if problems else 0
