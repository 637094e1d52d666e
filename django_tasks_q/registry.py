"""Task name -> task object. A worker runs nothing that is not in here."""

from __future__ import annotations

import difflib
from typing import TYPE_CHECKING

from django.core.exceptions import ImproperlyConfigured

from django_tasks_q.exceptions import UnknownTaskError

if TYPE_CHECKING:
    from django_tasks_q.tasks import BackgroundTask

_tasks: dict[str, BackgroundTask] = {}


def register(task: BackgroundTask) -> None:
    existing = _tasks.get(task.name)
    if existing is None:
        _tasks[task.name] = task
    elif existing.module_path != task.module_path:
        raise ImproperlyConfigured(
            f"Two tasks are named {task.name!r}: {existing.module_path} and {task.module_path}. "
            "Give one of them another name with @background_task(name=...)."
        )


def get(name: str) -> BackgroundTask:
    try:
        return _tasks[name]
    except KeyError:
        raise UnknownTaskError(unknown_task_message(name)) from None


def unknown_task_message(name: str) -> str:
    message = f"No task named {name!r} is registered."
    close = difflib.get_close_matches(name, list(_tasks), n=1)
    if close:
        message += f" Did you mean {close[0]!r}?"
    return message + (
        " Tasks are registered when their module is imported; put them in <app>/tasks.py "
        "of an installed app (autodiscovered) or import the module in AppConfig.ready()."
    )


def all_tasks() -> dict[str, BackgroundTask]:
    return dict(_tasks)
