"""``fastdata convert``: a dataset (image folder, manifest, arrays) into WebDataset shards.

The order of samples is fixed up front (the source's order, or a seeded shuffle of it);
worker processes prepare samples (``fastdata.convert.prepare``) and the main process writes them
in that order, so the output is byte-identical whatever the number of workers.

NOTE [ Which samples go to the workers ]
Storing a file as it is costs less than sending it through a pipe, so worker processes get
only the samples that are decoded: all of them with ``--drop-corrupt``, re-encoding or
``--raw``, else the evenly spread statistics sample. The main process prepares the others
itself and writes everything in order; a worker hands back a stored-as-is file as None
and the main process reads it (``PrepareOptions.ship_bytes``).

NOTE [ Resuming a conversion ]
After each complete shard the converter rewrites a journal ``<index>.partial`` holding the
shards so far, the position in the sample order where the next shard starts, the skipped
and duplicate lists and the statistics accumulated so far; with ``dedupe`` the content
digests of the stored samples are appended to ``<index>.partial.digests``. A re-run with
the same source and options checks those shards (size and hash), restores that state and
continues at the recorded position; since shard boundaries depend only on the samples
before them, the result is the same as an uninterrupted run. The journal is removed once
the index is written.
"""

from __future__ import annotations

import hashlib
import json
import math
import multiprocessing
import os
import random
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from tqdm import tqdm

from fastdata.convert.prepare import (
    Prepared,
    PrepareOptions,
    init_worker,
    prepare_item,
    prepare_task,
)
from fastdata.convert.sources import open_source
from fastdata.errors import FastdataError, SourceError
from fastdata.shards.index import StatsAccumulator, index_path_for_pattern, write_index
from fastdata.shards.writer import ShardInfo, ShardWriter


@dataclass(frozen=True)
class ConvertOptions:
    """How to convert; see ``fastdata convert --help`` for each option."""

    maxcount: int = 10_000
    maxsize: float = 1e9
    workers: int = 0
    shuffle_seed: int | None = None
    drop_corrupt: bool = False
    dedupe: bool = False
    stats_samples: int = 500
    prepare: PrepareOptions = field(default_factory=PrepareOptions)


@dataclass
class ConvertReport:
    """What a conversion did; also stored in the index."""

    index_path: str
    shards: list[dict[str, Any]]
    written: int
    skipped: list[dict[str, str]]
    duplicates: list[dict[str, str]]
    seconds: float
    resumed_from: int = 0

    @property
    def bytes(self) -> int:
        return sum(s["bytes"] for s in self.shards)


def convert(src: str, pattern: str, options: ConvertOptions = ConvertOptions(), *,
            labels_path: str | None = None, int_labels: bool = False, progress: bool = False) -> ConvertReport:
    """Converts ``src`` into shards named by ``pattern`` (e.g. ``out/train-%06d.tar``).

    Raises:
        SourceError: a sample cannot be read or decoded and ``drop_corrupt`` is off.
    """
    start = time.perf_counter()
    options = replace(options, prepare=replace(options.prepare, digest=options.dedupe))
    source = open_source(src, labels_path=labels_path, int_labels=int_labels)
    order = list(range(len(source.items)))
    if options.shuffle_seed is not None:
        random.Random(options.shuffle_seed).shuffle(order)
    index_path = index_path_for_pattern(pattern)
    fingerprint = _fingerprint(source, pattern, options)
    state = _Journal(index_path, fingerprint).restore(pattern, options)
    stride = max(1, math.ceil(len(order) / max(1, options.stats_samples)))
    stats_on = options.stats_samples > 0

    def tasks() -> Iterator[tuple]:
        for pos in range(state.next_pos, len(order)):
            yield pos, source.items[order[pos]], stats_on and pos % stride == 0

    with tqdm(total=len(order), initial=state.next_pos, unit="img", desc="convert", disable=not progress,
              dynamic_ncols=True, file=sys.stderr) as bar:
        try:
            for prepared in _run_prepare(source, tasks, options):
                _consume(state, source, source.items[order[prepared.ordinal]], prepared, options)
                bar.update(1)
        except BaseException:
            state.writer.abort()  # complete shards and the journal stay for a re-run to resume
            raise
    shards = [s.to_dict() for s in state.close()]
    report = ConvertReport(index_path, shards, sum(s["count"] for s in shards), state.skipped,
                           state.duplicates, time.perf_counter() - start, state.resumed_from)
    write_index(index_path, _index_body(source, pattern, options, fingerprint, state, report))
    state.journal.remove()
    return report


