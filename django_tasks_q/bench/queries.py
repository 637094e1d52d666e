"""The benchmark's reads and deletes of the task table; the statements are in ``queries.sql``.

Rows of the benchmark are those of its queue with one of :data:`BENCH_NAMES`: it refuses to run
on a queue holding others, and never touches them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from functools import cache
from typing import Any

from django.db import connections, transaction

from django_tasks_q.bench.options import BenchError
from django_tasks_q.bench.report import Report
from django_tasks_q.bench.tasks import clock, joins, noop, one_per_key, steady, waits
from django_tasks_q.bench.workers import WORKER_ID_PREFIX
from django_tasks_q.compat import InvalidTask
from django_tasks_q.queue import load_statements

NOOP_NAME = noop.name
CLOCK_NAME = clock.name
WAITS_NAME = waits.name
STEADY_NAME = steady.name
JOINS_NAME = joins.name
LIMITED_NAME = one_per_key.name
# Rows for the SQL ceiling are never run by a worker, so their name needs no registered task.
CEILING_NAME = "django_tasks_q.bench.ceiling"
BENCH_NAMES = (
    NOOP_NAME, CLOCK_NAME, WAITS_NAME, STEADY_NAME, JOINS_NAME, LIMITED_NAME, CEILING_NAME
)  # fmt: skip


@cache
def _statements() -> dict[str, str]:
    return load_statements("django_tasks_q.bench", "queries.sql")


def sql(name: str) -> str:
    return _statements()[name]


def database_alias() -> str:
    """The database the task backend writes to, which the benchmark measures."""
    from django_tasks_q.backend import get_backend

    try:
        return get_backend().database
    except InvalidTask as exc:
        raise BenchError(str(exc)) from None


def refuse_foreign_rows(database: str, queue_name: str) -> None:
    """Stop before deleting anything if the queue holds tasks the benchmark did not make."""
    with connections[database].cursor() as cursor:
        cursor.execute(sql("foreign_rows"), [queue_name, list(BENCH_NAMES)])
        (count,) = cursor.fetchone()
    if count:
        raise BenchError(
            f"Queue {queue_name!r} holds {count} task(s) that the benchmark did not create. "
            "The benchmark deletes its queue's rows, and its workers would run those tasks: "
            "pass --queue with a name no application uses."
        )


def delete_bench_rows(database: str, queue_name: str, report: Report | None = None) -> None:
    """Delete the benchmark's rows; with ``report``, a failure is reported instead of raised."""
    try:
        with connections[database].cursor() as cursor:
            cursor.execute(sql("delete_bench_rows"), [queue_name, list(BENCH_NAMES)])
    except Exception as exc:
        if report is None:
            raise
        # Cleaning up after a failure must not hide the failure.
        report(f"Could not delete the benchmark's rows of queue {queue_name!r}: {exc}")


def unfinished(database: str, queue_name: str) -> int:
    """Tasks of the queue still READY or RUNNING."""
    with connections[database].cursor() as cursor:
        cursor.execute(sql("unfinished"), {"queue": queue_name})
        return cursor.fetchone()[0]


def status(database: str, task_id: int) -> str | None:
    with connections[database].cursor() as cursor:
        cursor.execute(sql("status"), [task_id])
        row = cursor.fetchone()
    return row[0] if row else None


def started(database: str, ids: Sequence[int]) -> dict[int, tuple[float, float]]:
    """For each of ``ids`` that succeeded: the wall clock its function read when it started
    (its result), and the milliseconds from its enqueueing commit to its claim (database
    clock)."""
    with connections[database].cursor() as cursor:
        cursor.execute(sql("started"), [list(ids)])
        return {row[0]: (float(row[1]), float(row[2])) for row in cursor.fetchall()}


def verify(
    database: str, queue_name: str, name: str, expected: int, after_id: int = 0
) -> tuple[int, float]:
    """Check that every row of ``name`` (with an id above ``after_id``) succeeded with its
    argument as result (what both the no-op and the ceiling return); returns (rows, seconds
    from first claim to last finish)."""
    with connections[database].cursor() as cursor:
        cursor.execute(sql("verified"), [queue_name, name, after_id])
        verified, seconds = cursor.fetchone()
        if verified == expected and seconds:
            return verified, float(seconds)
        raise _not_all_verified(cursor, queue_name, name, expected, verified, after_id)


def verify_waits(database: str, queue_name: str, expected: int) -> tuple[int, float, float]:
    """Check that every task of the I/O-bound phase succeeded with its argument in its result;
    returns (rows, seconds from first claim to last finish, mean milliseconds waited)."""
    with connections[database].cursor() as cursor:
        cursor.execute(sql("verified_waits"), [queue_name, WAITS_NAME])
        verified, waited_ms, seconds = cursor.fetchone()
        if verified == expected and seconds:
            return verified, float(seconds), float(waited_ms)
        raise _not_all_verified(cursor, queue_name, WAITS_NAME, expected, verified)


