"""Read-only numbers about the queue, for the admin dashboard and the Prometheus gauges.

Each function is one statement shaped for an index, so it stays cheap however many finished
rows the table keeps:

- READY, RUNNING and WAITING rows through their partial indexes (``tasks_q_ready_idx``,
  ``tasks_q_running_idx``, ``tasks_q_waiting_idx``), which hold the backlog only;
- finished rows through ``tasks_q_finished_idx (status, finished_at)``, always with the status
  and a lower bound on ``finished_at``, so a window reads only its own entries;
- schedules through ``tasks_q_schedule_due_idx``.

Time windows use the database clock, ``now()``: it is the clock the workers write with. Inside
a transaction ``now()`` is the same for every statement, so the dashboard reads all of its
panels in one transaction and they agree on what "the last hour" is.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime

from django.db import connections

# Two aggregates over the partial indexes, not one over `status IN ('READY', 'RUNNING')`: the
# planner cannot match an IN list to two partial indexes and scans the whole table instead
# (120 ms at a million rows, against under a millisecond this way).
QUEUE_BACKLOG = """
SELECT queue,
       sum(ready)::bigint,
       sum(scheduled)::bigint,
       sum(running)::bigint,
       extract(epoch FROM now() - min(oldest_due))::float8,
       sum(waiting)::bigint
FROM (
    SELECT queue,
           count(*) FILTER (WHERE run_after <= now()) AS ready,
           count(*) FILTER (WHERE run_after > now()) AS scheduled,
           0 AS running,
           min(run_after) FILTER (WHERE run_after <= now()) AS oldest_due,
           0 AS waiting
    FROM django_tasks_q_task
    WHERE status = 'READY'
    GROUP BY queue
    UNION ALL
    SELECT queue, 0, 0, count(*), NULL, 0
    FROM django_tasks_q_task
    WHERE status = 'RUNNING'
    GROUP BY queue
    UNION ALL
    SELECT queue, 0, 0, 0, NULL, count(*)
    FROM django_tasks_q_task
    WHERE status = 'WAITING'
    GROUP BY queue
) AS backlog
GROUP BY queue
ORDER BY queue
"""

QUEUE_FINISHED = """
SELECT queue,
       count(*) FILTER (WHERE status = 'SUCCESSFUL'),
       count(*) FILTER (WHERE status = 'FAILED')
FROM django_tasks_q_task
WHERE status IN ('SUCCESSFUL', 'FAILED')
  AND finished_at >= now() - make_interval(secs => %(seconds)s)
GROUP BY queue
"""

# Every minute of the window gets a row, finished tasks or not: the chart needs the gaps.
# The current minute, still running, is the last one.
THROUGHPUT = """
WITH finished AS (
    SELECT date_trunc('minute', finished_at) AS minute,
           count(*) FILTER (WHERE status = 'SUCCESSFUL') AS succeeded,
           count(*) FILTER (WHERE status = 'FAILED') AS failed
    FROM django_tasks_q_task
    WHERE status IN ('SUCCESSFUL', 'FAILED')
      AND finished_at >= date_trunc('minute', now()) - make_interval(mins => %(minutes)s - 1)
    GROUP BY 1
)
SELECT series.minute, coalesce(finished.succeeded, 0), coalesce(finished.failed, 0)
FROM generate_series(date_trunc('minute', now()) - make_interval(mins => %(minutes)s - 1),
                     date_trunc('minute', now()), interval '1 minute') AS series (minute)
LEFT JOIN finished USING (minute)
ORDER BY series.minute
"""

# The error columns come from the latest failure's row alone (a primary-key lookup), so the
# tracebacks of every other failure of the day are never read.
TOP_FAILING = """
SELECT failing.name, failing.failures, task.id, task.finished_at,
       task.errors -> -1 ->> 'type', task.errors -> -1 ->> 'message'
