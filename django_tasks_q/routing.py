"""Routes: which queue and priority a task goes to when its code does not say (Celery's
``task_routes``), from ``TASKS_Q["ROUTES"]``.

A route matches a task's registered name exactly, or as a glob (``"billing.tasks.*"``). A
task's own ``queue=`` / ``priority=`` and those passed when enqueueing win over a route.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import Any

from django_tasks_q.conf import SETTING_NAME
from django_tasks_q.conf import settings as conf

PRIORITY_RANGE = range(-100, 101)


@dataclass(frozen=True, slots=True)
class Route:
    queue: str | None = None
    priority: int | None = None


def _pairs(value: Any) -> list[tuple[Any, Any]]:
    if isinstance(value, Mapping):
        return list(value.items())
    if isinstance(value, (list, tuple)):
        return [tuple(item) if isinstance(item, (list, tuple)) else (item, None) for item in value]
    return []


def _route(target: Any) -> Route:
    if isinstance(target, str):
        return Route(queue=target)
    return Route(queue=target.get("queue"), priority=target.get("priority"))


def route_for(name: str) -> Route | None:
    """The route of a task name: the exact entry if there is one, else the first glob that
    matches, in the order they are written."""
    pairs = _pairs(conf.ROUTES)
    for pattern, target in pairs:
        if pattern == name:
            return _route(target)
    for pattern, target in pairs:
        if isinstance(pattern, str) and "*" in pattern and fnmatchcase(name, pattern):
            return _route(target)
    return None


def route_queues() -> set[str]:
    """The queues routes send tasks to (what check E021 would refuse is left out)."""
    queues = set()
    for _, target in _pairs(conf.ROUTES):
        queue = target.get("queue") if isinstance(target, Mapping) else target
        if isinstance(queue, str) and queue:
            queues.add(queue)
    return queues


def check_routes(value: Any) -> list[str]:
    """What is wrong with a ``TASKS_Q["ROUTES"]`` value, one message each."""
    where = f"{SETTING_NAME}['ROUTES']"
    if not isinstance(value, (Mapping, list, tuple)):
        return [
            f"{where} must be a dict (or a list of pairs) of task name or glob -> queue name, "
            f"or -> {{'queue': ..., 'priority': ...}}; got {type(value).__name__}."
        ]
    problems: list[str] = []
    for index, item in enumerate(value.items() if isinstance(value, Mapping) else value):
        if not (isinstance(item, (list, tuple)) and len(item) == 2):
            problems.append(f"{where}[{index}] must be a (pattern, route) pair, got {item!r}.")
            continue
        pattern, target = item
        entry = f"{where}[{pattern!r}]"
        if not isinstance(pattern, str) or not pattern or re.search(r"\s", pattern):
            problems.append(f"{entry}: a pattern is a task name or a glob such as 'app.tasks.*'.")
            continue
        if isinstance(target, str):
            target = {"queue": target}
        if not isinstance(target, Mapping):
            problems.append(f"{entry} must be a queue name or a dict with 'queue' / 'priority'.")
            continue
        unknown = set(target) - {"queue", "priority"}
        if unknown:
            problems.append(
                f"{entry} has unknown keys {sorted(unknown)}; a route takes 'queue' and "
                "'priority' (Celery's exchange and routing_key mean nothing here)."
            )
        queue = target.get("queue")
        if queue is not None and not (isinstance(queue, str) and 0 < len(queue) <= 100):
            problems.append(f"{entry}: 'queue' must be a name of 1 to 100 characters.")
        priority = target.get("priority")
        if priority is not None and (
            not isinstance(priority, int) or isinstance(priority, bool)
            or priority not in PRIORITY_RANGE
        ):  # fmt: skip
            problems.append(f"{entry}: 'priority' must be a whole number from -100 to 100.")
    return problems
