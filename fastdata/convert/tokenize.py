"""``fastdata convert --tokenize``: text documents into token shards (``fastdata.shards.tokens``).

The same plan / task / engine split as the image conversion (``fastdata.convert.command``):
the driver lists the documents, finds duplicates (``--dedupe``), measures the tokenizer's
bytes per token and plans the token shard tasks (NOTE [ Planning token shards ] in
``fastdata.convert.token_task``); the local process pool or Ray runs them, each task
tokenizing its documents and writing its shard and a part; a merge writes the index. A
re-run resumes (NOTE [ Resuming a conversion ] in ``fastdata.convert.command``): the plan
file in ``<index>.parts/`` keeps the measured bytes per token and the duplicates, so the
re-run plans exactly the same tasks.
"""

from __future__ import annotations

import hashlib
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from tqdm import tqdm

from fastdata.convert.local_engine import run_tasks
from fastdata.convert.plan import find_duplicates, sample_order
from fastdata.convert.prepare import PrepareOptions
from fastdata.convert.task import (
    Report,
    check_output_folder,
    check_pattern_arg,
    clean_up,
    fingerprint,
    read_plan,
    what_it_writes,
    write_plan,
)
from fastdata.convert.text_sources import open_text_source
from fastdata.convert.token_task import (
    EMPTY,
    TokenSettings,
    TokenTask,
    cached_tokenizer,
    cut_token_shards,
    make_token_tasks,
    read_text,
    run_token_task,
)
from fastdata.errors import FastdataError
from fastdata.shards.index import write_index
from fastdata.shards.verify import plural

DTYPES = ("auto", "uint16", "uint32")
_SAMPLE_DOCS, _SAMPLE_BYTES = 256, 4 << 20  # what the bytes-per-token measurement reads at most


@dataclass(frozen=True)
class TokenizeOptions:
    """How to tokenize; see ``fastdata convert --help``. ``workers``, ``engine``,
    ``ray_address`` and ``retries`` choose how the tasks run, never what they write."""

    tokenizer: str = "bytes"
    tokens_per_shard: int = 1 << 24
    maxsize: float = 1e9
    dtype: str = "auto"
    text_column: str = "text"
    label_column: str | None = None
    workers: int = 0
    shuffle_seed: int | None = None
    drop_corrupt: bool = False
    dedupe: bool = False
    engine: str = "local"
    ray_address: str | None = None
    retries: int = 2


@dataclass(kw_only=True)
class TokenReport(Report):
    """What a tokenizing conversion did: ``tokens`` of ``documents``."""

    tokens: int
    documents: int

    @property
    def empty(self) -> int:
        return sum(s["reason"] == EMPTY for s in self.skipped)


