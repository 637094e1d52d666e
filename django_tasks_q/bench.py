"""``manage.py taskbench``: how fast this deployment enqueues, runs and starts tasks.

Everything happens on a queue of its own ("taskbench" unless ``--queue`` says otherwise) that
the benchmark's own worker processes serve; rows of other queues are never read or written.
Rates and latencies come from the database's timestamps, so they measure the queue, not the
Python start-up of the processes around it.

Imported by ``AppConfig.ready()`` so that every worker process knows :func:`noop` by name.
"""

from __future__ import annotations

import importlib.util
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, suppress
from dataclasses import asdict, dataclass, replace
from importlib import metadata
from pathlib import Path
from typing import IO, Any

from django.conf import settings
from django.db import connections

from django_tasks_q import queue
from django_tasks_q.compat import InvalidTask
from django_tasks_q.conf import settings as conf
from django_tasks_q.models import TaskStatus
from django_tasks_q.serialization import dumps
from django_tasks_q.tasks import BackgroundTask, background_task

NOOP_NAME = "django_tasks_q.bench.noop"
# Rows for the SQL ceiling are never run by a worker, so their name needs no registered task.
CEILING_NAME = "django_tasks_q.bench.ceiling"
BENCH_NAMES = (NOOP_NAME, CEILING_NAME)

BULK_CHUNK = 5000
MIN_SINGLE_ENQUEUES = 1000
# A drain that makes no progress for this long has a broken worker or database.
STALL_TIMEOUT = 60.0
# Idle workers wake on NOTIFY, or else at their poll interval; far more than either.
LATENCY_TIMEOUT = 30.0
WORKER_STOP_TIMEOUT = 30.0
DRAIN_POLL_INTERVAL = 0.1
LATENCY_POLL_INTERVAL = 0.002
# With this many dead rows a claim was seen to take up to 2.5 times as long as after a VACUUM.
DEAD_ROWS_WARNING = 1_000_000
# Every worker id of one run starts with this, to tell its workers from any others.
WORKER_ID_PREFIX = f"taskbench-{uuid.uuid4().hex[:8]}-"

LABEL_WIDTH = 36

Report = Callable[[str], None]


@background_task(name=NOOP_NAME)
def noop(n: int) -> int:
    return n


class BenchError(Exception):
    """The benchmark cannot run or its results cannot be trusted."""


@dataclass(frozen=True, slots=True)
class BenchOptions:
    tasks: int = 20_000
    workers: int | None = None  # None: os.cpu_count()
    concurrency: int | None = None  # None: TASKS_Q["CONCURRENCY"]
    batch_size: int | None = None  # None: TASKS_Q["BATCH_SIZE"]
    queue: str = "taskbench"
    latency_samples: int = 200
    enqueue_threads: int = 8
    pool: str = "processes"
    skip_ceiling: bool = False
    keep: bool = False

    def resolved(self) -> BenchOptions:
        """These options with every default filled in, validated."""
        resolved = replace(
            self,
            workers=self.workers or os.cpu_count() or 1,
            concurrency=self.concurrency or conf.CONCURRENCY,
            batch_size=self.batch_size or conf.BATCH_SIZE,
        )
        for name in ("tasks", "workers", "concurrency", "batch_size", "enqueue_threads"):
            if getattr(resolved, name) < 1:
                raise BenchError(f"--{name.replace('_', '-')} must be at least 1.")
        if resolved.latency_samples < 0:
            raise BenchError("--latency-samples must be 0 or more.")
        # runtaskworker takes a comma-separated list: a comma would name two queues.
        if resolved.pool not in ("threads", "processes"):
            raise BenchError("--pool must be 'threads' or 'processes'.")
        if not resolved.queue or "," in resolved.queue or len(resolved.queue) > 100:
            raise BenchError("--queue must be one queue name of at most 100 characters, no commas.")
        return resolved

    def worker_arguments(self) -> list[str]:
        """runtaskworker options for the benchmark's workers; a new worker option is one line."""
        return [
            "--queues", self.queue,
            "--concurrency", str(self.concurrency),
            "--batch-size", str(self.batch_size),
            "--loglevel", "warning",
            "--pool", self.pool,
        ]  # fmt: skip


