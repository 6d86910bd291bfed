"""``fastdata convert``: a dataset (image folder, manifest, arrays) into WebDataset shards.

The conversion is planned up front as a list of shard tasks (``fastdata.convert.plan``,
NOTE [ Shard tasks ]); an engine runs them (the local process pool by default, or Ray
tasks on one machine or a cluster with ``--engine ray``) and a merge step writes the
index, so the output is byte-identical whatever the engine and the number of workers.

NOTE [ Resuming a conversion ]
Each finished task leaves its shard and a part in ``<index>.parts/``; the plan file there
records the conversion's fingerprint (source and options) and, with ``--dedupe``, the
duplicates found by the first pass. A re-run with the same source and options reuses
every part that is whole (its shard has the recorded size and hash) and runs the other
tasks; a re-run with other options stops with an error instead of mixing two conversions.
The parts are removed once the index is written.
"""

from __future__ import annotations

import math
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from tqdm import tqdm

from fastdata.convert.plan import ShardTask, cut_points, find_duplicates, make_tasks, sample_order
from fastdata.convert.prepare import PrepareOptions
from fastdata.convert.sources import open_source
from fastdata.convert.task import (
    Report,
    TaskSettings,
    check_output_folder,
    check_pattern_arg,
    clean_up,
    fingerprint,
    merge_parts,
    read_plan,
    what_it_writes,
    write_plan,
)
from fastdata.errors import FastdataError
from fastdata.shards.index import write_index
from fastdata.shards.verify import plural

ENGINES = ("local", "ray")


@dataclass(frozen=True)
class ConvertOptions:
    """How to convert; see ``fastdata convert --help`` for each option.

    ``engine``, ``ray_address``, ``retries`` and ``workers`` choose how the shard tasks
    run; they never change the output.
    """

    maxcount: int = 10_000
    maxsize: float = 1e9
    workers: int = 0
    shuffle_seed: int | None = None
    drop_corrupt: bool = False
    dedupe: bool = False
    stats_samples: int = 500
    prepare: PrepareOptions = field(default_factory=PrepareOptions)
    engine: str = "local"
    ray_address: str | None = None
    retries: int = 2


@dataclass(kw_only=True)
class ConvertReport(Report):
    """What an image conversion did: ``written`` samples."""

    written: int


def convert(src: str, pattern: str, options: ConvertOptions = ConvertOptions(), *,
            labels_path: str | None = None, int_labels: bool = False, progress: bool = False) -> ConvertReport:
    """Converts ``src`` into shards named by ``pattern`` (e.g. ``out/train-%06d.tar``).

    Raises:
        SourceError: a sample cannot be read or decoded and ``drop_corrupt`` is off.
        FastdataError: bad options, an interrupted conversion with other options in the
            output folder, or (``engine="ray"``) Ray missing or a task lost.
    """
    start = time.perf_counter()
    check_arguments(src, pattern, options, labels_path)
    if options.engine not in ENGINES:
        raise FastdataError(f"unknown engine {options.engine!r}: use one of {', '.join(ENGINES)}")
    options = replace(options, prepare=replace(options.prepare, digest=False))
    source = open_source(src, labels_path=labels_path, int_labels=int_labels)
    order = sample_order(len(source.items), options.shuffle_seed)
    settings = TaskSettings(pattern, fingerprint(source, pattern, what_it_writes(options)), options.drop_corrupt,
                            options.prepare)
    if os.path.islink(settings.parts_dir):  # never write parts through a link (NOTE [ Temporary files ])
        os.unlink(settings.parts_dir)
    saved = read_plan(settings)
    starts = cut_points(source, order, options.maxcount, options.maxsize, _stored_ext(options.prepare))
    resumed = 0
    with _engine(source, options) as engine:
        duplicates = saved.get("duplicates") if saved else None
        if options.dedupe and duplicates is None:
            digests = engine.digests(make_tasks(source, order, starts, 0, {}))
            duplicates = find_duplicates([source.items[i].key for i in order], digests)
        duplicates = {int(pos): key for pos, key in (duplicates or {}).items()}
        write_plan(settings, duplicates)
        tasks = make_tasks(source, order, starts, options.stats_samples, duplicates)
        with tqdm(total=len(order), unit="img", desc="convert", disable=not progress,
                  dynamic_ncols=True, file=sys.stderr) as bar:

            def on_done(task: ShardTask, reused: bool) -> None:
                nonlocal resumed
                resumed += reused
                bar.update(len(task))

            parts = engine.run(tasks, settings, on_done)
    merged = merge_parts(parts)
    _flag_label_conflicts(merged.duplicates, source)
    report = ConvertReport(index_path=settings.index_path, shards=merged.shards,
                           written=sum(s["count"] for s in merged.shards), skipped=merged.skipped,
                           duplicates=merged.duplicates, seconds=time.perf_counter() - start, resumed_shards=resumed)
    write_index(settings.index_path, _index_body(source, pattern, options, settings.fingerprint, merged, report))
    clean_up(settings, len(tasks))
    return report


