"""Sources of ``fastdata convert --tokenize``: a folder of ``.txt`` files, or a JSONL, CSV or
Parquet manifest with a text column.

Like the image sources (``fastdata.convert.sources``), a text source lists its documents
as ``Item``s up front, in a deterministic order with labels resolved, and gives one
document's bytes on demand (``read``) where a shard task runs. A manifest's texts are
held in memory (they were read to list the rows); a folder's files are read by the tasks.

- Folder: every ``*.txt`` file under the root, walked in sorted order, one document per
  file. Files in sub-folders are labelled by their top-level sub-folder's name (sorted
  names to 0, 1, ..., as the image folder does); files directly in the root have no label.
- Manifest: one document per JSONL line, CSV row or Parquet row, its text in the
  ``text_column``; the label in ``label_column`` when the manifest has it (integers kept
  when every label is one, else names mapped to integers in sorted order). A row whose
  text cannot be used (not UTF-8, not a string, no such field, not JSON) is remembered
  with its line and reported by ``read`` (a ``SourceError``), so that ``--drop-corrupt``
  applies to it as to an unreadable file.
"""

from __future__ import annotations

import copy
import csv
import io
import json
import os
from typing import Any

from fastdata.convert.sources import Item, label_mapping, make_key
from fastdata.errors import SourceError

__all__ = ["TextFolderSource", "TextManifestSource", "open_text_source"]

MANIFESTS = (".jsonl", ".ndjson", ".csv", ".tsv", ".parquet")


class TextFolderSource:
    """``root/**/*.txt``, one document per file; labels from class sub-folders (see the module docstring)."""

    kind = "text-folder"

    def __init__(self, root: str) -> None:
        self.root = root
        files = []
        for dirpath, dirnames, names in os.walk(root, followlinks=True):
            dirnames.sort()
            rel_dir = os.path.relpath(dirpath, root).replace(os.sep, "/")
            files += [name if rel_dir == "." else f"{rel_dir}/{name}" for name in names if name.lower().endswith(".txt")]
        files.sort(key=lambda rel: (rel.count("/") > 0, rel))
        if not files:
            raise SourceError(root, "no .txt files found (one document per file, optionally in class sub-folders)")
        classes = sorted({rel.split("/", 1)[0] for rel in files if "/" in rel})
        self.label_map = label_mapping(classes) if classes else None
        items = [Item(make_key(rel), rel, self.label_map[rel.split("/", 1)[0]] if "/" in rel else None)
                 for rel in files]  # fmt: skip
        self.items = _check_unique(items, root)

    @property
    def has_labels(self) -> bool:
        return self.label_map is not None

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "root": os.path.abspath(self.root)}

    def read(self, item: Item) -> bytes:
        """The file's bytes.

        Raises:
            OSError: the file cannot be read.
        """
        with open(self.origin(item), "rb") as f:
            return f.read()

    def size(self, item: Item) -> int:
        """The file's byte size (0 when it cannot be found)."""
        try:
            return os.path.getsize(self.origin(item))
        except OSError:
            return 0

    def origin(self, item: Item) -> str:
        return os.path.join(self.root, str(item.ref))

    def first_error(self) -> SourceError | None:
        """A problem known before reading (none for a folder: its files are read by the tasks)."""
        return None

    def for_tasks(self) -> TextFolderSource:
        light = copy.copy(self)
        light.items = []
        return light


class TextManifestSource:
    """A JSONL, CSV/TSV or Parquet manifest with one document per row (see the module docstring).

    Args:
        path: the manifest.
        text_column: the field or column holding the text.
        label_column: the field or column holding the label; None: ``"label"`` when the
            manifest has it. A label column given but absent is an error.
    """

    kind = "text-manifest"

    def __init__(self, path: str, text_column: str = "text", label_column: str | None = None) -> None:
        self.path, self.text_column = path, text_column
        lower = path.lower()
        reader = _parquet_rows if lower.endswith(".parquet") else _csv_rows if lower.endswith((".csv", ".tsv")) else _jsonl_rows
        rows = reader(path, text_column, label_column or "label", label_column is not None)
        if not rows:
            raise SourceError(path, "the manifest has no rows")
        self.label_column = label_column or "label"
        labels = [r[3] for r in rows if r[3] is not None]
        all_int = all(_is_int(v) for v in labels)
        self.label_map = None if all_int else label_mapping([str(v) for v in labels])
        self.has_labels = bool(labels)
        self._where: list[str] = []
        self._texts: list[bytes | None] = []
        self._errors: dict[int, str] = {}
        items = []
        stem = _key_stem(path)
        for i, (where, text, error, label) in enumerate(rows):
            self._where.append(where)
            self._texts.append(text)
            if error is not None:
                self._errors[i] = error
            value = None if label is None else int(label) if all_int else self.label_map[str(label)]
            items.append(Item(f"{stem}_{i:08d}", i, value))
        self.items = items

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "manifest": os.path.abspath(self.path), "text_column": self.text_column,
                "label_column": self.label_column}  # fmt: skip

    def read(self, item: Item) -> bytes:
        """The row's text as UTF-8 bytes.

        Raises:
            SourceError: the row's text cannot be used; the error names the line or row.
        """
        error = self._errors.get(int(item.ref))
        if error is not None:
            raise SourceError(self.origin(item), error)
        return self._texts[int(item.ref)]

    def size(self, item: Item) -> int:
        text = self._texts[int(item.ref)]
        return 0 if text is None else len(text)

    def origin(self, item: Item) -> str:
        return f"{self.path} {self._where[int(item.ref)]}"

    def first_error(self) -> SourceError | None:
        """The first row whose text cannot be used, as an error naming its line or row."""
        if not self._errors:
            return None
        first = min(self._errors)
        return SourceError(f"{self.path} {self._where[first]}", self._errors[first])

    def for_tasks(self) -> TextManifestSource:
        light = copy.copy(self)
        light.items = []
        return light