FROM (
    SELECT name, count(*) AS failures,
           (array_agg(id ORDER BY finished_at DESC, id DESC))[1] AS latest_id
    FROM django_tasks_q_task
    WHERE status = 'FAILED' AND finished_at >= now() - make_interval(secs => %(seconds)s)
    GROUP BY name
    ORDER BY failures DESC, name
    LIMIT %(limit)s
) AS failing
JOIN django_tasks_q_task AS task ON task.id = failing.latest_id
ORDER BY failing.failures DESC, failing.name
"""

# The last attempt's run time: earlier attempts of a retried task are not in the row.
SLOWEST = """
SELECT name, count(*),
       percentile_cont(0.5) WITHIN GROUP (ORDER BY duration),
       percentile_cont(0.95) WITHIN GROUP (ORDER BY duration)
FROM (
    SELECT name, extract(epoch FROM finished_at - last_attempted_at)::float8 AS duration
    FROM django_tasks_q_task
    WHERE status IN ('SUCCESSFUL', 'FAILED')
      AND finished_at >= now() - make_interval(secs => %(seconds)s)
      AND last_attempted_at IS NOT NULL
) AS finished
GROUP BY name
ORDER BY 4 DESC, name
LIMIT %(limit)s
"""

# Workers still saying they run, newest heartbeat last so the late ones come first. A worker
# that died without stopping keeps state RUNNING until it is pruned, so it shows up here with
# an old heartbeat: exactly what an operator needs to see. Both JSON columns are cast to
# text: Django's connection setup returns jsonb as text but decodes json, one shape is simpler.
WORKERS = """
SELECT worker.id, worker.hostname, worker.pid, worker.queues::text, worker.concurrency,
       worker.started_at, worker.last_heartbeat_at,
       extract(epoch FROM now() - worker.last_heartbeat_at)::float8,
       worker.tasks_succeeded, worker.tasks_failed,
       coalesce(held.running, 0), coalesce(held.names::text, '[]'),
       count(*) OVER (),
       count(*) FILTER (
           WHERE worker.last_heartbeat_at >= now() - make_interval(secs => %(lease)s)) OVER (),
       count(*) FILTER (
           WHERE worker.last_heartbeat_at < now() - make_interval(secs => %(stale_after)s)) OVER ()
FROM django_tasks_q_worker AS worker
LEFT JOIN (
    SELECT worker_id, sum(tasks)::bigint AS running,
           json_agg(json_build_array(name, tasks) ORDER BY tasks DESC, name) AS names
    FROM (
        SELECT worker_id, name, count(*) AS tasks
        FROM django_tasks_q_task
        WHERE status = 'RUNNING'
        GROUP BY worker_id, name
    ) AS by_name
    GROUP BY worker_id
) AS held ON held.worker_id = worker.id
WHERE worker.state = 'RUNNING'
ORDER BY worker.last_heartbeat_at, worker.id
LIMIT %(limit)s
"""

SCHEDULES_DUE = """
SELECT id, name, task, next_run_at, last_run_at,
       extract(epoch FROM next_run_at - now())::float8
FROM django_tasks_q_schedule
WHERE enabled AND next_run_at IS NOT NULL
ORDER BY next_run_at, id
LIMIT %(limit)s
"""


PAUSES = """
SELECT pause.queue, pause.task_name, pause.paused_at, pause.reason,
       (SELECT count(*) FROM django_tasks_q_task AS task
        WHERE task.status = 'WAITING' AND task.held_by = CASE
            WHEN pause.queue <> '' THEN 'queue:' || pause.queue
            ELSE 'task:' || pause.task_name END)
