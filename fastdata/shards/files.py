"""Files written into an output folder without following links: temporary files and appends.

NOTE [ Temporary files ]
A shard, an index or a journal is written under ``<name>.tmp`` and renamed into place, so
a killed writer never leaves a file that looks whole. The temporary name is fixed (a
re-run replaces what a killed run left) but it is never opened through a link: whatever
is at that path (a stale file, or a symbolic link planted there) is unlinked, which
removes the link itself and never touches its target, and the file is then created with
``O_CREAT | O_EXCL | O_NOFOLLOW``, which fails rather than follow a link that appears in
between. Files that are appended to (the conversion's digest list) are opened with
``O_NOFOLLOW``: a link there is an error. If writing fails or is interrupted, the
temporary file is removed.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import IO

__all__ = ["create_new", "open_append", "replace_into"]

_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)


def create_new(path: str, mode: str = "wb") -> IO:
    """Opens a fresh ``path`` for writing, never through a link (NOTE [ Temporary files ]).

    Raises:
        OSError: the file cannot be created (including a link created concurrently).
    """
    if os.path.islink(path) or os.path.isfile(path):
        os.unlink(path)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW, 0o644)
    try:
        return os.fdopen(fd, mode, encoding=None if "b" in mode else "utf-8")
    except BaseException:
        os.close(fd)
        raise


def open_append(path: str) -> IO:
    """Opens a text file for appending; a link at ``path`` is an ``OSError`` (ELOOP)."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | _NOFOLLOW, 0o644)
    return os.fdopen(fd, "a", encoding="utf-8")


@contextmanager
def replace_into(path: str, mode: str = "w") -> Iterator[IO]:
    """Writes ``path.tmp`` and renames it to ``path`` when the block ends without error.

    On an error or interruption (``KeyboardInterrupt`` included) the temporary file is
    removed and ``path`` is left as it was.
    """
    tmp = path + ".tmp"
    f = create_new(tmp, mode)
    try:
        with f:
            yield f
        os.replace(tmp, path)
    except BaseException:
        if os.path.lexists(tmp):
            os.unlink(tmp)
        raise
