"""Shard tasks: one task writes one shard and its index part; the merge writes the index.

A task's part (``<index>.parts/<number>.json``) is written after its shard has been
renamed into place, under a temporary name and a rename too, so a part that exists
describes a whole shard. A re-run keeps a task whose part exists, carries the same
fingerprint and matches its shard's size and SHA-256; it redoes any other. The merge
(``merge_parts``) sums the parts' counts and statistics in shard order and removes the
parts. See NOTE [ Shard tasks ] in ``fastdata.convert.plan``.

Also what image and token conversions (``fastdata.convert.command``,
``fastdata.convert.tokenize``) share around their tasks: the fingerprint, the plan file of
a resumable run (NOTE [ Resuming a conversion ] in ``fastdata.convert.command``), the
checks of the output pattern and folder, and the report's common fields (``Report``).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from fastdata.convert.plan import ShardTask
from fastdata.convert.prepare import Prepared, PrepareOptions, prepare_item
from fastdata.errors import FastdataError, SourceError
from fastdata.shards.files import create_new, replace_into
from fastdata.shards.index import StatsAccumulator, index_path_for_pattern
from fastdata.shards.writer import ShardWriter, check_pattern


@dataclass(frozen=True)
class TaskSettings:
    """What every shard task of one conversion shares.

    Attributes:
        pattern: the output pattern, e.g. ``out/train-%06d.tar``.
        fingerprint: the conversion's fingerprint (source, options); parts carry it.
        drop_corrupt: leave out samples that cannot be read (else a task raises).
        prepare: how samples are prepared.
    """

    pattern: str
    fingerprint: str
    drop_corrupt: bool
    prepare: PrepareOptions

    @property
    def index_path(self) -> str:
        return index_path_for_pattern(self.pattern)

    @property
    def parts_dir(self) -> str:
        return self.index_path + ".parts"

    @property
    def plan_path(self) -> str:
        return os.path.join(self.parts_dir, "plan.json")

    def part_path(self, number: int) -> str:
        return os.path.join(self.parts_dir, f"{number:08d}.json")

    def shard_path(self, number: int) -> str:
        return self.pattern % number


@dataclass(kw_only=True)
class Report:
    """What a conversion did, images or tokens (``ConvertReport``, ``TokenReport``); also
    stored in the index. Keyword construction only."""

    index_path: str
    shards: list[dict[str, Any]]
    skipped: list[dict[str, str]]
    duplicates: list[dict[str, str]]
    seconds: float
    resumed_shards: int = 0

    @property
    def bytes(self) -> int:
        return sum(s["bytes"] for s in self.shards)


def check_pattern_arg(pattern: str) -> None:
    """Checks that ``pattern`` has exactly one number field.

    Raises:
        FastdataError: it has not.
    """
    try:
        check_pattern(pattern)
    except ValueError as exc:
        raise FastdataError(f"convert: {exc}") from exc


def check_output_folder(pattern: str) -> None:
    """Creates the folder of ``pattern`` if needed and checks that it can be written.

    Raises:
        FastdataError: it cannot be created or written.
    """
    folder = os.path.dirname(pattern) or "."
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as exc:
        raise FastdataError(f"convert: cannot create the output folder {folder!r}: {exc.strerror or exc}") from exc
    if not os.access(folder, os.W_OK | os.X_OK):
        raise FastdataError(f"convert: cannot write into the output folder {folder!r}; "
                            "choose another OUT_PATTERN or fix its permissions")  # fmt: skip


# How a conversion is run, not what it writes: left out of the fingerprint and the index.
RUN_SETTINGS = ("workers", "engine", "ray_address", "retries")


def what_it_writes(options, **extra: Any) -> dict[str, Any]:
    """The options (a dataclass) that decide the output, without ``RUN_SETTINGS``, then
    ``extra``: what the fingerprint covers and the index records."""
    return {**{k: v for k, v in asdict(options).items() if k not in RUN_SETTINGS}, **extra}


def fingerprint(source, pattern: str, written: dict[str, Any], **extra: Any) -> str:
    """A conversion's fingerprint: its source, output name and ``written`` options
    (``what_it_writes``), plus ``extra`` fields of the body hashed."""
    body = {"source": source.describe(), "count": len(source.items), "pattern": os.path.basename(pattern),
            "options": written, **extra}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def read_plan(settings: TaskSettings) -> dict | None:
    """The plan an interrupted run of this conversion left (None: none); see NOTE [ Resuming
    a conversion ] in ``fastdata.convert.command``.

    Raises:
        FastdataError: the plan there is another conversion's (another fingerprint).
    """
    if not os.path.exists(settings.plan_path):
        return None
    with open(settings.plan_path, encoding="utf-8") as f:
        saved = json.load(f)
    if saved.get("fingerprint") != settings.fingerprint:
        raise FastdataError(
            f"{settings.parts_dir}: an interrupted conversion with another source or other options is "
            "in this folder; re-run it with the same arguments, or delete that folder to start over"
        )
    return saved


def write_plan(settings: TaskSettings, duplicates: dict[int, str], **extra: Any) -> None:
    """Writes the plan file: the fingerprint, the duplicates and ``extra`` (what a re-run
    must plan the same way, e.g. the measured bytes per token)."""
    os.makedirs(settings.parts_dir, exist_ok=True)
    with replace_into(settings.plan_path) as f:  # NOTE [ Temporary files ]
        json.dump({"fingerprint": settings.fingerprint, "duplicates": duplicates, **extra}, f)


class ShardBuilder:
    """Writes one task's samples, in order, and then its part.

    Args:
        task: the shard task.
        settings: the conversion's shared settings.
    """

    def __init__(self, task: ShardTask, settings: TaskSettings) -> None:
        self.task = task
        self.settings = settings
        # Each attempt writes its own temporary file: a retried task may race a lost first attempt.
        self.writer = ShardWriter(settings.pattern, maxcount=max(1, len(task)), maxsize=math.inf,
                                  start_shard=task.number, tmp_suffix=f".tmp-{uuid.uuid4().hex[:12]}",
                                  index=False)  # the merge writes the conversion's index
        self.stats = StatsAccumulator()
        self.skipped: list[dict[str, Any]] = []
        self.duplicates: list[dict[str, Any]] = []
        self.fields: set[str] = set()

    def add(self, offset: int, prepared: Prepared | None, read: Callable[[], bytes]) -> None:
        """Adds the item at ``offset``: ``prepared`` is None for a marked duplicate, and
        ``read`` gives the file's bytes for a field the worker left as None.

        Raises:
            SourceError: the item cannot be read or decoded and ``drop_corrupt`` is off.
        """
        item, origin, pos = self.task.items[offset], self.task.origins[offset], self.task.start + offset
        if prepared is None:
            self.duplicates.append({"pos": pos, "key": item.key, "source": origin,
                                    "duplicate_of": self.task.duplicates[offset]})
        elif prepared.error is not None:
            if not self.settings.drop_corrupt:
                raise SourceError(origin, f"{prepared.error} (use --drop-corrupt to skip such samples)")
            self.skipped.append({"pos": pos, "key": item.key, "source": origin, "reason": prepared.error})
        else:
            fields = {ext: read() if data is None else data for ext, data in prepared.fields.items()}
            self.writer.write({"__key__": item.key, **fields})
            self.fields.update(prepared.fields)
            self.stats.add_size(*prepared.size)
            self.stats.add_label(item.label)
            if prepared.pixel_sums is not None:
                self.stats.add_pixels(*prepared.pixel_sums)

    def finish(self) -> dict[str, Any]:
        """Completes the shard (empty when every sample was left out: NOTE [ Shard tasks ])
        and writes the part; returns the part."""
        shards = self.writer.close(empty_shard=True)
        part = {
            "fingerprint": self.settings.fingerprint, "number": self.task.number, "start": self.task.start,
            "planned": len(self.task), "shard": shards[0].to_dict() if shards else None,
            "skipped": self.skipped, "duplicates": self.duplicates, "stats": self.stats.state(),
            "fields": sorted(self.fields),
        }  # fmt: skip
        write_part(self.settings, part)
        return part

    def abort(self) -> None:
        """Deletes the shard being written."""
        self.writer.abort()


def write_part(settings: TaskSettings, part: dict[str, Any]) -> None:
    """Writes a task's part under a temporary name of its own and renames it into place."""
    path = settings.part_path(part["number"])
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}.tmp-{uuid.uuid4().hex[:12]}"
    with create_new(tmp, "w") as f:  # NOTE [ Temporary files ] in fastdata.shards.files
        json.dump(part, f)
    os.replace(tmp, path)