def convert_tokens(src: str, pattern: str, options: TokenizeOptions = TokenizeOptions(), *,
                   progress: bool = False) -> TokenReport:
    """Tokenizes the documents of ``src`` into token shards named by ``pattern``.

    Raises:
        SourceError: a document cannot be read or is not UTF-8 (without ``drop_corrupt``),
            is longer than a shard, or the tokenizer file is missing or of another kind.
        FastdataError: bad options (a vocabulary too large for ``dtype="uint16"``...), or
            an interrupted conversion with other options in the output folder.
    """
    start = time.perf_counter()
    _check_options(src, pattern, options)
    tok = cached_tokenizer(options.tokenizer)
    dtype = _dtype(options.dtype, tok.vocab_size, tok.name)
    source = open_text_source(src, options.text_column, options.label_column)
    if not options.drop_corrupt and (error := source.first_error()) is not None:
        raise type(error)(error.path, f"{error.message} (use --drop-corrupt to skip such documents)")
    fprint = fingerprint(source, pattern, what_it_writes(options, tokenizer_sha256=tok.digest),
                         format="fastdata-tokens")
    meta = {"tokenizer": tok.name, "vocab_size": tok.vocab_size, "eod": tok.eod, "pad": tok.pad}
    settings = TokenSettings(pattern, fprint, options.drop_corrupt, PrepareOptions(), options.tokenizer,
                             dtype, options.tokens_per_shard, source.has_labels, meta)  # fmt: skip
    if os.path.islink(settings.parts_dir):  # never write parts through a link (NOTE [ Temporary files ])
        os.unlink(settings.parts_dir)
    order = sample_order(len(source.items), options.shuffle_seed)
    plan = read_plan(settings) or {}
    duplicates = plan.get("duplicates")
    if duplicates is None:
        duplicates = _duplicates(source, order) if options.dedupe else {}
    duplicates = {int(pos): key for pos, key in duplicates.items()}
    kept = [index for pos, index in enumerate(order) if pos not in duplicates]
    ratio = plan.get("bytes_per_token") or _bytes_per_token(source, kept, options.tokenizer)
    write_plan(settings, duplicates, bytes_per_token=ratio)
    sizes = [source.size(source.items[i]) for i in kept]
    starts = cut_token_shards(sizes, ratio, options.tokens_per_shard, options.maxsize / (2 if dtype == "uint16" else 4))
    tasks = make_token_tasks(source, kept, starts)
    resumed = 0
    with tqdm(total=len(kept), unit="doc", desc="tokenize", disable=not progress, dynamic_ncols=True,
              file=sys.stderr) as bar:  # fmt: skip

        def on_done(task: TokenTask, reused: bool) -> None:
            nonlocal resumed
            resumed += reused
            bar.update(len(task))

        parts = _run(source, tasks, settings, options, on_done)
    shards = [p["shard"] for p in parts]
    skipped = sorted((s for p in parts for s in p["skipped"]), key=lambda s: s["pos"])
    dups = [{"key": source.items[order[pos]].key, "source": source.origin(source.items[order[pos]]),
             "duplicate_of": key} for pos, key in sorted(duplicates.items())]  # fmt: skip
    report = TokenReport(index_path=settings.index_path, shards=shards, tokens=sum(s["tokens"] for s in shards),
                         documents=sum(s["documents"] for s in shards),
                         skipped=[{k: v for k, v in s.items() if k != "pos"} for s in skipped], duplicates=dups,
                         seconds=time.perf_counter() - start, resumed_shards=resumed)  # fmt: skip
    write_index(settings.index_path, _index_body(source, pattern, options, settings, report))
    clean_up(settings, len(tasks))
    return report


def _check_options(src: str, pattern: str, options: TokenizeOptions) -> None:
    def need(ok: bool, message: str) -> None:
        if not ok:
            raise FastdataError(f"convert: {message}")

    need(isinstance(options.tokens_per_shard, int) and options.tokens_per_shard >= 2,
         f"--tokens-per-shard must be a whole number >= 2, got {options.tokens_per_shard!r}")
    need(options.dtype in DTYPES, f"--dtype must be one of {', '.join(DTYPES)}, got {options.dtype!r}")
    need(options.engine in ("local", "ray"), f"unknown engine {options.engine!r}: use local or ray")
    need(isinstance(options.maxsize, (int, float)) and options.maxsize >= 64,
         f"--maxsize must be a size such as 500M or 1G, got {options.maxsize!r}")
    need(isinstance(options.workers, int) and options.workers >= 0,
         f"-j/--workers must be 0 (no worker processes) or more, got {options.workers!r}")
    check_pattern_arg(pattern)
    check_output_folder(pattern)


def _dtype(requested: str, vocab_size: int, name: str) -> str:
    if requested == "auto":
        return "uint16" if vocab_size <= 1 << 16 else "uint32"
    if requested == "uint16" and vocab_size > 1 << 16:
        raise FastdataError(f"convert: the tokenizer {name} has {vocab_size} ids, more than --dtype uint16 holds "
                            "(65536); use --dtype uint32 or --dtype auto")  # fmt: skip
    return requested


