"""Pause and resume a queue or a task name, for every worker (docs/flow-control.md).

A pause is a row of ``django_tasks_q_pause``. Pausing holds the READY tasks it covers as
WAITING, so claims do not walk over them, and what is enqueued meanwhile waits too. Every
worker is told at once (NOTIFY, or at its next poll without notifications) and leaves the
paused tasks out of its claims. Resuming makes the held tasks READY again and wakes the
workers. Tasks a worker already holds (running, or claimed ahead) are not stopped.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from django.db import transaction

from django_tasks_q import queue
from django_tasks_q.conf import settings as conf
from django_tasks_q.exceptions import InvalidTask


@dataclass(frozen=True, slots=True)
class PauseResult:
    """What a pause or resume did."""

    changed: bool  # False: it was already paused (or, for resume, not paused)
    tasks: int  # tasks held back by the pause, or READY again after the resume


@dataclass(frozen=True, slots=True)
class PausedItem:
    queue: str
    task_name: str
    since: datetime
    reason: str

    def __str__(self) -> str:
        return f"queue {self.queue}" if self.queue else f"task {self.task_name}"


def _target(queue_name: str | None, task: Any) -> tuple[str, str]:
    if (queue_name is None) == (task is None):
        raise InvalidTask("Pass either a queue or a task, not both and not neither.")
    if queue_name is not None:
        if not isinstance(queue_name, str) or not queue_name or len(queue_name) > 100:
            raise InvalidTask(
                f"A queue name is a non-empty string of at most 100 characters, got {queue_name!r}."
            )
        return queue_name, ""
    name = task if isinstance(task, str) else getattr(task, "name", None)
    if not isinstance(name, str) or not name or len(name) > 255:
        raise InvalidTask(f"Pass a task object or a task name, got {task!r}.")
    return "", name


def pause(
    queue_name: str | None = None,
    *,
    task: Any = None,
    reason: str = "",
    using: str | None = None,
) -> PauseResult:
    """Pause ``queue_name``, or ``task`` (a task object or its registered name): no worker
    starts another of its tasks until :func:`resume`. Enqueueing goes on; the tasks wait."""
    queue_part, task_part = _target(queue_name, task)
    with transaction.atomic(using=using or conf.DATABASE):
        added, held = queue.pause(
            using=using or conf.DATABASE, queue=queue_part, task_name=task_part, reason=reason
        )
    return PauseResult(added, held)


def resume(
    queue_name: str | None = None, *, task: Any = None, using: str | None = None
) -> PauseResult:
    """End the pause of ``queue_name`` or ``task``: its waiting tasks are READY again
    (unless another pause, of their queue or their task, still holds them)."""
    queue_part, task_part = _target(queue_name, task)
    with transaction.atomic(using=using or conf.DATABASE):
        removed, released = queue.resume(
            using=using or conf.DATABASE,
            queue=queue_part,
            task_name=task_part,
            notify=conf.LISTEN_NOTIFY,
        )
    return PauseResult(removed, released)


def paused(*, using: str | None = None) -> list[PausedItem]:
    """What is paused now, the oldest first."""
    return [PausedItem(*row) for row in queue.paused(using=using or conf.DATABASE)]
