"""Tokenizing throughput: ``fastdata convert --tokenize`` with worker processes against a
single-process loop of the same tokenizer over the same documents.

Run: ``python benchmarks/bench_tokenize.py [--docs 4000] [--repeats 3] [--workers 2]``.
The corpus is text that ships with Python and the installed packages, no network: the
help topics of ``pydoc_data`` and the docstrings of every module, class and function in
the source files of numpy, torch and the standard library (read with ``ast``, nothing
imported), up to ``--docs`` documents, written to one JSONL manifest in a temporary folder.
Two tokenizers: the built-in ``bytes`` and a byte-level BPE (``--vocab`` ids) trained on
the corpus with the ``tokenizers`` library (training not timed).

The loop is what one writes without fastdata: ``tok.encode(text) + [eod]`` per document,
gathered into one NumPy array, nothing written. ``convert`` is the whole conversion (read
the manifest, plan, tokenize in ``--workers`` processes, write shards and index). Prints a
markdown table: documents/s and tokens/s (median of the repetitions, min-max) and the
ratio to the loop; candidates alternate within each repetition.
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator

import numpy as np

from fastdata.convert.tokenize import TokenizeOptions, convert_tokens
from fastdata.convert.tokenizers import load_tokenizer


def _docstrings(folder: str) -> Iterator[str]:
    for dirpath, dirnames, names in os.walk(folder):
        dirnames.sort()
        for name in sorted(names):
            if not name.endswith(".py"):
                continue
            try:
                with open(os.path.join(dirpath, name), encoding="utf-8") as f:
                    tree = ast.parse(f.read())
            except (SyntaxError, UnicodeDecodeError, OSError, ValueError):
                continue
            for node in ast.walk(tree):
                if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                    doc = ast.get_docstring(node)
                    if doc and len(doc) > 40:
                        yield doc


def corpus(limit: int) -> list[str]:
    """Up to ``limit`` documents of text that ships with Python and the installed packages."""
    from pydoc_data.topics import topics

    docs = [text for _, text in sorted(topics.items())]
    folders = []
    for name in ("numpy", "torch", "json", "email", "asyncio"):
        try:
            spec = __import__("importlib.util").util.find_spec(name)
        except (ImportError, ValueError):
            continue
        if spec is not None and spec.origin:
            folders.append(os.path.dirname(spec.origin))
    for folder in folders:
        for doc in _docstrings(folder):
            if len(docs) >= limit:
                return docs
            docs.append(doc)
    return docs[:limit]


def train_bpe(docs: list[str], vocab: int, path: str) -> str:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab, special_tokens=["<|endoftext|>"], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())  # fmt: skip
    tok.train_from_iterator(docs, trainer)
    tok.save(path)
    return path


def loop(spec: str, docs: list[str]) -> int:
    """The single-process baseline; returns the token count."""
    tok = load_tokenizer(spec)
    ids: list[int] = []
    for text in docs:
        ids += tok.encode(text)
        ids.append(tok.eod)
    return len(np.asarray(ids, dtype=np.uint16 if tok.vocab_size <= 1 << 16 else np.uint32))


def run_convert(spec: str, manifest: str, out: str, workers: int, tokens_per_shard: int) -> int:
    options = TokenizeOptions(tokenizer=spec, workers=workers, tokens_per_shard=tokens_per_shard)
    return convert_tokens(manifest, os.path.join(out, "t-%06d.tar"), options).tokens


def measure(spec: str, docs: list[str], manifest: str, work: str, workers: int, repeats: int,
            tokens_per_shard: int) -> dict[str, tuple[list[float], int]]:
    """Seconds of each candidate per repetition, and its token count."""
    times: dict[str, list[float]] = {"loop": [], "convert": []}
    counts = {}
    for r in range(repeats):
        for name in times:
            out = os.path.join(work, f"out-{r}")
            start = time.perf_counter()
            if name == "loop":
                counts[name] = loop(spec, docs)
            else:
                counts[name] = run_convert(spec, manifest, out, workers, tokens_per_shard)
            times[name].append(time.perf_counter() - start)
            shutil.rmtree(out, ignore_errors=True)
    return {name: (times[name], counts[name]) for name in times}


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--docs", type=int, default=4000, help="documents in the corpus")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2, help="-j of the convert candidate")
    parser.add_argument("--vocab", type=int, default=4096, help="ids of the BPE trained on the corpus")
    args = parser.parse_args(argv)
    docs = corpus(args.docs)
    total_bytes = sum(len(d.encode()) for d in docs)
    lines = [f"{len(docs)} documents, {total_bytes / 1e6:.1f} MB of text; convert -j {args.workers}; "
             f"median of {args.repeats} (min-max)", "",
             "| tokenizer | candidate | docs/s | tokens/s | tokens | vs loop |", "|---|---|---|---|---|---|"]  # fmt: skip
    with tempfile.TemporaryDirectory() as work:
        manifest = os.path.join(work, "docs.jsonl")
        with open(manifest, "w", encoding="utf-8") as f:
            f.writelines(json.dumps({"text": d}) + "\n" for d in docs)
        specs = {"bytes": "bytes", f"bpe-{args.vocab}": train_bpe(docs, args.vocab, os.path.join(work, "tokenizer.json"))}
        for label, spec in specs.items():
            tok = load_tokenizer(spec)  # a warm-up pass (not timed) sizes the shards: several tasks per worker
            lengths = [len(tok.encode(d)) + 1 for d in docs]
            per_shard = max(max(lengths), sum(lengths) // (4 * max(1, args.workers)))
            results = measure(spec, docs, manifest, work, args.workers, args.repeats, per_shard)
            base = statistics.median(results["loop"][0])
            for name, (secs, tokens) in results.items():
                med = statistics.median(secs)
                lines.append(f"| {label} | {name if name == 'loop' else f'convert -j {args.workers}'} | "
                             f"{len(docs) / med:,.0f} | {tokens / med:,.0f} ({tokens / max(secs):,.0f}-"
                             f"{tokens / min(secs):,.0f}) | {tokens:,} | {base / med:.2f}× |")  # fmt: skip
    return "\n".join(lines)


if __name__ == "__main__":
    print(main(sys.argv[1:]))
