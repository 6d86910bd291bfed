"""One epoch of a shard stream: slot readers, the shuffle buffer, batches and their states.

The stages are plain generators chained by calls:

1. ``SlotStream.read`` walks one slot's shards (``fastdata.loading.sampling.assign``) and yields
   ``((shard_pos, offset), sample)``;
2. ``SlotStream.shuffled`` passes them through the seeded shuffle buffer;
3. ``SlotStream.batches`` turns samples into prepared items and cuts them into batches,
   each with the slot's state *after* it (``SlotStream.snapshot``);
4. ``merge`` takes the slots' batches in turn (each slot in a reader thread, see
   ``Producer``), numbers the samples and yields ``SampleRef`` batches with the rank's state
   after each batch, which ``fastdata.loading.shard_dataset`` hands to the batch engine.

NOTE [ Exact resumption ]
A slot's state is its reading position (position in its shard list, samples read from that
shard, samples passed in the stride), the number of buffer draws made and the identity
``(shard_pos, offset)`` of each sample in the shuffle buffer, in buffer order. Restoring
re-reads only the shards that hold buffered samples and skips to the reading position;
every later pick uses draw numbers the uninterrupted run would have used
(``fastdata.loading.sampling.Draws``). A rank's state adds the batches and samples yielded so far
and whose turn it is. A sample's augmentation randomness is keyed by its position in the
rank's epoch stream, so restored batches get the same crops and flips. Batches run ahead
of the consumer (reader threads, the engine's ring), so the state of each batch travels
with it and becomes current only when the consumer receives that batch.

NOTE [ Bad shards keep the batch count ]
With ``on_error`` "skip"/"warn", a shard that cannot be opened or breaks off, or that holds
fewer samples than the index says, yields a failing placeholder for each missing sample;
the engine replaces those within their batch and counts them as skipped (NOTE [ Skipping
bad samples ] in ``fastdata.loading.engine``). So the number of batches still equals what
the index promised on every rank, and DDP does not hang on a bad shard. A batch in which every
sample failed cannot be filled and raises; without shuffling, a lost shard of at least a
batch of samples does that, so use ``shuffle=True`` (the buffer spreads the gap out).
Without an index the number of lost samples is unknown: the shard's error is counted as
one skip (``StreamSpec.on_shard_error``) and the shard ends there.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from fastdata.errors import ShardError
from fastdata.loading.engine import SampleRef
from fastdata.loading.sampling import Assignment, Draws
from fastdata.shards.tario import iter_samples

__all__ = ["Failed", "Producer", "SlotStream", "StreamSpec", "fresh_slot", "merge"]

_POLL_S = 1.0


class Failed:
    """Stands in for a sample (or field) that could not be read; carries the error."""

    __slots__ = ("error",)

    def __init__(self, error: Exception) -> None:
        self.error = error


@dataclass(frozen=True)
class StreamSpec:
    """What every slot of a dataset shares.

    Attributes:
        urls: the shard list.
        counts: samples per shard from the index, or None if unknown.
        read_fields: extensions to keep while reading (None: all).
        prepare: sample dict (or ``Failed``) -> ``(source, extra, url, key, field)``.
        on_error: ``"raise"``, ``"skip"`` or ``"warn"``.
        buffer_size: shuffle buffer size; 1 or less: no shuffling.
        on_shard_error: called with the error of a shard that broke off when its sample
            count is unknown (no placeholders can stand in for its lost samples), so that
            the skip is counted; see NOTE [ Bad shards keep the batch count ].
    """

    urls: Sequence[str]
    counts: Sequence[int] | None
    read_fields: set[str] | None
    prepare: Callable[[Any], tuple]
    on_error: str
    buffer_size: int
    on_shard_error: Callable[[Exception], None] | None = None


def fresh_slot() -> dict:
    """The state of a slot that has not read anything."""
    return {"shard": 0, "offset": 0, "seen": 0, "draws": 0, "buffer": [], "done": False}


class SlotStream:
    """One slot's epoch (stages 1-3 of the module docstring), resumable from a state."""

    def __init__(self, spec: StreamSpec, a: Assignment, draws: Draws, state: dict) -> None:
        self.spec, self.a, self.draws = spec, a, draws
        self.shard, self.offset = int(state["shard"]), int(state["offset"])
        self.seen, self.n_draws = int(state["seen"]), int(state["draws"])
        flat = state["buffer"]
        ids = [(int(flat[i]), int(flat[i + 1])) for i in range(0, len(flat), 2)]
        self.buffer: list[tuple[tuple[int, int], Any]] = self._fetch(ids)

    def snapshot(self) -> dict:
        """The state after the last sample yielded (NOTE [ Exact resumption ])."""
        return {
            "shard": self.shard, "offset": self.offset, "seen": self.seen, "draws": self.n_draws,
            "buffer": [v for ident, _ in self.buffer for v in ident], "done": False,
        }  # fmt: skip

    def _fetch(self, ids: list[tuple[int, int]]) -> list[tuple[tuple[int, int], Any]]:
        """Re-reads the buffered samples ``ids`` from their shards, in the given order."""
        found: dict[tuple[int, int], Any] = {}
        for pos in sorted({p for p, _ in ids}):
            wanted = {j for p, j in ids if p == pos}
            for j, sample in self._shard_samples(pos):
                if j in wanted:
                    found[(pos, j)] = sample
                    if len(found) == len(ids):
                        break
        return [(ident, found[ident]) for ident in ids]

    def _shard_samples(self, pos: int) -> Iterator[tuple[int, Any]]:
        """``(offset, sample)`` of the shard at ``pos``; see NOTE [ Bad shards keep the batch count ]."""
        index = self.a.shards[pos]
        url = self.spec.urls[index]
        expected = self.spec.counts[index] if self.spec.counts is not None else None
        j = 0
        try:
            for sample in iter_samples([url], fields=self.spec.read_fields):
                if expected is not None and j >= expected:
                    raise ShardError(url, f"holds more samples than the {expected} of its index")
                yield j, sample
                j += 1
            if expected is not None and j < expected:
                raise ShardError(url, f"holds {j} samples, its index says {expected}")
        except ShardError as exc:
            if self.spec.on_error == "raise":
                raise
            if expected is None and self.spec.on_shard_error is not None:
                self.spec.on_shard_error(exc)
            while expected is not None and j < expected:
                yield j, Failed(exc)
                j += 1

    def read(self) -> Iterator[tuple[tuple[int, int], Any]]:
        """Stage 1: the slot's samples from the reading position on."""
        a = self.a
        while self.shard < len(a.shards):
            for j, sample in self._shard_samples(self.shard):
                if j < self.offset:
                    continue
                self.offset, g = j + 1, self.seen
                self.seen += 1
                if g % a.stride == a.phase:
                    yield (self.shard, j), sample
            self.shard, self.offset = self.shard + 1, 0

    def shuffled(self) -> Iterator[Any]:
        """Stage 2: samples through the shuffle buffer (a pass-through without shuffling)."""
        size, buffer = self.spec.buffer_size, self.buffer
        for item in self.read():
            if size <= 1:
                yield item[1]
                continue
            buffer.append(item)
            if len(buffer) >= size:
                yield self._pick()
        while buffer:
            yield self._pick()

    def _pick(self) -> Any:
        buffer = self.buffer
        k = self.draws.pick(self.n_draws, len(buffer))
        self.n_draws += 1
        buffer[k], buffer[-1] = buffer[-1], buffer[k]
        return buffer.pop()[1]

    def batches(self, batch_size: int, drop_last: bool) -> Iterator[tuple[list, dict]]:
        """Stage 3: prepared items in batches, each with the slot state after it."""
        prepare, items = self.spec.prepare, []
        for sample in self.shuffled():
            items.append(prepare(sample))
            if len(items) == batch_size:
                yield items, self.snapshot()
                items = []
        if items and not drop_last:
            yield items, self.snapshot()


