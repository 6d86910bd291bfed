"""Shard URLs: brace expansion and opening local paths, ``pipe:`` commands and fsspec URLs.

A shard list is given as one string or a list of strings. Each string may hold brace
patterns in the webdataset / bash style (``train-{000000..000099}.tar``, ``{a,b}``) and
several patterns joined by ``::``.
"""

from __future__ import annotations

import io
import os
import re
import shlex
import subprocess
from collections.abc import Iterable
from typing import BinaryIO

from fastdata.errors import ShardError

_BRACE = re.compile(r"\{([^{}]*)\}")
_RANGE = re.compile(r"^(-?\d+)\.\.(-?\d+)$")
READ_BUFFER = 1 << 20


def expand_urls(urls: str | Iterable[str]) -> list[str]:
    """Expands brace patterns and ``::``-joined lists into a flat list of shard URLs.

    Args:
        urls: a pattern string or an iterable of pattern strings.

    Returns:
        The shard URLs in order.

    Raises:
        ValueError: a pattern has an empty range or an unbalanced brace.
    """
    if isinstance(urls, (str, os.PathLike)):
        urls = str(urls).split("::")
    out: list[str] = []
    for pattern in urls:
        out.extend(_expand_one(str(pattern)))
    return out


def _expand_one(pattern: str) -> list[str]:
    match = _BRACE.search(pattern)
    if match is None:
        if "{" in pattern or "}" in pattern:
            raise ValueError(f"unbalanced brace in shard pattern {pattern!r}")
        return [pattern]
    head, tail, body = pattern[: match.start()], pattern[match.end() :], match.group(1)
    expanded = [head + choice + rest for choice in _choices(body, pattern) for rest in _expand_one(tail)]
    return expanded


def _choices(body: str, pattern: str) -> list[str]:
    rng = _RANGE.match(body)
    if rng is None:
        return body.split(",")
    lo_text, hi_text = rng.groups()
    lo, hi = int(lo_text), int(hi_text)
    if hi < lo:
        raise ValueError(f"empty range {{{body}}} in shard pattern {pattern!r}")
    width = len(lo_text) if lo_text.startswith("0") and len(lo_text) > 1 else 0
    return [str(i).zfill(width) for i in range(lo, hi + 1)]


def open_url(url: str) -> BinaryIO:
    """Opens a shard for sequential binary reading.

    Local paths (and ``file:`` URLs) open directly; ``pipe:CMD`` runs ``CMD`` in a shell
    and reads its standard output; any other ``scheme://`` URL opens through fsspec.

    Raises:
        ShardError: the shard cannot be opened.
    """
    try:
        if url.startswith("pipe:"):
            return _PipeStream(url)
        if url.startswith("file:"):
            return open(url[len("file:") :].removeprefix("//"), "rb", buffering=READ_BUFFER)
        if "://" in url:
            return _open_fsspec(url)
        return open(url, "rb", buffering=READ_BUFFER)
    except ShardError:
        raise
    except (OSError, ValueError, ImportError) as exc:
        raise ShardError(url, f"cannot open: {exc}") from exc


def _open_fsspec(url: str) -> BinaryIO:
    try:
        import fsspec
    except ImportError as exc:
        raise ImportError(f"reading {url!r} needs fsspec: pip install fsspec") from exc
    stream = fsspec.open(url, "rb").open()
    return io.BufferedReader(stream, buffer_size=READ_BUFFER) if not hasattr(stream, "peek") else stream


class _PipeStream(io.RawIOBase):
    """Standard output of a shell command; a non-zero exit status is a ShardError at EOF."""

    def __init__(self, url: str) -> None:
        self.url = url
        command = url[len("pipe:") :]
        if not command.strip():
            raise ShardError(url, "empty pipe: command")
        self._proc = subprocess.Popen(
            command, shell=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE, bufsize=READ_BUFFER
        )
        self._out = self._proc.stdout

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        n = self._out.readinto(buffer)
        if n == 0:
            self._check_exit()
        return n

    def read(self, size: int = -1) -> bytes:
        data = self._out.read(size)
        if size != 0 and not data:
            self._check_exit()
        return data

    def _check_exit(self) -> None:
        status = self._proc.wait(timeout=60)
        if status != 0:
            err = self._proc.stderr.read().decode(errors="replace").strip()
            raise ShardError(self.url, f"command {shlex.quote(self.url[5:])} exited {status}: {err}")

    def close(self) -> None:
        if not self.closed:
            self._out.close()
            if self._proc.poll() is None:
                self._proc.kill()
            self._proc.wait(timeout=60)
            self._proc.stderr.close()
        super().close()
