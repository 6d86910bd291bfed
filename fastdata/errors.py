"""Typed errors of fastdata.

Every error that concerns data names where the problem is (shard URL, sample key, field)
so that a user can find the bad bytes, and chains the original exception as its cause.
"""

from __future__ import annotations


class FastdataError(Exception):
    """Base class of every error raised by fastdata."""


class ShardError(FastdataError):
    """A shard cannot be read or breaks the WebDataset format rules.

    Args:
        url: the shard's path or URL.
        message: what is wrong.
        key: the sample key concerned, if any.
    """

    def __init__(self, url: str, message: str, key: str | None = None) -> None:
        self.url = url
        self.key = key
        self.message = message
        where = f"shard {url!r}" + (f", sample {key!r}" if key is not None else "")
        super().__init__(f"{where}: {message}")

    def __reduce__(self):  # keep the fields when pickled across processes
        return (type(self), (self.url, self.message, self.key))


class DecodeError(FastdataError):
    """A sample's field cannot be decoded.

    Args:
        url: the shard (or file) the sample came from, or None if unknown.
        key: the sample key, or None if unknown.
        field: the field (extension) that failed, such as ``"jpg"``.
        message: what is wrong.
    """

    def __init__(
        self, url: str | None, key: str | None, field: str | None, message: str
    ) -> None:
        self.url = url
        self.key = key
        self.field = field
        self.message = message
        parts = []
        if url is not None:
            parts.append(f"shard {url!r}")
        if key is not None:
            parts.append(f"sample {key!r}")
        if field is not None:
            parts.append(f"field {field!r}")
        where = ", ".join(parts) or "sample"
        super().__init__(f"{where}: {message}")

    def __reduce__(self):
        return (type(self), (self.url, self.key, self.field, self.message))


class SourceError(FastdataError):
    """An input of a conversion (a file, a manifest row, an array) is missing or invalid.

    Args:
        path: the file or manifest concerned.
        message: what is wrong.
    """

    def __init__(self, path: str, message: str) -> None:
        self.path = path
        self.message = message
        super().__init__(f"{path}: {message}")

    def __reduce__(self):
        return (type(self), (self.path, self.message))