FROM django_tasks_q_pause AS pause
ORDER BY pause.paused_at, pause.id
"""


# Per limit key in use (docs/flow-control.md): its limit, the tasks holding it that run, the
# tasks it holds back, and for a rate limit how far ahead its starts are reserved. Running
# ones through tasks_q_running_idx, held ones through tasks_q_held_order_idx, throttled ones
# through tasks_q_throttled_idx: only the backlog is read. The busiest %(limit)s keys.
LIMITS = """
WITH concurrency AS (
    SELECT limit_.key, max(limit_.value::integer) AS most, count(*) AS running, 0 AS held
    FROM django_tasks_q_task, jsonb_each_text(concurrency_limits) AS limit_(key, value)
    WHERE status = 'RUNNING' AND concurrency_limits IS NOT NULL
    GROUP BY limit_.key
    UNION ALL
    SELECT substr(held_by, 7), max((concurrency_limits ->> substr(held_by, 7))::integer),
           0, count(*)
    FROM django_tasks_q_task
    WHERE status = 'WAITING' AND held_by IS NOT NULL AND starts_with(held_by, 'limit:')
    GROUP BY held_by
),
rate AS (
    SELECT limit_.key, min(limit_.value::float8) AS every, count(*) AS throttled
    FROM django_tasks_q_task, jsonb_each_text(rate_limits) AS limit_(key, value)
    WHERE status = 'READY' AND throttled_until IS NOT NULL
    GROUP BY limit_.key
)
SELECT key, 'concurrency', max(most)::float8, sum(running)::bigint, sum(held)::bigint, 0::bigint,
       NULL::timestamptz
FROM concurrency GROUP BY key
UNION ALL
SELECT rate.key, 'rate', rate.every, 0, 0, rate.throttled, booked.next_at
FROM rate LEFT JOIN django_tasks_q_rate AS booked ON booked.key = rate.key
ORDER BY 5 DESC, 6 DESC, 4 DESC, 1
LIMIT %(limit)s
"""


@dataclass(frozen=True, slots=True)
class LimitNow:
    key: str  # "task:<name>", "task:<name>:<limit_by value>" or "queue:<name>"
    kind: str  # "concurrency" or "rate"
    limit: float  # most running at once; for a rate, seconds between two starts
    running: int  # tasks holding the key that run (claimed, or started)
    held: int  # tasks a concurrency limit holds back (WAITING)
    throttled: int  # tasks a rate limit holds back until the start each reserved
    booked_until: datetime | None  # a rate's next free start


@dataclass(frozen=True, slots=True)
class PausedNow:
    queue: str  # "" for a paused task
    task_name: str  # "" for a paused queue
    since: datetime
    reason: str
    held: int  # tasks waiting for its resume (through tasks_q_held_idx)


@dataclass(frozen=True, slots=True)
class QueueBacklog:
    queue: str
    ready: int  # due now
    scheduled: int  # waiting for a later run_after
    running: int
    oldest_ready_age: float | None  # seconds the oldest due task has waited; None: none due
    waiting: int = 0  # for dependencies (workflows) or held by a pause


@dataclass(frozen=True, slots=True)
class QueueFinished:
    queue: str
    succeeded: int
    failed: int


@dataclass(frozen=True, slots=True)
class Minute:
    start: datetime
    succeeded: int
    failed: int

    @property
    def total(self) -> int:
        return self.succeeded + self.failed


@dataclass(frozen=True, slots=True)
class FailingTask:
    name: str
    failures: int
    latest_id: int
    latest_at: datetime
    error_type: str | None
    error_message: str | None


@dataclass(frozen=True, slots=True)
class SlowTask:
    name: str
    finished: int
    p50: float  # seconds
    p95: float


@dataclass(frozen=True, slots=True)
class WorkerActivity:
    id: str
    hostname: str
    pid: int
    queues: list[str]
    concurrency: int
    started_at: datetime
    last_heartbeat_at: datetime
    heartbeat_age: float  # seconds
    tasks_succeeded: int
    tasks_failed: int
    running: int
    running_names: list[tuple[str, int]]  # task name, how many of them, most first


@dataclass(frozen=True, slots=True)
class WorkerCounts:
    total: int
    alive: int
    stale: int


@dataclass(frozen=True, slots=True)
class DueSchedule:
    id: int
    name: str
    task: str
    next_run_at: datetime
    last_run_at: datetime | None
    due_in: float  # seconds; negative when beat is late


def _rows(using: str, statement: str, params: object = None) -> list[tuple]:
    with connections[using].cursor() as cursor:
        cursor.execute(statement, params)
        return cursor.fetchall()


def database_now(using: str) -> datetime:
    """``now()``: inside a transaction, the time every statement's window is measured from."""
    return _rows(using, "SELECT now()")[0][0]