def run_shard_task(source, task: ShardTask, settings: TaskSettings) -> tuple[dict[str, Any], bool]:
    """Runs one task in this process: returns its part, and whether it is a whole one that
    an earlier run left (and so was reused).

    Raises:
        SourceError: an item cannot be read or decoded and ``drop_corrupt`` is off.
    """
    part = whole_part(task, settings)
    if part is not None:
        return part, True
    builder = ShardBuilder(task, settings)
    try:
        for offset, item in enumerate(task.items):
            if offset in task.duplicates:
                builder.add(offset, None, _no_read)
                continue
            prepared = prepare_item(source, item, task.start + offset, settings.prepare, task.stats[offset])
            builder.add(offset, prepared, lambda item=item: source.read(item)[1])
        return builder.finish(), False
    except BaseException:
        builder.abort()
        raise


def _no_read() -> bytes:
    raise AssertionError("a duplicate is never read")


def whole_part(task: ShardTask, settings: TaskSettings) -> dict[str, Any] | None:
    """The part an earlier run wrote for ``task``, if it and its shard are whole; else None."""
    try:
        with open(settings.part_path(task.number), encoding="utf-8") as f:
            part = json.load(f)
    except (OSError, ValueError):
        return None
    if part.get("fingerprint") != settings.fingerprint or part.get("number") != task.number:
        return None
    shard = part["shard"]
    if shard is not None and not _shard_matches(os.path.join(os.path.dirname(settings.pattern), shard["name"]), shard):
        return None
    return part


