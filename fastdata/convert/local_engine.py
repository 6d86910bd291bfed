"""The local engine of ``fastdata convert``: shard tasks in order, samples on a process pool
(``LocalEngine``); or whole tasks on a process pool (``run_tasks``, for ``--tokenize``).

NOTE [ Which samples go to the workers ]
Storing a file as it is costs less than sending it through a pipe, so worker processes get
only the samples that are decoded: all of them with ``--drop-corrupt``, re-encoding or
``--raw``, else the evenly spread statistics sample. The main process prepares the others
itself and writes everything in order, one shard task after another (the pool is shared
by all tasks, so it stays busy across shard boundaries); a worker hands back a
stored-as-is file as None and the main process reads it (``PrepareOptions.ship_bytes``).
"""

from __future__ import annotations

import multiprocessing
import sys
from collections.abc import Callable, Iterator
from dataclasses import replace
from typing import Any

from fastdata.convert.plan import ShardTask
from fastdata.convert.prepare import (
    Prepared,
    PrepareOptions,
    digest_item,
    digest_task,
    init_worker,
    prepare_item,
    prepare_task,
)
from fastdata.convert.task import ShardBuilder, TaskSettings, whole_part


class LocalEngine:
    """Runs shard tasks in this process, with ``workers`` processes preparing samples.

    Args:
        source: the conversion's source.
        prepare: how samples are prepared.
        workers: worker processes (0: everything in this process).
    """

    def __init__(self, source, prepare: PrepareOptions, workers: int) -> None:
        self.source = source
        self.prepare = prepare
        self.workers = workers
        self._pool = None

    def __enter__(self) -> LocalEngine:
        if self.workers > 0:
            in_worker = replace(self.prepare, ship_bytes=False)
            self._pool = _context().Pool(self.workers, initializer=init_worker, initargs=(self.source, in_worker))
        return self

    def __exit__(self, *exc) -> None:
        if self._pool is not None:
            self._pool.terminate()
            self._pool.join()
            self._pool = None

    def digests(self, tasks: list[ShardTask]) -> list[str | None]:
        """The content digest of every item of ``tasks``, in order."""
        items = [item for task in tasks for item in task.items]
        if self._pool is None:
            return [digest_item(self.source, item) for item in items]
        return list(self._pool.imap(digest_task, items, chunksize=16))

    def run(self, tasks: list[ShardTask], settings: TaskSettings,
            on_done: Callable[[ShardTask, bool], None]) -> list[dict[str, Any]]:
        """Runs the tasks; returns their parts in task order.

        ``on_done(task, reused)`` is called per finished task; ``reused`` when an earlier
        run had finished it.
        """
        parts: dict[int, dict[str, Any]] = {}
        pending = []
        for task in tasks:
            part = whole_part(task, settings)
            if part is None:
                pending.append(task)
            else:
                parts[task.number] = part
                on_done(task, True)
        prepared = self._prepared(pending)
        for task in pending:
            builder = ShardBuilder(task, settings)
            try:
                for offset, item in enumerate(task.items):
                    done = None if offset in task.duplicates else next(prepared)
                    builder.add(offset, done, lambda item=item: self.source.read(item)[1])
                parts[task.number] = builder.finish()
            except BaseException:
                builder.abort()  # finished shards and their parts stay for a re-run
                raise
            on_done(task, False)
        return [parts[task.number] for task in tasks]

    def _prepared(self, tasks: list[ShardTask]) -> Iterator[Prepared]:
        """The prepared samples of ``tasks`` in order (duplicates left out); see
        NOTE [ Which samples go to the workers ]."""
        work = [(task.start + offset, item, task.stats[offset])
                for task in tasks for offset, item in enumerate(task.items)
                if offset not in task.duplicates]  # fmt: skip
        if self._pool is None:
            return (prepare_item(self.source, item, pos, self.prepare, stats) for pos, item, stats in work)
        heavy = self.prepare.decodes_all
        done = self._pool.imap(prepare_task, (w for w in work if heavy or w[2]), chunksize=4)
        return (next(done) if heavy or stats else prepare_item(self.source, item, pos, self.prepare, False)
                for pos, item, stats in work)  # fmt: skip


def _context():
    return multiprocessing.get_context("fork" if sys.platform == "linux" else "spawn")


def run_tasks(source, tasks: list, settings: TaskSettings, on_done: Callable[[Any, bool], None],
              task_fn: Callable[[Any, Any, TaskSettings], tuple[dict[str, Any], bool]], workers: int,
              worker_init: Callable[[], None] | None = None) -> list[dict[str, Any]]:
    """Runs whole tasks, ``task_fn(source, task, settings) -> (part, reused)`` each (the
    shape ``RayEngine.run`` takes): in this process when ``workers`` is 0 or there is one
    task, else on a pool of ``min(workers, len(tasks))`` processes that get
    ``source.for_tasks()`` once and call ``worker_init()`` first. Returns the parts in task
    order; ``on_done(task, reused)`` is called in task order.
    """
    parts: dict[int, dict[str, Any]] = {}
    if workers == 0 or len(tasks) == 1:
        for task in tasks:
            parts[task.number], reused = task_fn(source, task, settings)
            on_done(task, reused)
        return [parts[t.number] for t in tasks]
    pool = _context().Pool(min(workers, len(tasks)), initializer=_init_task_worker,
                           initargs=(source.for_tasks(), task_fn, worker_init))  # fmt: skip
    try:
        for task, (part, reused) in zip(tasks, pool.imap(_task_in_worker, [(t, settings) for t in tasks]), strict=True):
            parts[task.number] = part
            on_done(task, reused)
    finally:
        pool.terminate()
        pool.join()
    return [parts[t.number] for t in tasks]


_WORKER_SOURCE = _WORKER_FN = None


def _init_task_worker(source, task_fn: Callable, worker_init: Callable[[], None] | None) -> None:
    global _WORKER_SOURCE, _WORKER_FN
    _WORKER_SOURCE, _WORKER_FN = source, task_fn
    if worker_init is not None:
        worker_init()


def _task_in_worker(args: tuple[Any, TaskSettings]) -> tuple[dict[str, Any], bool]:
    return _WORKER_FN(_WORKER_SOURCE, *args)
