"""The queues a project declares, whether or not they hold tasks now."""

from __future__ import annotations

from django.conf import settings

from django_tasks_q import registry
from django_tasks_q.conf import settings as conf
from django_tasks_q.models import Schedule
from django_tasks_q.routing import route_queues


def known_queues(using: str) -> set[str]:
    """The queues the project declares, empty or not: those of its tasks, routes, schedules,
    queue limits and ``TASKS`` entries (not every value ever written to the table)."""
    queues = {task.queue_name for task in registry.all_tasks().values()}
    queues.update(route_queues())
    if isinstance(conf.QUEUE_LIMITS, dict):
        queues.update(conf.QUEUE_LIMITS)
    queues.update(Schedule.objects.using(using).exclude(queue="").values_list("queue", flat=True))
    for config in (getattr(settings, "TASKS", None) or {}).values():
        queues.update(config.get("QUEUES") or ())
    return queues