def _engine(source, options: ConvertOptions):
    if options.engine == "ray":
        from fastdata.convert.ray_engine import RayEngine

        return RayEngine(source, options.ray_address, options.retries)
    from fastdata.convert.local_engine import LocalEngine

    return LocalEngine(source, options.prepare, options.workers)


def check_arguments(src: str, pattern: str, options: ConvertOptions, labels_path: str | None) -> None:
    """Checks a conversion's arguments before any work, with messages that say how to fix them.

    Raises:
        FastdataError: an option is out of range, the pattern has not exactly one number
            field, ``labels_path`` is given for a source other than ``.npy`` arrays, or the
            output folder cannot be written.
    """
    def need(ok: bool, message: str) -> None:
        if not ok:
            raise FastdataError(f"convert: {message}")

    def is_int(value: Any) -> bool:
        return isinstance(value, int) and not isinstance(value, bool)

    need(is_int(options.maxcount) and options.maxcount >= 1,
         f"--maxcount must be a whole number of samples >= 1, got {options.maxcount!r}")
    need(isinstance(options.maxsize, (int, float)) and math.isfinite(options.maxsize) and options.maxsize >= 1,
         f"--maxsize must be a positive size such as 500M or 1G, got {options.maxsize!r}")
    need(is_int(options.workers) and options.workers >= 0,
         f"-j/--workers must be 0 (no worker processes) or more, got {options.workers!r}")
    need(is_int(options.stats_samples) and options.stats_samples >= 0,
         f"--stats-samples must be 0 (no statistics) or more, got {options.stats_samples!r}")
    side = options.prepare.max_side
    need(side is None or (is_int(side) and side >= 1), f"--max-side must be a size >= 1 pixel, got {side!r}")
    check_pattern_arg(pattern)
    if labels_path is not None:
        need(src.lower().endswith((".npy", ".npz")) and not os.path.isdir(src),
             "--labels applies to a .npy/.npz images source only; a folder takes its labels from "
             "its class sub-folders and a manifest from its label column")  # fmt: skip
    check_output_folder(pattern)


def _stored_ext(prepare: PrepareOptions) -> str | None:
    """The extension transformed samples are stored under (None: files stored as they are)."""
    return "npy" if prepare.raw else "jpg" if prepare.reencode else None