def _not_all_verified(
    cursor: Any, queue_name: str, name: str, expected: int, verified: int, after_id: int = 0
) -> BenchError:
    cursor.execute(sql("statuses"), [queue_name, name, after_id])
    statuses = ", ".join(f"{state} {count}" for state, count in cursor.fetchall())
    return BenchError(
        f"Only {verified} of {expected} {name} tasks succeeded with the right result "
        f"(by status: {statuses or 'none'}). No rate is reported."
    )


def last_id(database: str) -> int:
    """The highest task id so far: rows enqueued later have higher ones."""
    with connections[database].cursor() as cursor:
        cursor.execute(sql("last_id"))
        return cursor.fetchone()[0]


def most_running_per_key(database: str, queue_name: str, name: str) -> int:
    """The most tasks of ``name`` that held one key's slot at once: from each row's claim to
    its finish (database times)."""
    with connections[database].cursor() as cursor:
        cursor.execute(sql("most_running_per_key"), [queue_name, name] * 2)
        return cursor.fetchone()[0] or 0


def refuse_foreign_workers(database: str, queue_name: str, name: str = NOOP_NAME) -> None:
    """A worker serving every queue would have run some of the tasks of ``name`` and skewed
    the rate."""
    with connections[database].cursor() as cursor:
        cursor.execute(sql("foreign_workers"), [queue_name, name, WORKER_ID_PREFIX])
        count, example = cursor.fetchone()
    if count:
        raise BenchError(
            f"{count} benchmark task(s) were run by a worker the benchmark did not start "
            f"({example}): one serving this queue, or every queue (no --queues). Stop it while "
            "benchmarking, or the rates measure it too."
        )


def server_setting(database: str, name: str) -> str:
    with connections[database].cursor() as cursor:
        cursor.execute(sql("server_setting"), [name])
        return cursor.fetchone()[0]


def table_rows(database: str) -> tuple[int, int]:
    """The statistics' estimate of live and dead rows in the task table."""
    with connections[database].cursor() as cursor:
        cursor.execute(sql("table_rows"))
        row = cursor.fetchone()
    return (row[0], row[1]) if row else (0, 0)


@dataclass(frozen=True)
class DatabaseCost:
    wal_bytes: int
    commits: int
    rows_written: int

    def __sub__(self, before: DatabaseCost) -> DatabaseCost:
        return DatabaseCost(
            self.wal_bytes - before.wal_bytes,
            self.commits - before.commits,
            self.rows_written - before.rows_written,
        )


def database_cost(database: str) -> DatabaseCost:
    """WAL, commits and rows written by the whole database so far (subtract two readings)."""
    with connections[database].cursor() as cursor:
        cursor.execute(sql("database_cost"))
        return DatabaseCost(*cursor.fetchone())


def database_now(database: str) -> datetime:
    """The database's clock, which stamps the rows."""
    with connections[database].cursor() as cursor:
        cursor.execute(sql("database_now"))
        return cursor.fetchone()[0]


def last_finish(database: str, queue_name: str, name: str) -> datetime:
    with connections[database].cursor() as cursor:
        cursor.execute(sql("last_finish"), [queue_name, name])
        return cursor.fetchone()[0]


def first_claim_after(
    database: str, queue_name: str, name: str, since: datetime
) -> datetime | None:
    with connections[database].cursor() as cursor:
        cursor.execute(sql("first_claim_after"), [queue_name, name, since])
        return cursor.fetchone()[0]


def repeatable_read_scan(database: str, then: Callable[[], object]) -> None:
    """Count the whole task table in a REPEATABLE READ transaction, as a report does, and call
    ``then`` before committing (a report works on what it read): the transaction's snapshot
    holds the xmin horizon until it commits."""
    with transaction.atomic(using=database), connections[database].cursor() as cursor:
        cursor.execute(sql("repeatable_read"))
        cursor.execute(sql("reader_one_process"))
        cursor.execute(sql("reader_scan"))
        cursor.fetchone()
        then()


def terminate_workers(database: str) -> set[int]:
    """End the connections of this run's workers (and no other); returns their backend pids.
    A backend still exiting from an earlier call is listed, and signalled, again."""
    with connections[database].cursor() as cursor:
        cursor.execute(sql("terminate_workers"), [WORKER_ID_PREFIX])
        return {pid for pid, _ in cursor.fetchall()}


@dataclass(frozen=True)
class WindowStats:
    offered: int
    run: int  # finished
    lag_p50_ms: float | None
    lag_p99_ms: float | None


def window(
    database: str, queue_name: str, name: str, since: datetime, until: datetime
) -> WindowStats:
    """What happened to the tasks of ``name`` between two database times."""
    with connections[database].cursor() as cursor:
        cursor.execute(
            sql("window"), {"queue": queue_name, "name": name, "since": since, "until": until}
        )
        offered, run, p50, p99 = cursor.fetchone()
    return WindowStats(
        offered=offered,
        run=run,
        lag_p50_ms=None if p50 is None else float(p50),
        lag_p99_ms=None if p99 is None else float(p99),
    )
