"""The measurements of taskbench: each phase returns its raw numbers and checks what it did."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from dataclasses import dataclass

from django.db import connections, transaction

from django_tasks_q import queue
from django_tasks_q.bench import queries
from django_tasks_q.bench.options import BenchError, BenchOptions
from django_tasks_q.bench.tasks import joins, noop
from django_tasks_q.bench.workers import (
    WORKER_ID_PREFIX,
    WorkerProcess,
    check_alive,
    wait_for_workers,
    worker_logs,
)
from django_tasks_q.canvas import chord
from django_tasks_q.conf import settings as conf
from django_tasks_q.models import FINISHED_STATUSES, TaskStatus
from django_tasks_q.serialization import dumps
from django_tasks_q.tasks import BackgroundTask

BULK_CHUNK = 5000
# A drain that makes no progress for this long has a broken worker or database.
STALL_TIMEOUT = 60.0
# Idle workers wake on NOTIFY, or else at their poll interval; far more than either.
LATENCY_TIMEOUT = 30.0
# Rates come from the database's timestamps, so how soon the end is noticed does not change
# them; but each look counts the backlog, which on a large one takes CPU from the run measured.
DRAIN_POLL_INTERVAL = 0.5
LATENCY_POLL_INTERVAL = 0.002
# Before the first look at a latency sample's status: each look is a query, whose CPU (the
# benchmark's and the server's) the worker starting the task would have to share on a small
# machine, and which an application that enqueues and moves on does not make. The latency is
# read from the task's own clock, so when the end is noticed does not change it.
LATENCY_QUIET = 0.025


def enqueue_one_by_one(task: BackgroundTask, count: int) -> float:
    """Seconds to enqueue ``count`` tasks, one commit each, as many web requests would."""
    started = time.perf_counter()
    for n in range(count):
        task.enqueue(n)
    return time.perf_counter() - started


def enqueue_concurrently(task: BackgroundTask, numbers: range, threads: int) -> float:
    """Seconds to enqueue one task per number from ``threads`` threads, one commit each."""

    def enqueue_share(index: int) -> None:
        try:
            for n in numbers[index::threads]:
                task.enqueue(n)
        finally:
            connections.close_all()

    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=threads) as pool:
        list(pool.map(enqueue_share, range(threads)))
    return time.perf_counter() - started


def enqueue_in_bulk(
    task: BackgroundTask, arguments: Sequence[tuple], *, one_commit: bool = False
) -> float:
    """Seconds to enqueue one task per argument tuple with ``enqueue_many``: a commit per
    chunk, or with ``one_commit`` one for all, so that workers find them all at once."""
    started = time.perf_counter()
    with transaction.atomic(using=task.get_backend().database) if one_commit else nullcontext():
        for chunk in _chunks(arguments, BULK_CHUNK):
            task.enqueue_many(list(chunk))
    return time.perf_counter() - started


def run_chord(database: str, queue_name: str, workers: Sequence[WorkerProcess], size: int) -> float:
    """Seconds from the call enqueueing a chord of ``size`` no-op tasks to its body's end;
    checks the body got every result."""
    header = [noop.s(n).set(queue=queue_name) for n in range(size)]
    started = time.perf_counter()
    workflow = chord(header, joins.s().set(queue=queue_name)).apply_async()
    body = workflow.steps[-1]
    wait_for_workers(
        lambda: queries.status(database, int(body.id)) in FINISHED_STATUSES,
        workers,
        timeout=STALL_TIMEOUT,
        interval=LATENCY_POLL_INTERVAL,
        failure=lambda: (
            f"The chord's body is still {queries.status(database, int(body.id))} "
            f"after {STALL_TIMEOUT:.0f}s."
        ),
    )
    seconds = time.perf_counter() - started
    body.refresh()
    if body.result != size:
        raise BenchError(f"The chord's body got {body.result!r} results, expected {size}.")
    return seconds


def drain(
    database: str,
    queue_name: str,
    workers: Sequence[WorkerProcess],
    expected: int,
    name: str = queries.NOOP_NAME,
    after_id: int = 0,
) -> tuple[int, float]:
    """Wait until the workers ran every task, check each result of the ``expected`` tasks of
    ``name`` (those with ids above ``after_id``); returns (tasks, seconds from the first claim
    to the last finish)."""
    wait_until_drained(database, queue_name, workers)
    verified, seconds = queries.verify(database, queue_name, name, expected, after_id)
    queries.refuse_foreign_workers(database, queue_name, name)
    return verified, seconds


def wait_until_drained(database: str, queue_name: str, workers: Sequence[WorkerProcess]) -> None:
    """Return once no task of the queue is READY or RUNNING; fail if the workers stall."""
    remaining = queries.unfinished(database, queue_name)
    last_progress = time.monotonic()
    while remaining:
        check_alive(workers)
        if time.monotonic() - last_progress > STALL_TIMEOUT:
            raise BenchError(
                f"The workers made no progress for {STALL_TIMEOUT:.0f}s with {remaining} tasks "
                "left. They run `manage.py runtaskworker` with this process's environment: "
                "check that it reaches the same database (DATABASE_URL, settings module)."
                f"{worker_logs(workers)}"
            )
        time.sleep(DRAIN_POLL_INTERVAL)
        now_remaining = queries.unfinished(database, queue_name)
        if now_remaining < remaining:
            last_progress = time.monotonic()
        remaining = now_remaining


@dataclass(frozen=True)
class Latencies:
    """Milliseconds per sample, sorted: from just before the enqueuing call to the task
    function's first line (what a caller feels), and from the enqueueing commit to the
    claim (the database's timestamps: the queue's own part)."""

    start: list[float]
    claim: list[float]


def measure_latency(
    database: str, task: BackgroundTask, workers: Sequence[WorkerProcess], samples: int
) -> Latencies:
    """Latencies of ``samples`` tasks enqueued one at a time, so that every worker is idle.
    ``task`` returns the wall clock when it starts."""
    enqueued: dict[int, float] = {}
    for _ in range(samples):
        before = time.time()
        task_id = int(task.enqueue().id)
        enqueued[task_id] = before
        time.sleep(LATENCY_QUIET)
        # Waiting for the end, not just the start, keeps the next sample's workers truly idle.
        wait_for_workers(
            lambda task_id=task_id: (
                queries.status(database, task_id) not in (TaskStatus.READY, TaskStatus.RUNNING)
            ),
            workers,
            timeout=LATENCY_TIMEOUT,
            interval=LATENCY_POLL_INTERVAL,
            failure=lambda task_id=task_id: (
                f"Task #{task_id} did not finish within "
                f"{LATENCY_TIMEOUT:.0f}s of being enqueued to idle workers."
            ),
        )
    found = queries.started(database, list(enqueued))
    if len(found) != samples:
        raise BenchError(f"Only {len(found)} of the {samples} latency tasks succeeded.")
    start = [(started - enqueued[task_id]) * 1000 for task_id, (started, _) in found.items()]
    return Latencies(start=sorted(start), claim=sorted(claim for _, claim in found.values()))


def sql_ceiling(database: str, options: BenchOptions) -> tuple[int, float]:
    """Rows/s of the workers' own queue statements with no task execution around them.

    Its rows are in a queue of their own (:attr:`BenchOptions.ceiling_queue`), so it can run
    next to the drain it is compared with, on the same table, while the workers idle. Each
    connection makes the workers' round trip, finishing the previous batch and claiming
    the next in one transaction, as fast as it can. One connection per thread, as many as
    there were worker processes: the time goes to round trips, which release the GIL, so
    threads get as far as processes would.
    """
    _insert_ceiling_rows(database, options.ceiling_queue, options.tasks)
    stop = threading.Event()
    failures: list[BaseException] = []

    def claim_and_finish(index: int) -> None:
        connection = queue.QueueConnection(database)
        worker_id = f"{WORKER_ID_PREFIX}ceiling-{index}"
        outcomes: list[queue.Outcome] = []
        try:
            while not stop.is_set():
                _, claimed, *_ = connection.finish_and_claim(
                    worker_id=worker_id,
                    outcomes=outcomes,
                    queues=[options.ceiling_queue],
                    limit=options.batch_size,
                    lease_seconds=conf.LEASE_SECONDS,
                )
                if not claimed:
                    return  # and the last outcomes were recorded by this very call
                outcomes = [
                    queue.Outcome(
                        id=row.id,
                        attempt=row.attempt,
                        status=TaskStatus.SUCCESSFUL.value,
                        result_json=dumps(row.args[0]),
                        max_attempts=row.max_attempts,
                    )
                    for row in claimed
                ]
        except BaseException as exc:  # handed to the main thread, which raises it
            failures.append(exc)
        finally:
            connection.close()

    threads = [
        threading.Thread(target=claim_and_finish, args=(i,), name=f"taskbench-ceiling-{i}")
        for i in range(options.workers)
    ]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        # Reached early only on Ctrl-C: let the threads see it and close their connections.
        stop.set()
        for thread in threads:
            thread.join()
    if failures:
        raise BenchError(f"The SQL ceiling failed: {failures[0]!r}") from failures[0]
    return queries.verify(database, options.ceiling_queue, queries.CEILING_NAME, options.tasks)


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile by linear interpolation between closest ranks."""
    position = (len(sorted_values) - 1) * q / 100
    low = int(position)
    high = min(low + 1, len(sorted_values) - 1)
    return sorted_values[low] + (sorted_values[high] - sorted_values[low]) * (position - low)


def _insert_ceiling_rows(database: str, queue_name: str, count: int) -> None:
    for chunk in _chunks(range(count), BULK_CHUNK):
        queue.enqueue_many(
            using=database,
            name=queries.CEILING_NAME,
            queue=queue_name,
            priority=0,
            args_json=[dumps([n]) for n in chunk],
            kwargs_json=["{}"] * len(chunk),
            run_after=None,
            max_attempts=1,
            max_lost_attempts=1,
            timeout=None,
            notify=False,
        )


def _chunks[T: Sequence](items: T, size: int) -> Iterator[T]:
    for start in range(0, len(items), size):
        yield items[start : start + size]