class Producer:
    """Runs one slot's batch generator, in a reader thread or inline in the consumer.

    Exceptions reach ``get`` as values with their traceback; ``get`` waits in polls with a
    liveness check and the optional timeout, so a dead reader never leaves it blocked.
    """

    def __init__(self, batches: Iterator, *, threaded: bool, prefetch: int, name: str) -> None:
        self.name = name
        self._batches = batches
        self._thread: threading.Thread | None = None
        if threaded:
            self._queue: queue.Queue = queue.Queue(maxsize=max(1, prefetch))
            self._stop = threading.Event()
            self._thread = threading.Thread(target=self._run, name=name, daemon=True)
            self._thread.start()

    def _run(self) -> None:
        try:
            for record in self._batches:
                if not self._put(("batch", record)):
                    return
            self._put(("end", None))
        except BaseException as exc:  # handed to the consumer, see the class docstring
            self._put(("error", exc))

    def _put(self, message: tuple) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(message, timeout=_POLL_S)
                return True
            except queue.Full:
                continue
        return False

    def get(self, timeout: float = 0) -> tuple[list, dict] | None:
        """The next ``(items, slot_state)``, or None at the end of the slot's epoch.

        Raises:
            RuntimeError: the reader died without a result, or ``timeout`` (> 0) expired.
        """
        if self._thread is None:
            return next(self._batches, None)
        start = time.perf_counter()
        while True:
            try:
                kind, value = self._queue.get(timeout=_POLL_S)
                break
            except queue.Empty:
                if not self._thread.is_alive() and self._queue.empty():
                    raise RuntimeError(f"shard reader {self.name} exited without a result") from None
                if timeout > 0 and time.perf_counter() - start > timeout:
                    raise RuntimeError(
                        f"DataLoader timed out after {timeout} seconds waiting for shard reader {self.name}"
                    ) from None
        if kind == "error":
            raise value
        return value if kind == "batch" else None

    def close(self) -> None:
        """Stops the reader thread (it exits at its next put)."""
        if self._thread is not None:
            self._stop.set()
            while not self._queue.empty():
                self._queue.get_nowait()
            self._thread.join(timeout=1)  # a reader blocked in I/O is a daemon: left behind


