"""Views for orchestrators: is this web process ready, and how much work is waiting.

Add them to your URLconf behind whatever protects internal endpoints::

    from django_tasks_q.health import queue_depth_view, readiness_view

    urlpatterns += [
        path("healthz/tasks", readiness_view),
        path("tasks/queue-depth", queue_depth_view),
    ]
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from django.db import DatabaseError, connections
from django.http import HttpRequest, JsonResponse

from django_tasks_q import stats
from django_tasks_q.conf import settings as conf

_migrated: set[str] = set()  # databases found fully migrated: they stay so in this process


def readiness(using: str | None = None) -> tuple[bool, dict[str, Any]]:
    """Whether the database answers, the task table exists and django_tasks_q's migrations
    are all applied; with what was found."""
    using = using or conf.DATABASE
    checks: dict[str, Any] = {}
    try:
        with connections[using].cursor() as cursor:
            cursor.execute("SELECT to_regclass('django_tasks_q_task') IS NOT NULL")
            checks["database"] = "ok"
            checks["task_table"] = "ok" if cursor.fetchone()[0] else "missing: run migrate"
        if using not in _migrated:
            unapplied = _unapplied_migrations(using)
            if unapplied:
                checks["migrations"] = "unapplied: " + ", ".join(unapplied)
            else:
                checks["migrations"] = "ok"
                _migrated.add(using)
        else:
            checks["migrations"] = "ok"
    except DatabaseError as exc:
        checks["database"] = f"unavailable: {exc.__class__.__name__}: {str(exc).strip()}"
        connections[using].close_if_unusable_or_obsolete()
    return all(value == "ok" for value in checks.values()), checks


def readiness_view(request: HttpRequest) -> JsonResponse:
    """200 when :func:`readiness` finds everything ready, else 503; the checks as JSON."""
    ready, checks = readiness()
    return JsonResponse({"ready": ready, "checks": checks}, status=200 if ready else 503)


def queue_depth(using: str | None = None, *, only: Sequence[str] = ()) -> dict[str, Any]:
    """Per queue: tasks due now, the oldest one's wait, running and scheduled tasks; and the
    totals, the signal to scale workers on. ``only``: those queues (empty ones included)."""
    queues = {
        row.queue: {
            "ready": row.ready,
            "oldest_ready_age_seconds": max(row.oldest_ready_age or 0.0, 0.0),
            "running": row.running,
            "scheduled": row.scheduled,
        }
        for row in stats.queue_backlog(using or conf.DATABASE)
    }
    if only:
        empty = {"ready": 0, "oldest_ready_age_seconds": 0.0, "running": 0, "scheduled": 0}
        queues = {name: queues.get(name, empty) for name in only}
    return {
        "ready": sum(queue["ready"] for queue in queues.values()),
        "oldest_ready_age_seconds": max(
            (queue["oldest_ready_age_seconds"] for queue in queues.values()), default=0.0
        ),
        "queues": queues,
    }


def queue_depth_view(request: HttpRequest) -> JsonResponse:
    """:func:`queue_depth` as JSON; ``?queue=emails`` (repeatable) keeps those queues only,
    and the totals are theirs."""
    return JsonResponse(queue_depth(only=request.GET.getlist("queue")))


def _unapplied_migrations(using: str) -> list[str]:
    from django.db.migrations.executor import MigrationExecutor

    executor = MigrationExecutor(connections[using])
    targets = [key for key in executor.loader.graph.leaf_nodes() if key[0] == "django_tasks_q"]
    return [migration.name for migration, _ in executor.migration_plan(targets)]
