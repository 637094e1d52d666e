"""Prometheus metrics: ``pip install "django-tasks-q[prometheus]"``.

Two sources, because the numbers live in two places:

- **Counters and durations** of what a process did: tasks it enqueued, and, in a worker, tasks
  it started and how they ended. Each process counts its own; Prometheus sums the scrapes.
  A worker serves them on ``runtaskworker --metrics-port``.
- **Gauges of the queue as it is now** (ready, scheduled, running, oldest ready task's age,
  workers alive, tasks held by each pause), read from the database at scrape time. They are
  the same whichever process serves them, so one scrape target is enough: :func:`metrics_view`
  in your URLconf, or any worker's metrics port.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Iterator
from datetime import timedelta
from functools import cache
from typing import TYPE_CHECKING, Any

from django.core.exceptions import ImproperlyConfigured
from django.http import HttpRequest, HttpResponse

try:
    import prometheus_client
    from prometheus_client.core import GaugeMetricFamily
    from prometheus_client.registry import Collector
except ImportError:  # the optional extra is not installed
    prometheus_client = None
    Collector = object

if TYPE_CHECKING:
    from django_tasks_q.queue import ClaimedTask, Outcome

PREFIX = "django_tasks_q"
LABELS = ("task", "queue")
# Seconds: from no-op tasks to hour-long reports.
DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 1800)


def require_prometheus() -> Any:
    if prometheus_client is None:
        raise ImproperlyConfigured(
            'Metrics need the prometheus-client package: pip install "django-tasks-q[prometheus]".'
        )
    return prometheus_client


class TaskCounters:
    """The counters and histogram of this process, registered once in the default registry."""

    def __init__(self) -> None:
        client = require_prometheus()

        def counter(name: str, description: str) -> Any:
            return client.Counter(f"{PREFIX}_tasks_{name}", description, LABELS)

        self.enqueued = counter("enqueued", "Tasks enqueued by this process.")
        self.started = counter("started", "Task attempts started by this worker.")
        self.succeeded = counter("succeeded", "Task attempts that succeeded.")
        self.failed = counter("failed", "Task attempts that failed for good (no retry left).")
        self.retried = counter("retried", "Failed task attempts that will be retried.")
        self.cancelled = counter("cancelled", "Running tasks that ended cancelled.")
        self.duration = client.Histogram(
            f"{PREFIX}_task_duration_seconds",
            "How long task attempts ran.",
            LABELS,
            buckets=DURATION_BUCKETS,
        )
        self.by_status = {
            "SUCCESSFUL": self.succeeded,
            "FAILED": self.failed,
            "READY": self.retried,
            "CANCELLED": self.cancelled,
        }


@cache
def counters() -> TaskCounters:
    counters = TaskCounters()
    client = require_prometheus()
    client.REGISTRY.register(QueueCollector())
    return counters


class WorkerMetrics:
    """What a worker's main thread claims and records, turned into counter increments.

    It sees every claim and every recorded outcome, whichever pool ran the task, so counts
    are right for the process pool too (children report to the worker, not to Prometheus).
    """

    def __init__(self) -> None:
        self.counters = counters()
        self._labels: dict[int, tuple[str, str]] = {}

    def claimed(self, tasks: Iterable[ClaimedTask]) -> None:
        for task in tasks:
            self._labels[task.id] = (task.name, task.queue)

    def started(self, task: ClaimedTask) -> None:
        """A slot began ``task`` (called by the pool): a claimed task waiting for a slot in
        this worker is not started yet."""
        self.counters.started.labels(task.name, task.queue).inc()

    def recorded(self, outcomes: Iterable[Outcome], updated: set[int]) -> None:
        for outcome in outcomes:
            labels = self._labels.pop(outcome.id, None)
            if labels is None or outcome.id not in updated:
                continue
            self.counters.by_status[str(outcome.status)].labels(*labels).inc()
            self.counters.duration.labels(*labels).observe(outcome.duration)

    def released(self, ids: Iterable[int]) -> None:
        for task_id in ids:
            self._labels.pop(task_id, None)


def count_enqueued(sender: Any, task_result: Any, **kwargs: Any) -> None:
    """``task_enqueued`` receiver: counts tasks this process enqueued. Django's own backends
    send it too, with a plain ``TaskResult`` (no ``queue`` of its own)."""
    task = task_result.task
    queue = getattr(task_result, "queue", None) or task.queue_name
    counters().enqueued.labels(getattr(task, "name", task.module_path), queue).inc()


_connected = threading.Lock()


def count_enqueues() -> None:
    """Start counting this process's enqueues (once; called by the view and the worker)."""
    from django_tasks_q.compat import task_enqueued

    with _connected:
        task_enqueued.connect(count_enqueued, dispatch_uid="django_tasks_q.metrics")


class QueueCollector(Collector):
    """Gauges read from the task and worker tables when Prometheus scrapes.

    A queue (or limited task) with nothing in it reports 0 rather than vanishing: the project's
    declared queues and limited tasks always, and any other this process has reported before.
    A series that disappears reads as "no data" to an alert, not as "empty"."""

    def __init__(self) -> None:
        self.queues_seen: set[str] = set()
        self.limited_seen: set[tuple[str, str]] = set()

    def collect(self) -> Iterator[Any]:
        from django.db import connections

        from django_tasks_q.conf import settings as conf

        try:
            yield from _queue_gauges(conf.DATABASE, self.queues_seen, self.limited_seen)
        finally:
            # The HTTP server of --metrics-port scrapes on threads of its own.
            if threading.current_thread() is not threading.main_thread():
                connections[conf.DATABASE].close_if_unusable_or_obsolete()

    def describe(self) -> list:
        return []  # collected on demand; nothing to check at registration