def merge(
    producers: Sequence[Producer], state: dict, *, limit: int | None, timeout: float,
    on_wait: Callable[[float], None],
) -> Iterator[tuple[list[SampleRef], dict]]:  # fmt: skip
    """Stage 4: the slots' batches in turn as ``SampleRef`` lists, with the rank state after each.

    Args:
        producers: one per worker slot of this rank.
        state: the rank's state to start from (see ``fastdata.loading.shard_dataset``).
        limit: stop after this many batches in the epoch (NOTE [ Equal batches per rank ]).
        timeout: seconds to wait for one slot's batch (0: no limit).
        on_wait: called with the seconds spent waiting for each batch.
    """
    slots = list(state["slots"])
    turn, batches, samples = state["turn"], state["batches"], state["samples"]
    while (limit is None or batches < limit) and not all(s["done"] for s in slots):
        w, turn = turn, (turn + 1) % len(slots)
        if slots[w]["done"]:
            continue
        t0 = time.perf_counter()
        record = producers[w].get(timeout)
        on_wait(time.perf_counter() - t0)
        if record is None:
            slots[w] = {**slots[w], "done": True}
            continue
        items, slots[w] = record
        refs = [
            SampleRef(src, samples + i, extra, url, key, field)
            for i, (src, extra, url, key, field) in enumerate(items)
        ]
        batches, samples = batches + 1, samples + len(items)
        yield refs, {**state, "turn": turn, "batches": batches, "samples": samples, "slots": list(slots)}