def _shard_matches(path: str, expected: dict[str, Any]) -> bool:
    if not os.path.exists(path) or os.path.getsize(path) != expected["bytes"]:
        return False
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest() == expected["sha256"]


@dataclass
class Merged:
    """The dataset-level result of all parts."""

    shards: list[dict[str, Any]]
    skipped: list[dict[str, str]]
    duplicates: list[dict[str, str]]
    stats: StatsAccumulator
    fields: list[str]


def merge_parts(parts: list[dict[str, Any]]) -> Merged:
    """Merges the parts (in shard order): O(shards), counts and sums added exactly.

    A duplicate of a sample that was skipped as unreadable is itself listed as skipped,
    for the same reason (NOTE [ Exact de-duplication across shards ] in ``plan``).
    """
    stats = StatsAccumulator()
    skipped, duplicates, fields = [], [], set()
    for part in parts:
        stats.merge(StatsAccumulator.from_state(part["stats"]))
        skipped += part["skipped"]
        duplicates += part["duplicates"]
        fields.update(part["fields"])
    reasons = {s["key"]: s["reason"] for s in skipped}
    for dup in duplicates:
        if dup["duplicate_of"] in reasons:
            skipped.append({"pos": dup["pos"], "key": dup["key"], "source": dup["source"],
                            "reason": reasons[dup["duplicate_of"]]})
    duplicates = [d for d in duplicates if d["duplicate_of"] not in reasons]
    skipped.sort(key=lambda s: s["pos"])
    return Merged(
        shards=[p["shard"] for p in parts if p["shard"] is not None],
        skipped=[{k: v for k, v in s.items() if k != "pos"} for s in skipped],
        duplicates=[{k: v for k, v in d.items() if k != "pos"} for d in duplicates],
        stats=stats, fields=sorted(fields),
    )  # fmt: skip


def clean_up(settings: TaskSettings, count: int) -> None:
    """Removes the parts and any temporary shard left by a killed attempt."""
    shutil.rmtree(settings.parts_dir, ignore_errors=True)
    folder = os.path.dirname(settings.pattern) or "."
    names = {os.path.basename(settings.shard_path(n)) for n in range(count)}
    for entry in os.listdir(folder):
        base, sep, _ = entry.rpartition(".tmp")
        if sep and base in names:
            os.remove(os.path.join(folder, entry))