def open_text_source(path: str, text_column: str = "text", label_column: str | None = None):
    """A folder of ``.txt`` files, or a ``.jsonl``/``.csv``/``.tsv``/``.parquet`` manifest.

    Raises:
        SourceError: the path is missing or of another kind, or the manifest is unusable.
    """
    if os.path.isdir(path):
        return TextFolderSource(path)
    if not os.path.exists(path):
        raise SourceError(path, "no such file or folder")
    if path.lower().endswith(MANIFESTS):
        return TextManifestSource(path, text_column, label_column)
    raise SourceError(path, "unknown text source: give a folder of .txt files or a .jsonl, .csv, .tsv or "
                      ".parquet manifest with a text column")  # fmt: skip


# A row: (where, UTF-8 text or None, error or None, label or None).
Row = tuple[str, "bytes | None", "str | None", Any]


def _text_bytes(value: Any, column: str) -> tuple[bytes | None, str | None]:
    if not isinstance(value, str):
        what = "missing" if value is None else f"a {type(value).__name__}, not a string"
        return None, f"the text field {column!r} is {what}"
    try:
        return value.encode("utf-8"), None
    except UnicodeEncodeError as exc:  # lone surrogates: undecodable bytes or a bad \\u escape
        return None, f"the text is not valid UTF-8 (at character {exc.start})"


def _jsonl_rows(path: str, text_column: str, label_column: str, label_given: bool) -> list[Row]:
    rows: list[Row] = []
    seen_label = False
    for n, raw in enumerate(_read(path).split(b"\n"), start=1):
        if not raw.strip():
            continue
        where = f"line {n}"
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            rows.append((where, None, f"the line is not valid UTF-8 text (byte {exc.start}: {exc.reason})", None))
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            rows.append((where, None, f"not JSON ({exc})", None))
            continue
        if not isinstance(row, dict):
            rows.append((where, None, f"expected a JSON object with a {text_column!r} field", None))
            continue
        text, error = _text_bytes(row.get(text_column), text_column)
        label = row.get(label_column)
        seen_label = seen_label or label_column in row
        rows.append((where, text, error, label if isinstance(label, (str, int)) and not isinstance(label, bool) else None))
    if label_given and rows and not seen_label:
        raise SourceError(path, f"no line has the label field {label_column!r}")
    return rows


def _csv_rows(path: str, text_column: str, label_column: str, label_given: bool) -> list[Row]:
    text = _read(path).decode("utf-8", errors="surrogateescape")
    reader = csv.DictReader(io.StringIO(text, newline=""), dialect="excel-tab" if path.lower().endswith(".tsv") else "excel")
    columns = reader.fieldnames or []
    if text_column not in columns:
        raise SourceError(path, f"no column {text_column!r} (columns: {', '.join(columns) or 'none'}); "
                          "name the text column with --text-column")  # fmt: skip
    if label_given and label_column not in columns:
        raise SourceError(path, f"no label column {label_column!r} (columns: {', '.join(columns)})")
    rows: list[Row] = []
    start = reader.line_num + 1
    for n, row in enumerate(reader, start=1):
        where = f"row {n} (line {start})"
        start = reader.line_num + 1
        value, error = _text_bytes(row.get(text_column), text_column)
        label = row.get(label_column) or None
        rows.append((where, value, error, label.strip() if label else None))
    return rows


def _parquet_rows(path: str, text_column: str, label_column: str, label_given: bool) -> list[Row]:
    try:
        import pyarrow.parquet as pq
    except ImportError as exc:
        raise SourceError(path, "reading Parquet needs pyarrow, which is not installed: pip install pyarrow") from exc
    try:
        names = pq.read_schema(path).names
    except Exception as exc:  # pyarrow raises its own types
        raise SourceError(path, f"cannot read the Parquet file: {exc}") from exc
    if text_column not in names:
        raise SourceError(path, f"no column {text_column!r} (columns: {', '.join(names)}); "
                          "name the text column with --text-column")  # fmt: skip
    if label_given and label_column not in names:
        raise SourceError(path, f"no label column {label_column!r} (columns: {', '.join(names)})")
    table = pq.read_table(path, columns=[text_column] + ([label_column] if label_column in names else []))
    texts = table.column(text_column).to_pylist()
    labels = table.column(label_column).to_pylist() if label_column in names else [None] * len(texts)
    return [(f"row {i + 1}", *_text_bytes(t, text_column), label) for i, (t, label) in enumerate(zip(texts, labels, strict=True))]


def _read(path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as exc:
        raise SourceError(path, f"cannot read: {exc.strerror or exc}") from exc


def _is_int(value: Any) -> bool:
    return isinstance(value, int) or (isinstance(value, str) and value.strip().lstrip("+-").isdigit())


def _key_stem(path: str) -> str:
    return make_key(os.path.basename(path)).replace("/", "_")


def _check_unique(items: list[Item], origin: str) -> list[Item]:
    seen: dict[str, Item] = {}
    for item in items:
        other = seen.setdefault(item.key, item)
        if other is not item:
            raise SourceError(origin, f"{other.ref!r} and {item.ref!r} map to the same document key {item.key!r}; rename one")
    return items
