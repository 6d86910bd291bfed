"""The plan of a conversion: which source items go into which shard, fixed before any work.

NOTE [ Shard tasks ]
A conversion is a list of independent shard tasks. Task *i* holds the items at positions
``start .. start + len(items)`` of the sample order (the source's order, or its seeded
shuffle) and writes ``pattern % i`` plus a per-shard index part; a merge step then writes
the dataset index from the parts (``fastdata.convert.task``). Because the plan depends
only on the source and the options, every engine (the local process pool, Ray tasks on one
machine or many) writes the same bytes.

Shards are cut as ``ShardWriter`` cuts them: after ``--maxcount`` samples, or after the
sample that brings the shard to ``--maxsize`` bytes. The bytes are reckoned from what is
known before any file is read: the size of each file (or array) as stored, with its tar
headers. That is exact for files stored as they are; where a sample is transformed
(``--raw``, ``--max-side``, ``--quality``) the input size stands in for the stored size,
so such shards can be larger or smaller than ``--maxsize``: bound them with ``--maxcount``.
Remote manifests report no sizes and are cut by ``--maxcount`` alone. A sample that is
skipped (``--drop-corrupt``) or a duplicate (``--dedupe``) leaves a gap in its shard
instead of moving the later samples forward, so a shard may hold fewer samples than
planned; a shard whose samples are all left out is written empty (a valid tar with no
member, listed in the index with 0 samples), so the numbered series has no gap that a
brace pattern such as ``train-{000000..000009}.tar`` would trip over.

NOTE [ Exact de-duplication across shards ]
With ``--dedupe`` the first occurrence of a content (in the sample order) is stored and
the later ones are listed as its duplicates, whichever shard they fall in. Tasks cannot
decide that on their own, so a first pass hashes every item (as tasks too, one per shard
range), the driver marks each later occurrence of a digest as a duplicate of the first,
and the shard tasks leave the marked items out. The first pass reads every file once more;
its result is kept in the plan file, so a resumed conversion does not repeat it. A first
occurrence that turns out to be corrupt is resolved in the merge: its duplicates are then
listed as skipped for the same reason, as a sequential pass would list them.
"""

from __future__ import annotations

import bisect
import math
import random
from dataclasses import dataclass, field

from fastdata.convert.sources import Item
from fastdata.shards.writer import member_size


@dataclass(frozen=True)
class ShardTask:
    """One shard to write: its number, items and where they came from.

    Attributes:
        number: the shard's number in the output pattern.
        start: position in the sample order of the first item.
        items: the items, in order.
        origins: each item's origin (file, manifest line), for errors and reports.
        stats: whether each item is decoded for the dataset statistics.
        duplicates: offset in ``items`` → key of the earlier item with the same content.
    """

    number: int
    start: int
    items: tuple[Item, ...]
    origins: tuple[str, ...]
    stats: tuple[bool, ...]
    duplicates: dict[int, str] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.items)


def sample_order(count: int, seed: int | None) -> list[int]:
    """The order of the source's items: as listed, or a seeded shuffle."""
    order = list(range(count))
    if seed is not None:
        random.Random(seed).shuffle(order)
    return order


def cut_points(source, order: list[int], maxcount: int, maxsize: float, stored_ext: str | None) -> list[int]:
    """The positions in ``order`` where each shard starts (see NOTE [ Shard tasks ]).

    Args:
        stored_ext: the extension samples are stored under when transformed (``"npy"``,
            ``"jpg"``), or None when files are stored as they are.
    """
    starts, count, size = [0], 0, 0
    for pos, index in enumerate(order):
        item = source.items[index]
        ext = stored_ext or source.extension(item)
        size += member_size(f"{item.key}.{ext}", source.file_size(item))
        if item.label is not None:
            size += member_size(f"{item.key}.cls", len(str(item.label)))
        count += 1
        if (count >= maxcount or size >= maxsize) and pos + 1 < len(order):
            starts.append(pos + 1)
            count, size = 0, 0
    return starts


def make_tasks(source, order: list[int], starts: list[int], stats_samples: int,
               duplicates: dict[int, str]) -> list[ShardTask]:
    """The shard tasks for the cut points; ``duplicates`` maps a position to the key it repeats."""
    stride = max(1, math.ceil(len(order) / max(1, stats_samples)))
    ends = starts[1:] + [len(order)]
    by_task: list[dict[int, str]] = [{} for _ in starts]
    for pos, key in duplicates.items():
        number = bisect.bisect_right(starts, pos) - 1
        by_task[number][pos - starts[number]] = key
    tasks = []
    for number, (start, end) in enumerate(zip(starts, ends, strict=True)):
        items = tuple(source.items[order[pos]] for pos in range(start, end))
        tasks.append(ShardTask(
            number, start, items, tuple(source.origin(item) for item in items),
            tuple(stats_samples > 0 and pos % stride == 0 for pos in range(start, end)),
            by_task[number],
        ))  # fmt: skip
    return tasks


def find_duplicates(keys: list[str], digests: list[str | None]) -> dict[int, str]:
    """Position → key of the first earlier position with the same digest (None: unreadable)."""
    first: dict[str, str] = {}
    duplicates = {}
    for pos, (key, digest) in enumerate(zip(keys, digests, strict=True)):
        if digest is None:
            continue
        seen = first.setdefault(digest, key)
        if seen != key:
            duplicates[pos] = seen
    return duplicates
