"""The Ray engine of ``fastdata convert --engine ray``: each shard task is a Ray task.

Ray is an optional extra (``pip install 'fastdata[ray]'``), imported only here and only
when this engine is asked for.

NOTE [ Ray tasks rather than Ray Data ]
The work is a list of independent shard tasks whose results are small dicts (the parts),
and each task reads its own files where it runs. Plain Ray tasks fit that one to one:
per-task retries (``max_retries``, ``retry_exceptions``), results in completion order
for the progress bar. Ray Data's ``map_batches`` over
the task list would add a streaming executor, block sizing and an actor pool for no gain
in this shape of work, so it is not used.

Retries: a task that raises is retried ``retries`` times (a read from an object store can
fail once and succeed the next time); a task whose worker or node dies is retried by Ray
up to the same count. A task that still fails stops the conversion with its error (the
file named); the tasks that had finished keep their shards and parts, so a re-run resumes.

NOTE [ No ray.cancel ]
When the driver stops early (a failed task, an interrupt), the tasks still running are
left to finish, not cancelled: cancelling a task that has retries while it completes can
abort the driver process inside Ray (``task_manager.cc``: "Check failed: Tried to complete
task that was not pending", seen in this project's test run with Ray 2.x), which is far
worse than finishing work whose shard and part a re-run then reuses.
The usage-stats report of a Ray instance that this engine starts is disabled
(``RAY_USAGE_STATS_ENABLED=0``), and no ``runtime_env`` is used: every node needs
fastdata installed.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable, Iterator
from typing import Any

from fastdata.convert.plan import ShardTask
from fastdata.convert.prepare import digest_item
from fastdata.convert.task import TaskSettings, run_shard_task
from fastdata.errors import FastdataError, SourceError

MISSING = ("the Ray engine needs Ray, which is not installed: pip install 'fastdata[ray]' "
           "(or pip install 'ray>=2.9'), or use --engine local")  # fmt: skip


def import_ray():
    """Imports Ray, or raises ``FastdataError`` saying how to install it."""
    try:
        import ray
    except ImportError as exc:
        raise FastdataError(MISSING) from exc
    return ray


@contextlib.contextmanager
def ray_session(address: str | None) -> Iterator[Any]:
    """Ray, connected: to ``address`` or ``RAY_ADDRESS`` if given, else to a local instance
    started here (and shut down at the end). An already connected driver is used as it is."""
    ray = import_ray()
    if ray.is_initialized():
        yield ray
        return
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    address = address or os.environ.get("RAY_ADDRESS")
    local = {} if address else {"include_dashboard": False}
    try:
        ray.init(address=address or "local", logging_level=logging.WARNING, **local)
    except ConnectionError as exc:
        raise FastdataError(f"cannot connect to the Ray cluster at {address!r}: {exc}; start one with "
                            "'ray start --head' or give its address with --ray-address") from exc
    try:
        yield ray
    finally:
        ray.shutdown()


def _task(source, task: ShardTask, settings: TaskSettings) -> tuple[dict[str, Any], bool]:
    return run_shard_task(source, task, settings)


def _digests(source, task: ShardTask) -> list[str | None]:
    return [digest_item(source, item) for item in task.items]


class RayEngine:
    """Runs shard tasks as Ray tasks.

    Args:
        source: the conversion's source (a light copy travels to the tasks, once).
        address: the cluster's address, or None for ``RAY_ADDRESS`` or a local instance.
        retries: how often a failed task is tried again.
    """

    def __init__(self, source, address: str | None = None, retries: int = 2) -> None:
        self.source = source
        self.address = address
        self.retries = retries
        self._stack = contextlib.ExitStack()
        self._ray = None
        self._source_ref = None

    def __enter__(self) -> RayEngine:
        self._ray = self._stack.enter_context(ray_session(self.address))
        self._source_ref = self._ray.put(self.source.for_tasks())
        return self

    def __exit__(self, *exc) -> None:
        self._source_ref = None
        self._stack.close()

    def digests(self, tasks: list[ShardTask]) -> list[str | None]:
        """The content digest of every item of ``tasks``, in order (one Ray task per shard)."""
        results: dict[int, list[str | None]] = {}
        self._map(_digests, tasks, results.__setitem__)
        return [d for task in tasks for d in results[task.number]]

    def run(self, tasks: list[ShardTask], settings: TaskSettings,
            on_done: Callable[[ShardTask, bool], None], task_fn: Callable = _task) -> list[dict[str, Any]]:
        """Runs the tasks; returns their parts in task order (see ``LocalEngine.run``).

        ``task_fn(source, task, settings)`` runs one task where Ray places it and returns
        ``(part, reused)``: shard tasks by default, token shard tasks for ``--tokenize``.
        """
        parts: dict[int, dict[str, Any]] = {}

        def done(number: int, result: tuple[dict[str, Any], bool]) -> None:
            parts[number] = result[0]
            on_done(by_number[number], result[1])

        by_number = {task.number: task for task in tasks}
        self._map(task_fn, tasks, done, settings)
        return [parts[task.number] for task in tasks]

    def _map(self, fn, tasks: list[ShardTask], on_result, *args) -> None:
        ray = self._ray
        remote = ray.remote(fn).options(num_cpus=1, max_retries=self.retries, retry_exceptions=True)
        pending = {remote.remote(self._source_ref, task, *args): task for task in tasks}
        while pending:  # stopping early leaves the rest running: NOTE [ No ray.cancel ]
            ready, _ = ray.wait(list(pending), num_returns=min(len(pending), 64), timeout=0.5)
            for ref in ready:
                task = pending.pop(ref)
                on_result(task.number, self._get(ray, ref, task))

    def _get(self, ray, ref, task: ShardTask) -> Any:
        try:
            return ray.get(ref)
        except ray.exceptions.RayTaskError as exc:
            cause = exc.cause
            tries = f"shard task {task.number} failed {self.retries + 1} times"
            if isinstance(cause, SourceError):
                raise SourceError(cause.path, f"{cause.message}; {tries}") from None
            raise FastdataError(f"{tries}: {type(cause).__name__}: {cause}") from exc
        except ray.exceptions.RayError as exc:
            raise FastdataError(f"shard task {task.number} was lost ({type(exc).__name__}: {exc}); "
                                "re-run the same command to resume") from exc
