"""``fastdata index``: writes the index of existing shards by reading each one once.

The index has the format ``fastdata convert`` and ``ShardWriter`` write
(``fastdata.shards.index``): per shard its file name, sample count, byte size and SHA-256,
and the total. Shards may be local paths, brace patterns, fsspec URLs or ``pipe:``
commands typed by the user; an index names shards by file name only (NOTE [ Names in an
index ]), so the index of remote shards is written where ``-o`` says and given to
``ShardDataset(..., index=...)``.
"""

from __future__ import annotations

import os
import sys
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from fastdata.errors import FastdataError
from fastdata.shards.index import _check_name, index_path_for_shard, write_index
from fastdata.shards.urls import expand_urls
from fastdata.shards.verify import ShardScan, plural, scan_shard

__all__ = ["build_index", "default_index_path", "register", "run"]


def _is_remote(url: str) -> bool:
    return "://" in url or url.startswith("pipe:")


def shard_name(url: str) -> str:
    """The name an index gives a shard: the last path part, as ``ShardDataset`` matches it."""
    return url.rsplit("/", 1)[-1]


def default_index_path(urls: list[str]) -> str:
    """Beside the first shard, for local shards.

    Raises:
        FastdataError: the shards are remote (no folder to write into).
    """
    if any(_is_remote(u) for u in urls):
        raise FastdataError(
            "these shards are remote: say where to write their index with -o PATH (then pass "
            "index=PATH to ShardDataset, or upload it beside the shards)"
        )
    return index_path_for_shard(urls[0])


def build_index(urls: list[str], *, workers: int = 4, progress: bool = False) -> dict[str, Any]:
    """Reads every shard once and returns the index body (without format and version).

    Args:
        urls: shard paths or URLs, in order.
        workers: shards read at the same time (threads).
        progress: show a progress bar on stderr.

    Raises:
        FastdataError: a shard is missing, unreadable or breaks the format; the message
            names it (``fastdata verify`` lists every problem).
    """
    names = [shard_name(u) for u in urls]
    for url, name in zip(urls, names, strict=True):
        if not _is_remote(url) and not os.path.exists(url):
            raise FastdataError(f"shard {url!r}: no such file")
        try:
            _check_name(url, name)
        except FastdataError as exc:
            raise FastdataError(f"shard {url!r}: cannot be named in an index ({exc})") from None
    if len(set(names)) != len(names):
        dup = next(n for n in names if names.count(n) > 1)
        raise FastdataError(f"two shards are named {dup!r}: an index names shards by file name")
    entries = []
    with ThreadPoolExecutor(max(1, min(workers, len(urls)))) as pool:
        scans = pool.map(scan_shard, urls)
        if progress:
            from tqdm import tqdm

            scans = tqdm(scans, total=len(urls), unit="shard", desc="indexing", file=sys.stderr)
        for name, scan in zip(names, scans, strict=True):
            _check_scan(scan)
            entries.append({"name": name, "count": scan.count, "bytes": scan.size, "sha256": scan.sha256})
    return {"num_samples": sum(e["count"] for e in entries), "shards": entries, "stats": {}}


def _check_scan(scan: ShardScan) -> None:
    if scan.problems:
        more = len(scan.problems) - 1
        tail = f" (and {plural(more, 'more problem')}: run `fastdata verify` on it)" if more else ""
        raise FastdataError(f"shard {scan.url!r}: {scan.problems[0].message}{tail}")


def register(subparsers) -> None:
    """Adds ``fastdata index``."""
    p = subparsers.add_parser(
        "index", help="write the index (counts, sizes, hashes) of existing shards",
        description="Read SHARDS once (local paths, brace patterns, fsspec URLs or pipe: "
        "commands) and write their index, the JSON `fastdata convert` writes.",
    )  # fmt: skip
    p.add_argument("shards", nargs="+", help="shard paths, brace patterns, URLs or pipe: commands")
    p.add_argument("-o", "--output", help="index path (default: beside local shards; required for remote ones)")
    p.add_argument("-j", "--workers", type=int, default=4, help="shards read at the same time (default 4)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args) -> int:
    """Runs ``fastdata index``: one line on success, one line on error (exit status 1)."""
    try:
        if args.workers < 1:
            raise FastdataError(f"--workers must be at least 1, got {args.workers}")
        urls = expand_urls(args.shards)
        if not urls:
            raise FastdataError("no shards given")
        path = args.output or default_index_path(urls)
        index = build_index(urls, workers=args.workers, progress=not args.no_progress)
        write_index(path, index)
    except (FastdataError, ValueError, OSError) as exc:
        print(f"fastdata index: error: {exc}", file=sys.stderr)
        return 1
    shards = plural(len(index["shards"]), "shard")
    print(f"wrote {path}: {shards}, {plural(index['num_samples'], 'sample')}")
    return 0