def queue_backlog(using: str) -> list[QueueBacklog]:
    """Per queue: tasks due now, waiting for later, running, and the oldest due task's age."""
    return [QueueBacklog(*row) for row in _rows(using, QUEUE_BACKLOG)]


def pauses(using: str) -> list[PausedNow]:
    """What is paused, since when, why, and how many tasks each pause holds."""
    return [PausedNow(*row) for row in _rows(using, PAUSES)]


def limits(using: str, limit: int = 50) -> list[LimitNow]:
    """The limit keys in use now, the busiest first."""
    return [LimitNow(*row) for row in _rows(using, LIMITS, {"limit": limit})]


# Per queue and task name: tasks holding a concurrency limit that run, tasks a concurrency
# limit holds back, tasks a rate limit holds back (the Prometheus gauges).
LIMITED_BY_TASK = """
SELECT queue, name,
       count(*) FILTER (WHERE status = 'RUNNING'),
       count(*) FILTER (WHERE status = 'WAITING'),
       count(*) FILTER (WHERE status = 'READY')
FROM (
    SELECT queue, name, status FROM django_tasks_q_task
    WHERE status = 'RUNNING' AND concurrency_limits IS NOT NULL
    UNION ALL
    SELECT queue, name, status FROM django_tasks_q_task
    WHERE status = 'WAITING' AND held_by IS NOT NULL AND starts_with(held_by, 'limit:')
    UNION ALL
    SELECT queue, name, status FROM django_tasks_q_task
    WHERE status = 'READY' AND throttled_until IS NOT NULL
) AS limited
GROUP BY queue, name
ORDER BY queue, name
"""


@dataclass(frozen=True, slots=True)
class LimitedTasks:
    queue: str
    name: str
    running: int
    held: int
    throttled: int


def limited_by_task(using: str) -> list[LimitedTasks]:
    return [LimitedTasks(*row) for row in _rows(using, LIMITED_BY_TASK)]


def queue_finished(using: str, seconds: float = 3600) -> list[QueueFinished]:
    """Per queue: tasks that succeeded and failed (for good) in the last ``seconds``."""
    return [QueueFinished(*row) for row in _rows(using, QUEUE_FINISHED, {"seconds": seconds})]


def throughput(using: str, minutes: int = 60) -> list[Minute]:
    """Tasks finished per minute, oldest minute first, the current minute last."""
    return [Minute(*row) for row in _rows(using, THROUGHPUT, {"minutes": minutes})]


def top_failing(using: str, seconds: float = 24 * 3600, limit: int = 10) -> list[FailingTask]:
    """Task names with the most failures in the window, and their latest failure's error."""
    rows = _rows(using, TOP_FAILING, {"seconds": seconds, "limit": limit})
    return [FailingTask(*row) for row in rows]


def slowest(using: str, seconds: float = 3600, limit: int = 10) -> list[SlowTask]:
    """Task names by 95th percentile run time of the tasks that finished in the window."""
    return [SlowTask(*row) for row in _rows(using, SLOWEST, {"seconds": seconds, "limit": limit})]


def workers(
    using: str, *, lease: float, stale_after: float, limit: int = 100
) -> tuple[list[WorkerActivity], WorkerCounts]:
    """Workers in state RUNNING, longest silent first, with what they hold now; and how many
    there are, how many heartbeat within ``lease`` seconds and how many are silent for more
    than ``stale_after``."""
    params = {"lease": lease, "stale_after": stale_after, "limit": limit}
    rows = _rows(using, WORKERS, params)
    found = [
        WorkerActivity(
            *row[:3],
            json.loads(row[3]),
            *row[4:11],
            running_names=[(name, count) for name, count in json.loads(row[11])],
        )
        for row in rows
    ]
    return found, WorkerCounts(*rows[0][12:]) if rows else WorkerCounts(0, 0, 0)


def schedules_due(using: str, limit: int = 10) -> list[DueSchedule]:
    """Enabled schedules by next run time, soonest first."""
    return [DueSchedule(*row) for row in _rows(using, SCHEDULES_DUE, {"limit": limit})]