def _index_body(source, pattern, options, fingerprint, merged, report: ConvertReport) -> dict:
    return {
        "pattern": os.path.basename(pattern), "num_samples": report.written, "shards": report.shards,
        "fields": merged.fields,
        "label_map": source.label_map, "source": source.describe(),
        "stats": merged.stats.summary(), "skipped": report.skipped, "duplicates": report.duplicates,
        "options": what_it_writes(options), "fingerprint": fingerprint,
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
                   help="worker processes for decoding with --engine local (default: all cores; 0 = none)")
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
    p.add_argument("--engine", choices=ENGINES, default="local",
                   help="what runs the shard tasks: this machine's process pool (default) or Ray "
                   "(a local instance, or a cluster: --ray-address / RAY_ADDRESS; pip install 'fastdata[ray]')")
    p.add_argument("--ray-address", help="address of a running Ray cluster, e.g. 10.0.0.1:6379 (--engine ray)")
    p.add_argument("--retries", type=int, default=2, help="times a failed shard task is tried again (--engine ray)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    text = p.add_argument_group("text (--tokenize: SRC is a folder of .txt files or a .jsonl/.csv/.parquet "
                                "manifest; writes token shards)")
    text.add_argument("--tokenize", metavar="TOKENIZER",
                      help="tokenize text into token shards with: bytes (built in), a Hugging Face "
                      "tokenizer.json or a tiktoken BPE file (pip install 'fastdata[text]')")
    text.add_argument("--tokens-per-shard", type=int, default=1 << 24,
                      help="tokens per shard (exact for bytes, a close target for a BPE; default 16777216)")
    text.add_argument("--dtype", choices=("auto", "uint16", "uint32"), default="auto",
                      help="token dtype (auto: uint16 when the vocabulary fits)")
    text.add_argument("--text-column", default="text", help="a manifest's text field or column (default text)")
    text.add_argument("--label-column", help="a manifest's label field or column (default: label, if present)")
    p.set_defaults(func=run)


def run(args) -> int:
    """Runs ``fastdata convert`` and prints its summary."""
    if args.tokenize is not None:
        return run_tokenize(args)
    if args.quality is not None and not 1 <= args.quality <= 100:
        raise SystemExit(f"fastdata convert: --quality must be in 1..100, got {args.quality}")
    prepare = PrepareOptions(max_side=args.max_side, quality=args.quality, raw=args.raw,
                             check_decode=args.drop_corrupt)
    options = ConvertOptions(maxcount=args.maxcount, maxsize=args.maxsize, workers=args.workers,
                             shuffle_seed=args.seed if args.shuffle else None, drop_corrupt=args.drop_corrupt,
                             dedupe=args.dedupe, stats_samples=args.stats_samples, prepare=prepare,
                             engine=args.engine, ray_address=args.ray_address, retries=args.retries)
    return _run_and_report(lambda: convert(args.src, args.pattern, options, labels_path=args.labels,
                                           int_labels=args.int_labels, progress=not args.no_progress),
                           format_report)  # fmt: skip


def run_tokenize(args) -> int:
    """Runs ``fastdata convert --tokenize`` and prints its summary."""
    from fastdata.convert.tokenize import TokenizeOptions, convert_tokens, format_token_report

    image_only = [flag for flag, value in (("--max-side", args.max_side), ("--quality", args.quality),
                  ("--raw", args.raw), ("--labels", args.labels), ("--int-labels", args.int_labels)) if value]
    if image_only:
        print(f"fastdata convert: error: {', '.join(image_only)} applies to images, not to --tokenize", file=sys.stderr)
        return 1
    options = TokenizeOptions(tokenizer=args.tokenize, tokens_per_shard=args.tokens_per_shard, maxsize=args.maxsize,
                              dtype=args.dtype, text_column=args.text_column, label_column=args.label_column,
                              workers=args.workers, shuffle_seed=args.seed if args.shuffle else None,
                              drop_corrupt=args.drop_corrupt, dedupe=args.dedupe, engine=args.engine,
                              ray_address=args.ray_address, retries=args.retries)  # fmt: skip
    return _run_and_report(lambda: convert_tokens(args.src, args.pattern, options, progress=not args.no_progress),
                           format_token_report)


def _run_and_report(conversion: Callable[[], Report], summary: Callable[[Any], str]) -> int:
    """Runs ``conversion()`` and prints ``summary(report)``: exit status 0, 1 on an error
    (said in one line), 130 when interrupted."""
    try:
        report = conversion()
    except FastdataError as exc:
        print(f"fastdata convert: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # finished shards and their parts are kept (NOTE [ Resuming a conversion ])
        print("\nfastdata convert: interrupted; the shards written so far are kept, run the same "
              "command again to resume", file=sys.stderr)  # fmt: skip
        return 130
    print(summary(report))
    return 0


def format_report(report: ConvertReport) -> str:
    """The human-readable summary of a conversion."""
    rate = report.written / report.seconds if report.seconds > 0 else 0.0
    lines = [
        f"wrote {plural(report.written, 'sample')} in {plural(len(report.shards), 'shard')}, "
        f"{report.bytes / 1e6:.1f} MB, {report.seconds:.1f} s ({rate:.0f} samples/s)",
        f"index: {report.index_path}",
    ]
    if report.resumed_shards:
        lines.append(f"resumed an interrupted conversion: {plural(report.resumed_shards, 'shard')} already complete")
    if report.skipped:
        lines.append(f"skipped {plural(len(report.skipped), 'sample')}:")
        lines += [f"  {s['source']}: {s['reason']}" for s in report.skipped[:20]]
    if report.duplicates:
        lines.append(f"left out {plural(len(report.duplicates), 'duplicate')}:")
        lines += [_duplicate_line(d) for d in sorted(report.duplicates, key=lambda d: "label_conflict" not in d)[:20]]
    return "\n".join(lines)


def _flag_label_conflicts(duplicates: list[dict], source) -> None:
    """Marks duplicates whose label differs from the copy kept: the same content filed
    under two classes is a labelling error the user should see, not a silent drop."""
    labels = {item.key: item.label for item in source.items}
    for duplicate in duplicates:
        mine, kept = labels.get(duplicate["key"]), labels.get(duplicate["duplicate_of"])
        if mine != kept:
            duplicate["label_conflict"] = f"label {mine!r} here, {kept!r} kept"


def _duplicate_line(duplicate: dict) -> str:
    """A duplicate of the report; label conflicts (listed first) say which labels differ."""
    conflict = duplicate.get("label_conflict")
    line = f"  {duplicate['source']} = {duplicate['duplicate_of']}"
    return line + (f" (LABEL CONFLICT: {conflict})" if conflict else "")