@dataclass(slots=True)
class Results:
    version: str
    postgres: str
    cpus: int
    tasks: int
    workers: int
    concurrency: int
    pool: str
    batch_size: int
    listen_notify: bool
    queue: str
    autovacuum: bool
    table_live_rows: int
    table_dead_rows: int
    enqueue_single_tasks: int = 0  # enqueued one by one, from one thread and from several
    enqueue_single_per_s: float = 0.0
    enqueue_threads: int = 0
    enqueue_concurrent_per_s: float = 0.0
    enqueue_bulk_per_s: float = 0.0
    drain_tasks: int = 0
    drain_seconds: float = 0.0
    drain_per_s: float = 0.0
    latency_samples: int = 0
    latency_p50_ms: float | None = None
    latency_p95_ms: float | None = None
    latency_p99_ms: float | None = None
    worker_peak_mb: float | None = None
    ceiling_per_s: float | None = None
    drain_vs_ceiling_pct: float | None = None

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


# -- entry point ------------------------------------------------------------------------------


def run(options: BenchOptions, report: Report) -> Results:
    """Run every phase in order, reporting one line per phase. Raises :class:`BenchError`."""
    options = options.resolved()
    database = _database()
    live_rows, dead_rows = _table_rows(database)
    results = Results(
        version=_package_version(),
        postgres=_server_setting(database, "server_version"),
        cpus=os.cpu_count() or 1,
        tasks=options.tasks,
        workers=options.workers,
        concurrency=options.concurrency,
        pool=options.pool,
        batch_size=options.batch_size,
        listen_notify=conf.LISTEN_NOTIFY,
        queue=options.queue,
        autovacuum=_server_setting(database, "autovacuum") == "on",
        table_live_rows=live_rows,
        table_dead_rows=dead_rows,
    )
    report(header(results))
    _refuse_foreign_rows(database, options.queue)
    task = noop.using(queue_name=options.queue)
    with _signals_interrupt():
        _delete_bench_rows(database, options.queue)
        try:
            _run_phases(options, database, task, results, report)
        finally:
            if not options.keep:
                _delete_bench_rows(database, options.queue, report=report)
    return results


def _run_phases(
    options: BenchOptions, database: str, task: BackgroundTask, results: Results, report: Report
) -> None:
    _enqueue_phases(options, task, results, report)
    _worker_phases(options, database, task, results, report)
    if options.skip_ceiling:
        report(f"{'6. SQL ceiling':<{LABEL_WIDTH}}skipped (--skip-ceiling)")
        return
    rows, seconds = sql_ceiling(database, options)
    results.ceiling_per_s = rows / seconds
    results.drain_vs_ceiling_pct = 100 * results.drain_per_s / results.ceiling_per_s
    report(_phase(f"6. SQL ceiling, {options.workers} connections", rows, seconds, "rows"))
    report(f"{'   drain / ceiling':<{LABEL_WIDTH}}{results.drain_vs_ceiling_pct:>8.0f}%")