def _run_prepare(source, tasks: Callable[[], Iterator[tuple]], options: ConvertOptions) -> Iterator[Prepared]:
    """Prepared samples in order; see NOTE [ Which samples go to the workers ]."""
    if options.workers <= 0:
        for ordinal, item, with_stats in tasks():
            yield prepare_item(source, item, ordinal, options.prepare, with_stats)
        return
    heavy = options.prepare.decodes_all
    ctx = multiprocessing.get_context("fork" if sys.platform == "linux" else "spawn")
    in_worker = replace(options.prepare, ship_bytes=False)
    with ctx.Pool(options.workers, initializer=init_worker, initargs=(source, in_worker)) as pool:
        done = pool.imap(prepare_task, (t for t in tasks() if heavy or t[2]), chunksize=4)
        for ordinal, item, with_stats in tasks():
            if heavy or with_stats:
                yield next(done)
            else:
                yield prepare_item(source, item, ordinal, options.prepare, False)


class _State:
    """The running state of a conversion: writer, statistics, skips, duplicates."""

    def __init__(self, pattern: str, options: ConvertOptions, journal: _Journal, saved: dict | None) -> None:
        saved = saved or {}
        self.journal = journal
        self.options = options
        self.shards = [ShardInfo(**s) for s in saved.get("shards", [])]
        self.next_pos = self.resumed_from = saved.get("next_pos", 0)
        self.skipped: list[dict[str, str]] = saved.get("skipped", [])
        self.duplicates: list[dict[str, str]] = saved.get("duplicates", [])
        self.stats = StatsAccumulator.from_state(saved["stats"]) if saved else StatsAccumulator()
        self.seen: dict[str, str] = journal.read_digests(saved.get("digests", 0)) if options.dedupe else {}
        self.seen_labels: dict[str, object] = {}  # digest -> label of the sample kept
        self.new_digests: list[tuple[str, str]] = []
        self.fields: set[str] = set(saved.get("fields", []))
        self.writer = ShardWriter(pattern, options.maxcount, options.maxsize, start_shard=len(self.shards), index=False)

    def close(self) -> list[ShardInfo]:
        self.writer.close()
        return self.shards + self.writer.shards


def _consume(state: _State, source, item, prepared: Prepared, options: ConvertOptions) -> None:
    origin = source.origin(item)
    if prepared.error is not None:
        if not options.drop_corrupt:
            raise SourceError(origin, f"{prepared.error} (use --drop-corrupt to skip such samples)")
        state.skipped.append({"key": item.key, "source": origin, "reason": prepared.error})
    elif options.dedupe and prepared.digest in state.seen:
        duplicate = {"key": item.key, "source": origin, "duplicate_of": state.seen[prepared.digest]}
        kept = state.seen_labels.get(prepared.digest, item.label)  # unknown for resumed digests
        if kept != item.label:  # the same content filed under two labels: say so
            duplicate["label_conflict"] = f"label {item.label!r} here, {kept!r} kept"
        state.duplicates.append(duplicate)
    else:
        if options.dedupe:
            state.seen[prepared.digest] = item.key
            state.seen_labels[prepared.digest] = item.label
            state.new_digests.append((prepared.digest, item.key))
        shards_before = len(state.writer.shards)
        fields = {ext: source.read(item)[1] if data is None else data for ext, data in prepared.fields.items()}
        state.writer.write({"__key__": item.key, **fields})
        state.fields.update(prepared.fields)
        state.stats.add_size(*prepared.size)
        state.stats.add_label(item.label)
        if prepared.pixel_sums is not None:
            state.stats.add_pixels(*prepared.pixel_sums)
        if len(state.writer.shards) > shards_before:
            state.next_pos = prepared.ordinal + 1
            state.journal.save(state)