def _queue_gauges(
    using: str, queues_seen: set[str], limited_seen: set[tuple[str, str]]
) -> Iterator[Any]:
    from django.db.models.functions import Now

    from django_tasks_q import registry
    from django_tasks_q.conf import settings as conf
    from django_tasks_q.limits import may_be_limited
    from django_tasks_q.models import Worker, WorkerState
    from django_tasks_q.queues import known_queues
    from django_tasks_q.stats import (
        LimitedTasks,
        QueueBacklog,
        limited_by_task,
        pauses,
        queue_backlog,
    )

    ready = GaugeMetricFamily(f"{PREFIX}_queue_ready", "Tasks due to run now.", labels=["queue"])
    scheduled = GaugeMetricFamily(
        f"{PREFIX}_queue_scheduled", "Tasks waiting for a later run time.", labels=["queue"]
    )
    running = GaugeMetricFamily(f"{PREFIX}_queue_running", "Tasks running.", labels=["queue"])
    waiting = GaugeMetricFamily(
        f"{PREFIX}_queue_waiting",
        "Tasks waiting for their dependencies or held by a pause.",
        labels=["queue"],
    )
    oldest = GaugeMetricFamily(
        f"{PREFIX}_queue_oldest_ready_age_seconds",
        "How long the oldest task due to run has been waiting.",
        labels=["queue"],
    )
    backlog = {row.queue: row for row in queue_backlog(using)}  # shared with the admin dashboard
    queues_seen.update(backlog, known_queues(using))
    for name in sorted(queues_seen):
        row = backlog.get(name) or QueueBacklog(name, 0, 0, 0, None, 0)
        queue = [name]
        ready.add_metric(queue, row.ready)
        scheduled.add_metric(queue, row.scheduled)
        running.add_metric(queue, row.running)
        waiting.add_metric(queue, row.waiting)
        oldest.add_metric(queue, max(row.oldest_ready_age or 0.0, 0.0))
    alive = GaugeMetricFamily(
        f"{PREFIX}_workers_alive", "Workers that heartbeat within their lease."
    )
    alive.add_metric(
        [],
        Worker.objects.using(using)
        .filter(
            state=WorkerState.RUNNING,
            last_heartbeat_at__gte=Now() - timedelta(seconds=conf.LEASE_SECONDS),
        )
        .count(),
    )
    paused = GaugeMetricFamily(
        f"{PREFIX}_paused_held_tasks",
        "Tasks held back by a pause, one series per paused queue or task (see pause()).",
        labels=["queue", "task"],
    )
    for item in pauses(using):
        paused.add_metric([item.queue, item.task_name], item.held)
    labels = ["queue", "task"]
    limited_running = GaugeMetricFamily(
        f"{PREFIX}_limited_running_tasks",
        "Running tasks that hold a concurrency limit (docs/flow-control.md).",
        labels=labels,
    )
    limited_held = GaugeMetricFamily(
        f"{PREFIX}_limited_held_tasks",
        "Tasks a concurrency limit holds back until a task of that limit finishes.",
        labels=labels,
    )
    throttled = GaugeMetricFamily(
        f"{PREFIX}_throttled_tasks",
        "Tasks a rate limit holds back until the start each reserved.",
        labels=labels,
    )
    limited = {(item.queue, item.name): item for item in limited_by_task(using)}
    limited_seen.update(limited)
    limited_seen.update(
        (task.queue_name, name)
        for name, task in registry.all_tasks().items()
        if may_be_limited(task, task.queue_name)
    )
    for queue_name, task_name in sorted(limited_seen):
        item = limited.get((queue_name, task_name)) or LimitedTasks(queue_name, task_name, 0, 0, 0)
        limited_running.add_metric([item.queue, item.name], item.running)
        limited_held.add_metric([item.queue, item.name], item.held)
        throttled.add_metric([item.queue, item.name], item.throttled)
    yield from (ready, scheduled, running, waiting, oldest, alive, paused)
    yield from (limited_running, limited_held, throttled)


if prometheus_client is not None:
    # Importing this module (a URLconf that routes to metrics_view does) starts the count.
    count_enqueues()


def metrics_view(request: HttpRequest) -> HttpResponse:
    """Prometheus exposition of this process's counters and the queue gauges.

    Add it to your URLconf behind whatever protects internal endpoints::

        path("metrics/tasks", metrics_view)
    """
    client = require_prometheus()
    counters()
    return HttpResponse(client.generate_latest(), content_type=client.CONTENT_TYPE_LATEST)


def serve(port: int, address: str = "0.0.0.0") -> None:  # noqa: S104 - a metrics port is meant to be reached
    """Serve this process's metrics over HTTP on ``port`` (``runtaskworker --metrics-port``)."""
    client = require_prometheus()
    counters()
    client.start_http_server(port, addr=address)
