"""Sources of a conversion: an image folder, a CSV/JSONL manifest, or NumPy arrays.

A source lists its samples as ``Item``s up front (deterministic order, labels resolved)
and reads one item's payload on demand, in a worker process. Keys are derived from where
a sample came from, so every sample in a shard can be traced back to its source.

Folders and manifests may also be fsspec URLs (``s3://bucket/train``,
``https://host/train.csv``): the driver lists them, and each shard task reads its files
where it runs (``for_tasks`` gives the light copy of a source that travels to the tasks,
without the item list).
"""

from __future__ import annotations

import copy
import csv
import io
import json
import os
import re
from dataclasses import dataclass
from typing import Any

import numpy as np

from fastdata.errors import SourceError

# The extensions torchvision's ImageFolder accepts.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
_BAD_KEY_CHARS = re.compile(r"[.\s\\:*?\"<>|]")


@dataclass(frozen=True)
class Item:
    """One sample to convert: its key, where it comes from and its integer label."""

    key: str
    ref: str | int
    label: int | None


def make_key(relative_path: str) -> str:
    """A sample key from a relative file path: the path without its extension, with dots,
    whitespace and characters that are unsafe in tar member names replaced by ``_``."""
    stem, _ = os.path.splitext(relative_path.replace(os.sep, "/"))
    parts = [_BAD_KEY_CHARS.sub("_", part) for part in stem.split("/") if part not in ("", ".")]
    key = "/".join(parts)
    if not key or key.startswith("__"):
        key = "_" + key
    return key


def _check_unique(items: list[Item], origin: str) -> list[Item]:
    seen: dict[str, Item] = {}
    for item in items:
        other = seen.setdefault(item.key, item)
        if other is not item:
            raise SourceError(
                origin, f"{other.ref!r} and {item.ref!r} map to the same sample key {item.key!r}; rename one"
            )
    return items


def is_url(path: str) -> bool:
    """Whether ``path`` is an fsspec URL (``s3://...``, ``https://...``) rather than a local path."""
    return "://" in path and not path.startswith("file://")


def _local(path: str) -> str:
    return path.removeprefix("file://")


def _join(base: str, relative: str) -> str:
    if is_url(relative) or os.path.isabs(relative):
        return relative
    return f"{base.rstrip('/')}/{relative}" if is_url(base) else os.path.join(base, relative)


def _read_file(path: str) -> bytes:
    """A file's bytes, from a local path or an fsspec URL (``OSError`` when it cannot be read)."""
    if not is_url(path):
        with open(path, "rb") as f:
            return f.read()
    import fsspec

    try:
        with fsspec.open(path, "rb") as f:
            return f.read()
    except FileNotFoundError:
        raise
    except Exception as exc:  # fsspec back ends raise their own types (aiohttp, botocore)
        raise OSError(f"{path}: {exc}") from exc


def _file_size(path: str) -> int:
    if not is_url(path):
        return os.path.getsize(path)
    import fsspec

    fs, inner = fsspec.core.url_to_fs(path)
    return int(fs.size(inner) or 0)


def _text(path: str) -> str:
    try:
        return _read_file(path).decode("utf-8")
    except OSError as exc:
        raise SourceError(path, f"cannot read: {exc}") from exc


class _FileSource:
    """What folders and manifests share: files read by path or URL, a light copy for tasks."""

    items: list[Item]

    def _path(self, item: Item) -> str:
        raise NotImplementedError

    def read(self, item: Item) -> tuple[str, bytes]:
        """Returns ``(extension, bytes)`` of the item's file."""
        path = self._path(item)
        return _extension(path), _read_file(path)

    def file_size(self, item: Item) -> int:
        """The byte size of the item's file (0 when it cannot be found: a missing file)."""
        try:
            return _file_size(self._path(item))
        except OSError:
            return 0

    def extension(self, item: Item) -> str:
        return _extension(str(item.ref))

    def for_tasks(self):
        """A copy without the item list, to send to shard tasks (which carry their items)."""
        light = copy.copy(self)
        light.items = []
        light.__dict__.pop("_lines", None)
        light.__dict__.pop("_sizes", None)
        return light


def label_mapping(labels: list[str]) -> dict[str, int]:
    """Maps string labels to integers in sorted order, as torchvision's ImageFolder does."""
    return {name: i for i, name in enumerate(sorted(set(labels)))}