class _Journal:
    """The ``<index>.partial`` file that makes a conversion resumable."""

    def __init__(self, index_path: str, fingerprint: str) -> None:
        self.path = index_path + ".partial"
        self.digest_path = self.path + ".digests"
        self.fingerprint = fingerprint

    def restore(self, pattern: str, options: ConvertOptions) -> _State:
        saved = self._load()
        if saved is not None:
            folder = os.path.dirname(pattern)
            for shard in saved["shards"]:
                _check_shard(os.path.join(folder, shard["name"]), shard)
        return _State(pattern, options, self, saved)

    def _load(self) -> dict | None:
        if not os.path.exists(self.path):
            return None
        with open(self.path, encoding="utf-8") as f:
            saved = json.load(f)
        if saved.get("fingerprint") != self.fingerprint:
            raise FastdataError(
                f"{self.path}: an interrupted conversion with another source or other options is "
                "in this folder; re-run it with the same arguments, or delete this file to start over"
            )
        return saved

    def save(self, state: _State) -> None:
        if state.new_digests:
            with open(self.digest_path, "a", encoding="utf-8") as f:
                f.writelines(f"{d} {k}\n" for d, k in state.new_digests)
            state.new_digests.clear()
        body = {
            "fingerprint": self.fingerprint,
            "shards": [s.to_dict() for s in state.shards + state.writer.shards],
            "next_pos": state.next_pos, "skipped": state.skipped, "duplicates": state.duplicates,
            "stats": state.stats.state(), "digests": len(state.seen), "fields": sorted(state.fields),
        }
        tmp = self.path + ".tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(body, f)
        os.replace(tmp, self.path)

    def read_digests(self, count: int) -> dict[str, str]:
        if not count:
            return {}
        with open(self.digest_path, encoding="utf-8") as f:
            pairs = [line.split(" ", 1) for _, line in zip(range(count), f, strict=False)]
        return {d: k.rstrip("\n") for d, k in pairs}

    def remove(self) -> None:
        for path in (self.path, self.digest_path):
            if os.path.exists(path):
                os.remove(path)


def _check_shard(path: str, expected: dict) -> None:
    if not os.path.exists(path) or os.path.getsize(path) != expected["bytes"]:
        raise FastdataError(f"{path}: recorded as complete by the conversion journal but missing or "
                            "resized; delete the journal (.partial) to start over")
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    if digest.hexdigest() != expected["sha256"]:
        raise FastdataError(f"{path}: content changed since it was written; delete the journal to start over")


def _fingerprint(source, pattern: str, options: ConvertOptions) -> str:
    body = {"source": source.describe(), "count": len(source.items), "pattern": os.path.basename(pattern),
            "options": asdict(options) | {"workers": None}}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def _index_body(source, pattern, options, fingerprint, state: _State, report: ConvertReport) -> dict:
    return {
        "pattern": os.path.basename(pattern), "num_samples": report.written, "shards": report.shards,
        "fields": sorted(state.fields),
        "label_map": source.label_map, "source": source.describe(),
        "stats": state.stats.summary(), "skipped": report.skipped, "duplicates": report.duplicates,
        "options": asdict(options), "fingerprint": fingerprint,
    }


def _parse_size(text: str) -> float:
    units = {"K": 1e3, "M": 1e6, "G": 1e9, "T": 1e12}
    text = text.strip().upper().removesuffix("B")
    if text and text[-1] in units:
        return float(text[:-1]) * units[text[-1]]
    return float(text)