def _enqueue_phases(
    options: BenchOptions, task: BackgroundTask, results: Results, report: Report
) -> None:
    singles = max(options.tasks // 10, min(MIN_SINGLE_ENQUEUES, options.tasks))
    elapsed = enqueue_one_by_one(task, singles)
    results.enqueue_single_tasks = singles
    results.enqueue_single_per_s = singles / elapsed
    report(_phase("1. enqueue, one commit each", singles, elapsed, "tasks"))

    # Commits from many web processes at once share WAL flushes (group commit): the rate a
    # site sees under load, beyond one connection's commit latency.
    threads = options.enqueue_threads
    elapsed = enqueue_concurrently(task, range(singles, 2 * singles), threads)
    results.enqueue_threads = threads
    results.enqueue_concurrent_per_s = singles / elapsed
    report(_phase(f"   the same from {threads} threads", singles, elapsed, "tasks"))
    results.enqueue_single_tasks = 2 * singles

    elapsed = enqueue_in_bulk(task, range(2 * singles, 2 * singles + options.tasks))
    results.enqueue_bulk_per_s = options.tasks / elapsed
    report(_phase(f"2. enqueue_many, {BULK_CHUNK} a call", options.tasks, elapsed, "tasks"))


def _worker_phases(
    options: BenchOptions, database: str, task: BackgroundTask, results: Results, report: Report
) -> None:
    # No other worker may have touched the backlog. Ours start only now, so that they face
    # all of it from their first claim.
    _refuse_foreign_workers(database, options.queue)
    with running_workers(options) as workers:
        expected = results.enqueue_single_tasks + options.tasks
        drained, seconds = drain(database, options.queue, workers, expected)
        results.drain_tasks, results.drain_seconds = drained, seconds
        results.drain_per_s = drained / seconds
        slots = "threads" if options.pool == "threads" else "processes"
        label = f"3. drain, {options.workers} workers x {options.concurrency} {slots}"
        report(_phase(label, drained, seconds, "tasks") + "  (results verified)")

        if options.latency_samples:
            latencies = measure_latency(database, task, workers, options.latency_samples)
            p50, p95, p99 = (percentile(latencies, q) for q in (50, 95, 99))
            results.latency_samples = len(latencies)
            results.latency_p50_ms, results.latency_p95_ms, results.latency_p99_ms = p50, p95, p99
            report(
                f"{'4. latency, idle workers':<{LABEL_WIDTH}}{len(latencies):>8,} tasks   "
                f"p50 {p50:.1f} ms  p95 {p95:.1f} ms  p99 {p99:.1f} ms"
            )
        else:
            report(f"{'4. latency, idle workers':<{LABEL_WIDTH}}skipped (--latency-samples 0)")

        # Read before stopping: the peak is gone with the process.
        results.worker_peak_mb = peak_memory_mb(workers)
        stop_workers(workers)
        report(
            f"{'5. peak worker memory':<{LABEL_WIDTH}}{_megabytes(results.worker_peak_mb)} "
            f"(largest VmHWM of {len(workers)} workers, children included); all exited cleanly"
        )


# -- phases -----------------------------------------------------------------------------------


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


def enqueue_in_bulk(task: BackgroundTask, numbers: range) -> float:
    """Seconds to enqueue one task per number with ``enqueue_many``, a commit per chunk."""
    started = time.perf_counter()
    for chunk in _chunks(numbers, BULK_CHUNK):
        task.enqueue_many([(n,) for n in chunk])
    return time.perf_counter() - started


def drain(
    database: str, queue_name: str, workers: Sequence[WorkerProcess], expected: int
) -> tuple[int, float]:
    """Wait until the workers ran every task, check each result; returns (tasks, seconds)."""
    remaining = _unfinished(database, queue_name)
    last_progress = time.monotonic()
    while remaining:
        _check_alive(workers)
        if time.monotonic() - last_progress > STALL_TIMEOUT:
            raise BenchError(
                f"The workers made no progress for {STALL_TIMEOUT:.0f}s with {remaining} tasks "
                "left. They run `manage.py runtaskworker` with this process's environment: "
                "check that it reaches the same database (DATABASE_URL, settings module)."
                f"{_logs(workers)}"
            )
        time.sleep(DRAIN_POLL_INTERVAL)
        now_remaining = _unfinished(database, queue_name)
        if now_remaining < remaining:
            last_progress = time.monotonic()
        remaining = now_remaining
    verified, seconds = _verify(database, queue_name, NOOP_NAME, expected)
    _refuse_foreign_workers(database, queue_name)
    return verified, seconds


def measure_latency(
    database: str, task: BackgroundTask, workers: Sequence[WorkerProcess], samples: int
) -> list[float]:
    """Enqueue-to-start latencies in ms, one task at a time so that every worker is idle."""
    ids: list[int] = []
    for n in range(samples):
        task_id = int(task.enqueue(n).id)
        ids.append(task_id)
        # Waiting for the end, not just the start, keeps the next sample's workers truly idle.
        deadline = time.monotonic() + LATENCY_TIMEOUT
        while _status(database, task_id) in (TaskStatus.READY, TaskStatus.RUNNING):
            _check_alive(workers)
            if time.monotonic() > deadline:
                raise BenchError(
                    f"Task #{task_id} did not finish within {LATENCY_TIMEOUT:.0f}s of being "
                    f"enqueued to idle workers.{_logs(workers)}"
                )
            time.sleep(LATENCY_POLL_INTERVAL)
    with connections[database].cursor() as cursor:
        cursor.execute(
            """
            SELECT extract(epoch FROM last_attempted_at - enqueued_at) * 1000
            FROM django_tasks_q_task
            WHERE id = ANY(%s) AND status = 'SUCCESSFUL' AND result = args->0
            """,
            [ids],
        )
        latencies = sorted(float(row[0]) for row in cursor.fetchall())
    if len(latencies) != samples:
        raise BenchError(
            f"Only {len(latencies)} of the {samples} latency tasks succeeded with the right result."
        )
    return latencies


def peak_memory_mb(workers: Sequence[WorkerProcess]) -> float | None:
    """The largest peak resident set size of a worker, its child processes included (summed);
    None where /proc is missing."""
    peaks = []
    for worker in workers:
        pids = [worker.process.pid, *_child_pids(worker.process.pid)]
        total = 0.0
        for pid in pids:
            try:
                status = Path(f"/proc/{pid}/status").read_text()
            except OSError:
                if pid == worker.process.pid:
                    return None
                continue  # a child that ended meanwhile
            for line in status.splitlines():
                if line.startswith("VmHWM:"):
                    total += int(line.split()[1]) / 1024  # reported in kB
        peaks.append(total)
    return max(peaks) if peaks else None


def _child_pids(pid: int) -> list[int]:
    # Each thread lists the children it started: the first children come from the main
    # thread, replacements from the pool's dispatcher thread.
    children = []
    for listing in Path(f"/proc/{pid}/task").glob("*/children"):
        try:
            children.extend(int(child) for child in listing.read_text().split())
        except OSError:
            continue
    return children


def sql_ceiling(database: str, options: BenchOptions) -> tuple[int, float]:
    """Rows/s of the workers' own queue statements with no task execution around them.

    Each connection makes the workers' round trip, finishing the previous batch and claiming
    the next in one transaction, as fast as it can. One connection per thread, as many as
    there were worker processes: the time goes to round trips, which release the GIL, so
    threads get as far as processes would.
    """
    _insert_ceiling_rows(database, options.queue, options.tasks)
    stop = threading.Event()
    failures: list[BaseException] = []

    def claim_and_finish(index: int) -> None:
        connection = queue.QueueConnection(database)
        worker_id = f"{WORKER_ID_PREFIX}ceiling-{index}"
        outcomes: list[queue.Outcome] = []
        try:
            while not stop.is_set():
                _, claimed, _ = connection.exchange(
                    worker_id=worker_id,
                    outcomes=outcomes,
                    queues=[options.queue],
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
    return _verify(database, options.queue, CEILING_NAME, options.tasks)


# -- worker processes -------------------------------------------------------------------------


@dataclass(slots=True)
class WorkerProcess:
    worker_id: str
    process: subprocess.Popen[bytes]
    log: IO[bytes]

    def log_tail(self, limit: int = 2000) -> str:
        self.log.flush()
        self.log.seek(0)
        return self.log.read().decode(errors="replace")[-limit:]


def worker_command(options: BenchOptions, worker_id: str) -> list[str]:
    return [
        sys.executable, "-m", "django", "runtaskworker",
        *options.worker_arguments(),
        "--worker-id", worker_id,
    ]  # fmt: skip


def worker_environment() -> dict[str, str]:
    """This process's environment plus what a fresh interpreter needs to load the same settings
    (they may come from --settings / --pythonpath rather than the environment)."""
    module = settings.SETTINGS_MODULE
    if not module:
        raise BenchError("taskbench needs settings from a module (DJANGO_SETTINGS_MODULE).")
    env = dict(os.environ, DJANGO_SETTINGS_MODULE=module)
    env["PYTHONPATH"] = os.pathsep.join(
        path for path in (_import_root(module), os.environ.get("PYTHONPATH")) if path
    )
    return env


@contextmanager
def running_workers(options: BenchOptions) -> Iterator[list[WorkerProcess]]:
    """Start the worker processes; whatever happens inside, none outlives the block."""
    env = worker_environment()
    workers: list[WorkerProcess] = []
    try:
        for index in range(options.workers):
            worker_id = f"{WORKER_ID_PREFIX}{index}"
            log = tempfile.TemporaryFile(prefix="taskbench-worker-")  # noqa: SIM115 - closed below
            process = subprocess.Popen(
                worker_command(options, worker_id),
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                # A session of their own: a Ctrl-C in the terminal reaches only this process,
                # which then stops the workers with one SIGTERM each.
                start_new_session=True,
            )
            workers.append(WorkerProcess(worker_id, process, log))
        yield workers
    finally:
        with suppress(BenchError):
            stop_workers(workers)
        for worker in workers:
            worker.log.close()


def stop_workers(workers: Sequence[WorkerProcess]) -> None:
    """SIGTERM every worker, wait, kill the ones still there. Raises if one exited non-zero."""
    for worker in workers:
        if worker.process.poll() is None:
            worker.process.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + WORKER_STOP_TIMEOUT
    killed = []
    for worker in workers:
        try:
            worker.process.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            worker.process.kill()
            worker.process.wait()
            killed.append(worker)
    if killed:
        raise BenchError(
            f"{len(killed)} worker(s) did not stop within {WORKER_STOP_TIMEOUT:.0f}s of SIGTERM "
            f"and were killed.{_logs(killed)}"
        )
    failed = [worker for worker in workers if worker.process.returncode != 0]
    if failed:
        codes = ", ".join(str(worker.process.returncode) for worker in failed)
        raise BenchError(f"Worker(s) exited with status {codes} instead of 0.{_logs(failed)}")


def _check_alive(workers: Sequence[WorkerProcess]) -> None:
    dead = [worker for worker in workers if worker.process.poll() is not None]
    if dead:
        raise BenchError(
            f"{len(dead)} worker(s) exited during the benchmark "
            f"(status {', '.join(str(w.process.returncode) for w in dead)}).{_logs(dead)}"
        )


def _logs(workers: Sequence[WorkerProcess]) -> str:
    parts = [
        f"\n--- output of worker {worker.worker_id} (pid {worker.process.pid}) ---\n{tail}"
        for worker in workers
        if (tail := worker.log_tail().strip())
    ]
    return "".join(parts)


@contextmanager
def _signals_interrupt() -> Iterator[None]:
    """Make SIGTERM and SIGHUP unwind like Ctrl-C, so that the ``finally`` blocks stop the
    workers: they run in a session of their own and would otherwise outlive this process."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt(signal.Signals(signum).name)

    names = ("SIGTERM", "SIGHUP")
    signums = [getattr(signal, name) for name in names if hasattr(signal, name)]
    previous = {signum: signal.signal(signum, interrupt) for signum in signums}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            # None: the previous handler was not set from Python and cannot be put back.
            signal.signal(signum, signal.SIG_DFL if handler is None else handler)


# -- database ---------------------------------------------------------------------------------


def _database() -> str:
    from django_tasks_q.backend import get_backend

    try:
        return get_backend().database
    except InvalidTask as exc:
        raise BenchError(str(exc)) from None


def _refuse_foreign_rows(database: str, queue_name: str) -> None:
    """Stop before deleting anything if the queue holds tasks the benchmark did not make."""
    with connections[database].cursor() as cursor:
        cursor.execute(
            """
            SELECT count(*) FROM django_tasks_q_task
            WHERE queue = %s AND NOT (name = ANY(%s))
            """,
            [queue_name, list(BENCH_NAMES)],
        )
        (count,) = cursor.fetchone()
    if count:
        raise BenchError(
            f"Queue {queue_name!r} holds {count} task(s) that the benchmark did not create. "
            "The benchmark deletes its queue's rows, and its workers would run those tasks: "
            "pass --queue with a name no application uses."
        )


def _delete_bench_rows(database: str, queue_name: str, report: Report | None = None) -> None:
    try:
        with connections[database].cursor() as cursor:
            cursor.execute(
                "DELETE FROM django_tasks_q_task WHERE queue = %s AND name = ANY(%s)",
                [queue_name, list(BENCH_NAMES)],
            )
    except Exception as exc:
        if report is None:
            raise
        # Cleaning up after a failure must not hide the failure.
        report(f"Could not delete the benchmark's rows of queue {queue_name!r}: {exc}")


def _insert_ceiling_rows(database: str, queue_name: str, count: int) -> None:
    for chunk in _chunks(range(count), BULK_CHUNK):
        queue.enqueue_many(
            using=database,
            name=CEILING_NAME,
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


def _unfinished(database: str, queue_name: str) -> int:
    # Two counts rather than one IN, so each can use its partial index (READY, RUNNING).
    with connections[database].cursor() as cursor:
        cursor.execute(
            """
            SELECT (SELECT count(*) FROM django_tasks_q_task
                    WHERE status = 'READY' AND queue = %(queue)s)
                 + (SELECT count(*) FROM django_tasks_q_task
                    WHERE status = 'RUNNING' AND queue = %(queue)s)
            """,
            {"queue": queue_name},
        )
        return cursor.fetchone()[0]


def _status(database: str, task_id: int) -> str | None:
    with connections[database].cursor() as cursor:
        cursor.execute("SELECT status FROM django_tasks_q_task WHERE id = %s", [task_id])
        row = cursor.fetchone()
    return row[0] if row else None


def _verify(database: str, queue_name: str, name: str, expected: int) -> tuple[int, float]:
    """Check that every row of ``name`` succeeded with its argument as result (what both the
    no-op and the ceiling return); returns (rows, seconds from first claim to last finish)."""
    with connections[database].cursor() as cursor:
        cursor.execute(
            """
            SELECT count(*) FILTER (WHERE status = 'SUCCESSFUL' AND result = args->0),
                   extract(epoch FROM max(finished_at) - min(last_attempted_at))
            FROM django_tasks_q_task
            WHERE queue = %s AND name = %s
            """,
            [queue_name, name],
        )
        verified, seconds = cursor.fetchone()
        if verified == expected and seconds:
            return verified, float(seconds)
        cursor.execute(
            """
            SELECT status, count(*) FROM django_tasks_q_task
            WHERE queue = %s AND name = %s GROUP BY status ORDER BY status
            """,
            [queue_name, name],
        )
        statuses = ", ".join(f"{status} {count}" for status, count in cursor.fetchall())
    raise BenchError(
        f"Only {verified} of {expected} {name} tasks succeeded with the right result "
        f"(by status: {statuses or 'none'}). No rate is reported."
    )


def _refuse_foreign_workers(database: str, queue_name: str) -> None:
    """A worker serving every queue would have run some of the tasks and skewed the rate."""
    with connections[database].cursor() as cursor:
        cursor.execute(
            """
            SELECT count(*), min(worker_id) FROM django_tasks_q_task
            WHERE queue = %s AND name = %s
              AND worker_id <> '' AND NOT starts_with(worker_id, %s)
            """,
            [queue_name, NOOP_NAME, WORKER_ID_PREFIX],
        )
        count, example = cursor.fetchone()
    if count:
        raise BenchError(
            f"{count} benchmark task(s) were run by a worker the benchmark did not start "
            f"({example}): one serving this queue, or every queue (no --queues). Stop it while "
            "benchmarking, or the rates measure it too."
        )


def _server_setting(database: str, name: str) -> str:
    with connections[database].cursor() as cursor:
        cursor.execute("SELECT current_setting(%s)", [name])
        return cursor.fetchone()[0]


def _table_rows(database: str) -> tuple[int, int]:
    """The statistics' estimate of live and dead rows in the task table."""
    with connections[database].cursor() as cursor:
        cursor.execute(
            """
            SELECT n_live_tup, n_dead_tup FROM pg_stat_user_tables
            WHERE relid = 'django_tasks_q_task'::regclass
            """
        )
        row = cursor.fetchone()
    return (row[0], row[1]) if row else (0, 0)


def _import_root(module: str) -> str | None:
    """The sys.path entry from which ``module``'s top-level package was imported."""
    spec = importlib.util.find_spec(module.partition(".")[0])
    if spec is None:
        return None
    if spec.submodule_search_locations:
        return str(Path(next(iter(spec.submodule_search_locations))).parent)
    return str(Path(spec.origin).parent) if spec.origin else None


# -- numbers and text -------------------------------------------------------------------------


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile by linear interpolation between closest ranks."""
    position = (len(sorted_values) - 1) * q / 100
    low = int(position)
    high = min(low + 1, len(sorted_values) - 1)
    return sorted_values[low] + (sorted_values[high] - sorted_values[low]) * (position - low)


def _chunks(numbers: range, size: int) -> Iterator[range]:
    for start in range(0, len(numbers), size):
        yield numbers[start : start + size]


def _package_version() -> str:
    try:
        return metadata.version("django-tasks-q")
    except metadata.PackageNotFoundError:
        return "dev"


def _megabytes(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1f} MB"


def _phase(label: str, count: int, seconds: float, unit: str) -> str:
    rate = count / seconds
    return f"{label:<{LABEL_WIDTH}}{count:>8,} {unit:<5} {seconds:>7.2f} s {rate:>10,.0f} {unit}/s"


def header(results: Results) -> str:
    lines = [
        f"django_tasks_q {results.version}, PostgreSQL {results.postgres}, {results.cpus} CPUs",
        f"tasks={results.tasks} workers={results.workers} concurrency={results.concurrency} "
        f"batch_size={results.batch_size} listen_notify={_on_off(results.listen_notify)} "
        f"queue={results.queue}",
        f"task table: ~{results.table_live_rows:,} live rows, ~{results.table_dead_rows:,} dead; "
        f"autovacuum={_on_off(results.autovacuum)}",
    ]
    if results.table_dead_rows > max(DEAD_ROWS_WARNING, results.table_live_rows):
        # Claims walk the ready index past entries of dead rows until a vacuum removes them.
        lines.append(
            "warning: that many dead rows can slow claims down; after VACUUM ANALYZE "
            "django_tasks_q_task the numbers would reflect a vacuumed table."
        )
    return "\n".join(lines) + "\n"


def _on_off(value: bool) -> str:
    return "on" if value else "off"


def summary(results: Results) -> str:
    """The compact table printed at the end."""

    def rate(value: float | None, unit: str) -> str:
        return "skipped" if value is None else f"{value:,.0f} {unit}/s"

    if results.latency_p50_ms is None:
        latency = "skipped"
    else:
        latency = (
            f"{results.latency_p50_ms:.1f} / {results.latency_p95_ms:.1f} / "
            f"{results.latency_p99_ms:.1f} ms"
        )
    memory = _megabytes(results.worker_peak_mb)
    ratio = (
        "skipped"
        if results.drain_vs_ceiling_pct is None
        else f"{results.drain_vs_ceiling_pct:.0f}%"
    )
    rows = [
        ("enqueue, one commit each", rate(results.enqueue_single_per_s, "tasks")),
        (
            f"  the same, {results.enqueue_threads} threads",
            rate(results.enqueue_concurrent_per_s, "tasks"),
        ),
        ("enqueue_many", rate(results.enqueue_bulk_per_s, "tasks")),
        ("drain", rate(results.drain_per_s, "tasks")),
        ("latency p50 / p95 / p99", latency),
        ("peak worker memory", memory),
        ("SQL ceiling", rate(results.ceiling_per_s, "rows")),
        ("drain / ceiling", ratio),
    ]
    width = max(len(label) for label, _ in rows)
    return "\nSummary\n" + "\n".join(f"  {label:<{width}}  {value}" for label, value in rows)