def _duplicates(source, order: list[int]) -> dict[int, str]:
    """Position in ``order`` → key of the first earlier document with the same bytes."""
    digests = []
    for index in order:
        item = source.items[index]
        try:
            digests.append(hashlib.sha256(source.read(item)).hexdigest())
        except (OSError, FastdataError):
            digests.append(None)  # unreadable: the task reports it
    return find_duplicates([source.items[i].key for i in order], digests)


def _bytes_per_token(source, kept: list[int], spec: str) -> float:
    """The tokenizer's bytes per token on documents spread evenly over ``kept`` (NOTE [ Planning token shards ])."""
    if spec == "bytes" or not kept:
        return 1.0
    tok = cached_tokenizer(spec)
    step = max(1, len(kept) // _SAMPLE_DOCS)
    size = tokens = 0
    for index in kept[::step]:
        item = source.items[index]
        text, reason = read_text(source, item, "")
        if reason is None and text.strip():
            size += len(text.encode("utf-8"))
            tokens += len(tok.encode(text))
        if size >= _SAMPLE_BYTES:
            break
    return max(1.0, size / tokens) if tokens else 1.0


def _run(source, tasks: list[TokenTask], settings: TokenSettings, options: TokenizeOptions,
         on_done: Callable[[TokenTask, bool], None]) -> list[dict[str, Any]]:
    """Runs the tasks on the chosen engine; returns their parts in task order."""
    if options.engine == "ray":
        from fastdata.convert.ray_engine import RayEngine

        with RayEngine(source, options.ray_address, options.retries) as engine:
            return engine.run(tasks, settings, on_done, task_fn=run_token_task)
    return run_tasks(source, tasks, settings, on_done, run_token_task, options.workers, worker_init=_one_thread)


def _one_thread() -> None:
    os.environ["TOKENIZERS_PARALLELISM"] = "false"  # one thread per worker process: -j sets the cores used


def _index_body(source, pattern: str, options: TokenizeOptions, settings: TokenSettings, report: TokenReport) -> dict:
    return {
        "pattern": os.path.basename(pattern), "shard_format": "fastdata-tokens",  # "format" is the index's
        "num_samples": sum(s["count"] for s in report.shards), "shards": report.shards,
        "tokens": report.tokens, "documents": report.documents, "dtype": settings.dtype, **settings.meta,
        "labels": source.label_map, "label_map": source.label_map,  # label_map: the name the image sources use
        "source": source.describe(), "skipped": report.skipped, "duplicates": report.duplicates,
        "options": what_it_writes(options, tokenizer_sha256=cached_tokenizer(options.tokenizer).digest),
        "fingerprint": settings.fingerprint,
    }  # fmt: skip


def format_token_report(report: TokenReport) -> str:
    """The human-readable summary of a tokenizing conversion."""
    rate = report.tokens / report.seconds if report.seconds > 0 else 0.0
    lines = [
        f"wrote {plural(report.tokens, 'token')} of {plural(report.documents, 'document')} in "
        f"{plural(len(report.shards), 'shard')}, {report.bytes / 1e6:.1f} MB, {report.seconds:.1f} s "
        f"({rate:.0f} tokens/s)",
        f"index: {report.index_path}",
    ]
    if report.resumed_shards:
        lines.append(f"resumed an interrupted conversion: {plural(report.resumed_shards, 'shard')} already complete")
    if report.empty:
        lines.append(f"skipped {plural(report.empty, 'empty document')} (no text, or only white space)")
    corrupt = [s for s in report.skipped if s["reason"] != EMPTY]
    if corrupt:
        lines.append(f"skipped {plural(len(corrupt), 'unreadable document')}:")
        lines += [f"  {s['source']}: {s['reason']}" for s in corrupt[:20]]
    if report.duplicates:
        lines.append(f"left out {plural(len(report.duplicates), 'duplicate')}:")
        lines += [f"  {d['source']} = {d['duplicate_of']}" for d in report.duplicates[:20]]
    return "\n".join(lines)
