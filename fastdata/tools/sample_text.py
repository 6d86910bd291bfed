"""A real, labelled text corpus built offline from what Python and its packages ship.

The documents are the Python language reference topics of ``pydoc_data.topics`` (cut into
passages) and the docstrings of installed libraries (read from their source files with
``ast``: nothing is imported, no code runs). Each document is labelled by where it comes
from:

- ``python-reference``: the reference manual's prose (``help("if")`` and friends);
- ``numpy``: NumPy's docstrings (numpydoc: ``Parameters`` / ``----------`` sections);
- ``torch``: docstrings of ``torch.nn``, ``torch.optim``, ``torch.utils.data`` (Google style,
  reST maths);
- ``stdlib``: docstrings of standard-library packages (email, xml, unittest, asyncio, http,
  logging, json, importlib, concurrent...).

``make_text_corpus`` balances the classes, removes exact duplicates (a text found twice is
kept once; one found under two labels is dropped), splits off held-out documents and writes
``train.jsonl`` and ``val.jsonl`` manifests (``text``, ``label``) for
``fastdata convert --tokenize``.
"""

from __future__ import annotations

import ast
import importlib.util
import itertools
import json
import random
from collections.abc import Iterator
from pathlib import Path

SOURCES = {
    "numpy": ("numpy",),
    "torch": ("torch.nn", "torch.optim", "torch.utils.data"),
    "stdlib": ("email", "xml", "unittest", "asyncio", "http", "logging", "json", "importlib",
               "concurrent", "urllib", "tkinter", "idlelib"),  # fmt: skip
}
MIN_CHARS = 200  # shorter docstrings say little ("Return self.")


def python_reference(max_chars: int = 2000) -> list[str]:
    """The reference topics of ``pydoc_data.topics``, cut into passages of whole paragraphs
    of ``MIN_CHARS`` to about ``max_chars`` characters."""
    from pydoc_data.topics import topics

    passages = []
    for name in sorted(topics):
        passage = ""
        for paragraph in topics[name].split("\n\n"):
            if passage and len(passage) + len(paragraph) > max_chars:
                passages.append(passage)
                passage = ""
            passage = f"{passage}\n\n{paragraph}" if passage else paragraph
        passages.append(passage)
    return [p.strip() for p in passages if len(p.strip()) >= MIN_CHARS]


def _source_files(package: str) -> list[Path]:
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):  # a parent package that is not installed
        return []
    if spec is None or spec.origin is None:
        return []
    if not spec.submodule_search_locations:
        return [Path(spec.origin)]
    files = sorted(Path(spec.origin).parent.rglob("*.py"))
    return [f for f in files if not any(part.startswith("test") for part in f.parts[-3:])]


def docstrings(package: str) -> Iterator[str]:
    """Docstrings of the modules, classes and functions of ``package``'s source files (read
    with ``ast``, never imported), in file order; test modules are left out."""
    for path in _source_files(package):
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError, OSError, ValueError):
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
                text = ast.get_docstring(node)
                if text and len(text) >= MIN_CHARS:
                    yield text


def collect(max_chars: int = 2000, limit: int | None = None) -> dict[str, list[str]]:
    """The documents of every class (see the module docstring), each cut to ``max_chars``,
    duplicates removed; with ``limit``, a class's sources are read (in file order) only
    until it has that many."""
    found = {"python-reference": [p[:max_chars] for p in python_reference(max_chars)[:limit]]}
    for label, packages in SOURCES.items():
        texts = (d[:max_chars] for p in packages for d in docstrings(p))
        found[label] = list(itertools.islice(texts, limit))
    owners: dict[str, set[str]] = {}
    for label, texts in found.items():
        for text in texts:
            owners.setdefault(text, set()).add(label)
    out = {}
    for label, texts in found.items():
        unique = dict.fromkeys(t for t in texts if owners[t] == {label})
        out[label] = list(unique)
    return out


def make_text_corpus(
    out: str | Path,
    per_class: int = 300,
    val_fraction: float = 0.2,
    max_chars: int = 2000,
    seed: int = 0,
) -> dict:
    """Writes ``out/train.jsonl`` and ``out/val.jsonl`` (``{"text", "label"}`` per line).

    Every class gets the same number of documents: ``per_class``, or fewer when a class has
    fewer (then all classes are cut to the smallest). A seeded ``val_fraction`` of each class
    is held out.

    Returns:
        ``{"train", "val"}`` paths, ``"classes"`` and per-split document counts.
    """
    if not 0 < val_fraction < 1:
        raise ValueError(f"val_fraction must lie in (0, 1), got {val_fraction}")
    found = collect(max_chars, limit=2 * per_class)  # room for the duplicates removed
    n = min(per_class, *(len(v) for v in found.values()))
    rng = random.Random(seed)
    splits: dict[str, list[dict]] = {"train": [], "val": []}
    for label in sorted(found):
        texts = sorted(found[label])
        rng.shuffle(texts)
        n_val = max(1, round(n * val_fraction))
        splits["val"] += [{"text": t, "label": label} for t in texts[:n_val]]
        splits["train"] += [{"text": t, "label": label} for t in texts[n_val:n]]
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    result: dict = {"classes": sorted(found), "available": {k: len(v) for k, v in found.items()}}
    for split, rows in splits.items():
        rng.shuffle(rows)
        path = out / f"{split}.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
        result[split] = str(path)
        result[f"{split}_documents"] = len(rows)
    return result