def register(subparsers) -> None:
    """Adds ``fastdata convert``."""
    p = subparsers.add_parser(
        "convert", help="convert an image folder, manifest or arrays into WebDataset shards",
        description="Convert SRC (a folder with one sub-folder per class, a path,label CSV/JSONL "
        "manifest, or .npy/.npz arrays) into tar shards named by OUT_PATTERN, plus an index JSON.")
    p.add_argument("src", help="image folder, .csv/.jsonl manifest, or .npy/.npz arrays")
    p.add_argument("pattern", metavar="OUT_PATTERN", help="output shards, e.g. shards/train-%%06d.tar")
    p.add_argument("--maxcount", "--samples-per-shard", type=int, default=10_000, help="most samples per shard")
    p.add_argument("--maxsize", "--shard-size", type=_parse_size, default=1e9,
                   help="most bytes per shard, e.g. 500M or 1G (default 1G)")
    p.add_argument("-j", "--workers", type=int, default=os.cpu_count() or 1,
                   help="worker processes for decoding (default: all cores; 0 = none)")
    p.add_argument("--shuffle", action="store_true", help="shuffle the sample order (seeded) before writing")
    p.add_argument("--seed", type=int, default=0, help="seed of --shuffle (default 0)")
    p.add_argument("--drop-corrupt", action="store_true",
                   help="decode every image; leave out samples that do not decode and list them in the report")
    p.add_argument("--dedupe", action="store_true", help="store identical content once; list duplicates")
    p.add_argument("--max-side", type=int, help="re-encode images so that the longer side is at most this")
    p.add_argument("--quality", type=int, help="JPEG quality of re-encoded images (re-encodes every image)")
    p.add_argument("--raw", action="store_true",
                   help="store decoded uint8 pixels (.npy) instead of compressed files: no decoding when loading")
    p.add_argument("--labels", help="labels .npy for an images .npy source")
    p.add_argument("--int-labels", action="store_true", help="require integer labels in a manifest")
    p.add_argument("--stats-samples", type=int, default=500,
                   help="images decoded for the mean/std statistics (evenly spread; 0 = none; default 500)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args) -> int:
    """Runs ``fastdata convert`` and prints its summary."""
    if args.quality is not None and not 1 <= args.quality <= 100:
        raise SystemExit(f"fastdata convert: --quality must be in 1..100, got {args.quality}")
    prepare = PrepareOptions(max_side=args.max_side, quality=args.quality, raw=args.raw,
                             check_decode=args.drop_corrupt)
    options = ConvertOptions(maxcount=args.maxcount, maxsize=args.maxsize, workers=args.workers,
                             shuffle_seed=args.seed if args.shuffle else None, drop_corrupt=args.drop_corrupt,
                             dedupe=args.dedupe, stats_samples=args.stats_samples, prepare=prepare)
    try:
        report = convert(args.src, args.pattern, options, labels_path=args.labels,
                         int_labels=args.int_labels, progress=not args.no_progress)
    except FastdataError as exc:
        print(f"fastdata convert: error: {exc}", file=sys.stderr)
        return 1
    print(format_report(report))
    return 0


def format_report(report: ConvertReport) -> str:
    """The human-readable summary of a conversion."""
    rate = report.written / report.seconds if report.seconds > 0 else 0.0
    lines = [
        f"wrote {report.written} samples in {len(report.shards)} shards, "
        f"{report.bytes / 1e6:.1f} MB, {report.seconds:.1f} s ({rate:.0f} samples/s)",
        f"index: {report.index_path}",
    ]
    if report.resumed_from:
        lines.append(f"resumed an interrupted conversion at sample {report.resumed_from}")
    if report.skipped:
        lines.append(f"skipped {len(report.skipped)} samples:")
        lines += [f"  {s['source']}: {s['reason']}" for s in report.skipped[:20]]
    if report.duplicates:
        lines.append(f"left out {len(report.duplicates)} duplicates:")
        lines += [_duplicate_line(d) for d in sorted(report.duplicates, key=lambda d: "label_conflict" not in d)[:20]]
    return "\n".join(lines)


def _duplicate_line(duplicate: dict) -> str:
    """A duplicate of the report; label conflicts (listed first) say which labels differ."""
    conflict = duplicate.get("label_conflict")
    line = f"  {duplicate['source']} = {duplicate['duplicate_of']}"
    return line + (f" (LABEL CONFLICT: {conflict})" if conflict else "")