class ImageFolderSource(_FileSource):
    """``root/<class>/<file>`` images, labelled by sorted class folder name (ImageFolder order).

    ``root`` may be an fsspec URL; its listing gives the file sizes too.
    """

    kind = "image-folder"

    def __init__(self, root: str) -> None:
        self.root = root
        files = _remote_files(root) if is_url(root) else _local_files(_local(root))
        classes = sorted({rel.split("/", 1)[0] for rel in files})
        if not classes:
            raise SourceError(root, "no class sub-folders found (expected root/<class>/<image>)")
        self.label_map = {name: i for i, name in enumerate(classes)}
        self._sizes = {rel: size for rel, size in files.items() if size is not None}
        items = [
            Item(make_key(rel), rel, self.label_map[rel.split("/", 1)[0]])
            for rel in files if "/" in rel and rel.lower().endswith(IMAGE_EXTENSIONS)
        ]  # fmt: skip
        if not items:
            raise SourceError(root, f"no image files found (extensions {', '.join(IMAGE_EXTENSIONS)})")
        self.items = _check_unique(items, root)

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "root": self.root if is_url(self.root) else os.path.abspath(_local(self.root))}

    def _path(self, item: Item) -> str:
        return _join(self.root if is_url(self.root) else _local(self.root), str(item.ref))

    def file_size(self, item: Item) -> int:
        size = self._sizes.get(str(item.ref)) if hasattr(self, "_sizes") else None
        return super().file_size(item) if size is None else size

    def origin(self, item: Item) -> str:
        return self._path(item)


def _local_files(root: str) -> dict[str, int | None]:
    """Relative paths (``class/.../file``) in ImageFolder order: classes sorted, then each
    class folder walked in sorted order (sizes are looked up later, when needed)."""
    if not os.path.isdir(root):
        raise SourceError(root, "no such file or folder" if not os.path.exists(root) else "not a folder")
    files: dict[str, int | None] = {}
    for name in sorted(e.name for e in os.scandir(root) if e.is_dir()):
        top = os.path.join(root, name)
        files[name] = None  # marks the class even when it holds no image
        for dirpath, _, names in sorted(os.walk(top, followlinks=True)):
            folder = name + dirpath[len(top):].replace(os.sep, "/")
            files.update((f"{folder}/{fname}", None) for fname in sorted(names))
    return files


def _remote_files(root: str) -> dict[str, int | None]:
    """The files under an fsspec URL with their sizes, in the order of ``_local_files``."""
    import fsspec

    try:
        fs, inner = fsspec.core.url_to_fs(root)
        found = fs.find(inner, detail=True)
    except Exception as exc:  # back ends raise their own types
        raise SourceError(root, f"cannot list: {exc}") from exc
    base = inner.rstrip("/") + "/"
    files: dict[str, int | None] = {}
    for path, info in found.items():
        rel = path[len(base):] if path.startswith(base) else path.rsplit(base, 1)[-1]
        if "/" in rel:
            files[rel] = info.get("size")
    order = sorted(files, key=lambda rel: (rel.split("/", 1)[0], os.path.dirname(rel), rel))
    return {rel: files[rel] for rel in order}


class ManifestSource(_FileSource):
    """A CSV (with a ``path,label`` header, or two columns) or JSONL manifest of files.

    Paths are relative to the manifest's folder unless absolute. Labels that are all
    integers are kept; otherwise they are mapped to integers in sorted order.

    Args:
        path: the manifest file, or an fsspec URL of one (its relative paths then resolve
            against the URL's folder).
        int_labels: require integer labels (a row with another label is an error).
    """

    kind = "manifest"

    def __init__(self, path: str, int_labels: bool = False) -> None:
        self.path = path
        self.base = path.rsplit("/", 1)[0] if is_url(path) else os.path.dirname(os.path.abspath(_local(path)))
        text = _text(path if is_url(path) else _local(path))
        rows = _read_jsonl(path, text) if path.lower().endswith((".jsonl", ".ndjson")) else _read_csv(path, text)
        if not rows:
            raise SourceError(path, "manifest has no rows")
        texts = [label for _, _, label in rows if label is not None]
        all_int = all(_is_int(t) for t in texts)
        if int_labels and not all_int:
            line, _, bad = next(r for r in rows if r[2] is not None and not _is_int(r[2]))
            raise SourceError(path, f"line {line}: label {bad!r} is not an integer")
        self.label_map = None if all_int else label_mapping(texts)
        items = []
        for _line, file_path, label in rows:
            value = None if label is None else int(label) if all_int else self.label_map[label]
            items.append(Item(make_key(file_path), file_path, value))
        self.items = _check_unique(items, path)
        self._lines = {item.key: line for item, (line, _, _) in zip(self.items, rows, strict=True)}

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "manifest": self.path if is_url(self.path) else os.path.abspath(_local(self.path))}

    def _path(self, item: Item) -> str:
        return _join(self.base, str(item.ref))

    def file_size(self, item: Item) -> int:
        """The file's size; 0 for remote files (one request per file is too slow to plan
        with: remote manifests are cut into shards by ``--maxcount`` alone)."""
        return 0 if is_url(self._path(item)) else super().file_size(item)

    def origin(self, item: Item) -> str:
        return f"{self.path} line {self._lines[item.key]} ({item.ref})"


