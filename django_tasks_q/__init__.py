"""Background tasks for Django with PostgreSQL as the only moving part."""

from __future__ import annotations

from typing import TYPE_CHECKING

from django_tasks_q.exceptions import (
    InvalidTask,
    LimitError,
    MaxRetriesExceededError,
    Retry,
    TaskCancelled,
    TaskResultDoesNotExist,
    TaskTimeoutError,
    UnknownTaskError,
    WaitInsideTransaction,
)
from django_tasks_q.serialization import SerializationError
from django_tasks_q.tasks import BackgroundTask, BackgroundTaskContext, background_task, send_task

if TYPE_CHECKING:
    from django_tasks_q.results import TaskHandle

__all__ = [
    "BackgroundTask",
    "BackgroundTaskContext",
    "InvalidTask",
    "LimitError",
    "MaxRetriesExceededError",
    "Retry",
    "SerializationError",
    "TaskCancelled",
    "TaskResultDoesNotExist",
    "TaskTimeoutError",
    "UnknownTaskError",
    "WaitInsideTransaction",
    "background_task",
    "get_result",
    "pause",
    "resume",
    "send_task",
]


def pause(queue: str | None = None, *, task: object = None, reason: str = "") -> object:
    """Pause a queue or a task for every worker (see :mod:`django_tasks_q.pausing`)."""
    from django_tasks_q import pausing

    return pausing.pause(queue, task=task, reason=reason)


def resume(queue: str | None = None, *, task: object = None) -> object:
    """Resume a paused queue or task (see :mod:`django_tasks_q.pausing`)."""
    from django_tasks_q import pausing

    return pausing.resume(queue, task=task)


def get_result(task_id: str | int, *, backend: str = "default") -> TaskHandle:
    """A handle for an existing task, from its id."""
    from django_tasks_q.backend import get_backend

    return get_backend(backend).get_result(task_id)