class ArraySource:
    """Images and labels from NumPy files.

    Args:
        path: an ``.npz`` with an images array (named ``images``, ``x``, ``data`` or
            ``arr_0``) and optionally labels (``labels``, ``y``, ``targets``, ``arr_1``);
            or an ``.npy`` of images, with labels from ``labels_path``.
        labels_path: an ``.npy`` of labels, for an ``.npy`` images file.

    Images are uint8, shaped N×H×W×C (C = 1, 3 or 4) or N×H×W.
    """

    kind = "arrays"

    def __init__(self, path: str, labels_path: str | None = None) -> None:
        self.path = path
        images, labels = _load_arrays(path, labels_path)
        if images.dtype != np.uint8 or images.ndim not in (3, 4):
            raise SourceError(path, f"images must be uint8 N×H×W[×C], got {images.dtype} {images.shape}")
        if labels is not None and len(labels) != len(images):
            raise SourceError(path, f"{len(images)} images but {len(labels)} labels")
        if labels is not None and not np.issubdtype(labels.dtype, np.integer):
            raise SourceError(path, f"labels must be integers, got {labels.dtype}")
        self.images = images
        self.label_map = None
        width = max(6, len(str(len(images) - 1)))
        self.items = [
            Item(f"{i:0{width}d}", i, None if labels is None else int(labels[i]))
            for i in range(len(images))
        ]

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "path": os.path.abspath(self.path)}

    def read(self, item: Item) -> tuple[str, np.ndarray]:
        image = np.asarray(self.images[int(item.ref)])
        return "npy", image if image.ndim == 3 else image[:, :, None]

    def file_size(self, item: Item) -> int:
        """The bytes of one image stored as ``.npy`` (the same for every image)."""
        if not hasattr(self, "_npy_size"):
            image = np.ascontiguousarray(self.read(self.items[0])[1] if self.items else self.images[:0])
            buf = io.BytesIO()
            np.save(buf, image, allow_pickle=False)
            self._npy_size = len(buf.getvalue())
        return self._npy_size

    def extension(self, item: Item) -> str:
        return "npy"

    def for_tasks(self) -> ArraySource:
        """A copy without the item list (the images stay: tasks read them)."""
        light = copy.copy(self)
        light.items = []
        return light

    def origin(self, item: Item) -> str:
        return f"{self.path}[{item.ref}]"


def open_source(path: str, *, labels_path: str | None = None, int_labels: bool = False):
    """Chooses the source type from the path: a folder, a ``.csv``/``.jsonl`` manifest,
    or ``.npy``/``.npz`` arrays."""
    lower = path.lower()
    if is_url(path):
        if lower.endswith((".csv", ".tsv", ".jsonl", ".ndjson")):
            return ManifestSource(path, int_labels=int_labels)
        return ImageFolderSource(path)
    path = _local(path)
    if os.path.isdir(path):
        return ImageFolderSource(path)
    if not os.path.exists(path):
        raise SourceError(path, "no such file or folder")
    if lower.endswith((".csv", ".tsv", ".jsonl", ".ndjson")):
        return ManifestSource(path, int_labels=int_labels)
    if lower.endswith((".npy", ".npz")):
        return ArraySource(path, labels_path)
    raise SourceError(path, "unknown source: give a class folder, a .csv/.jsonl manifest or .npy/.npz arrays")


def _extension(path: str) -> str:
    ext = os.path.splitext(path)[1].lower().lstrip(".")
    return "jpg" if ext == "jpeg" else ext or "bin"


def _is_int(text: str) -> bool:
    return bool(re.fullmatch(r"\s*[-+]?\d+\s*", text))


def _read_csv(path: str, text: str) -> list[tuple[int, str, str | None]]:
    dialect = "excel-tab" if path.lower().endswith(".tsv") else "excel"
    rows = list(csv.reader(io.StringIO(text, newline=""), dialect=dialect))
    start = 1 if rows and [c.strip().lower() for c in rows[0][:1]] == ["path"] else 0
    out = []
    for n, row in enumerate(rows[start:], start=start + 1):
        if not row or not row[0].strip():
            continue
        out.append((n, row[0].strip(), row[1].strip() if len(row) > 1 and row[1].strip() else None))
    return out


def _read_jsonl(path: str, text: str) -> list[tuple[int, str, str | None]]:
    out = []
    for n, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise SourceError(path, f"line {n}: not JSON ({exc})") from exc
        if not isinstance(row, dict) or "path" not in row:
            raise SourceError(path, f"line {n}: expected an object with a 'path' field")
        label = row.get("label")
        out.append((n, str(row["path"]), None if label is None else str(label)))
    return out


def _load_arrays(path: str, labels_path: str | None) -> tuple[np.ndarray, np.ndarray | None]:
    try:
        if path.lower().endswith(".npy"):
            images = np.load(path, mmap_mode="r")
            labels = np.load(labels_path) if labels_path else None
            return images, labels
        with np.load(path) as data:
            names = list(data.keys())
            img_name = next((n for n in ("images", "x", "data", "arr_0") if n in names), None)
            if img_name is None:
                raise SourceError(path, f"no images array (looked for images, x, data, arr_0; found {names})")
            lab_name = next((n for n in ("labels", "y", "targets", "arr_1") if n in names), None)
            return data[img_name], (data[lab_name] if lab_name else None)
    except (OSError, ValueError) as exc:
        raise SourceError(path, f"cannot load arrays: {exc}") from exc
