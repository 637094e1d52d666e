"""Task name -> task object. A worker runs nothing but task objects.

A task is registered when its module is imported (``<app>/tasks.py`` is autodiscovered).
Django's contract for ``@django.tasks.task`` is that a worker imports the task by its module
path, so :func:`find` imports the module a name points to, and accepts what it finds there
only if it is a task object: never an arbitrary callable.
"""

from __future__ import annotations

import difflib
import importlib
import logging
import threading
from typing import TYPE_CHECKING

from django.core.exceptions import ImproperlyConfigured

from django_tasks_q.exceptions import UnknownTaskError

if TYPE_CHECKING:
    from django_tasks_q.tasks import BackgroundTask

logger = logging.getLogger("django_tasks_q.worker")

_tasks: dict[str, BackgroundTask] = {}
# Names an import did not resolve: not imported again on every claim of such a task.
_not_found: set[str] = set()
_import_lock = threading.Lock()


def register(task: BackgroundTask) -> None:
    existing = _tasks.get(task.name)
    if existing is None:
        _tasks[task.name] = task
    elif existing.module_path != task.module_path:
        raise ImproperlyConfigured(
            f"Two tasks are named {task.name!r}: {existing.module_path} and {task.module_path}. "
            "Give one of them another name with @background_task(name=...)."
        )


def find(name: str) -> BackgroundTask | None:
    """The task registered under ``name``, or the task object its module path points to
    (importing that module), or None."""
    task = _tasks.get(name)
    if task is not None or name in _not_found:
        return task
    with _import_lock:
        task = _tasks.get(name) or _import_task(name)
        if task is None:
            _not_found.add(name)
    return task


def get(name: str) -> BackgroundTask:
    task = find(name)
    if task is None:
        raise UnknownTaskError(unknown_task_message(name))
    return task


def _import_task(name: str) -> BackgroundTask | None:
    from django_tasks_q.compat import Task

    parts = name.split(".")
    if len(parts) < 2 or not all(part.isidentifier() for part in parts):
        return None
    for split in range(len(parts) - 1, 0, -1):
        module_name = ".".join(parts[:split])
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name is not None and not module_name.startswith(exc.name):
                _warn_broken(module_name, exc)
                return None
            continue  # no such module: try the next shorter prefix
        except Exception as exc:  # the module exists but fails to import
            _warn_broken(module_name, exc)
            return None
        value: object = module
        for attribute in parts[split:]:
            value = getattr(value, attribute, None)
        # Only a task object ever runs; a plain function found at the path does not.
        if isinstance(value, Task) and getattr(value, "name", None) == name:
            if name not in _tasks and hasattr(value, "max_lost_attempts"):
                register(value)  # type: ignore[arg-type]
            return _tasks.get(name, value)  # type: ignore[return-value]
        return None
    return None


def _warn_broken(module_name: str, exc: BaseException) -> None:
    logger.warning("Module %s could not be imported to find a task: %r", module_name, exc)


def unknown_task_message(name: str) -> str:
    message = f"No task named {name!r} is registered."
    close = _close_name(name)
    if close:
        message += f" Did you mean {close!r}?"
    return message + (
        " Tasks are registered when their module is imported; put them in <app>/tasks.py "
        "of an installed app (autodiscovered) or import the module in AppConfig.ready()."
    )


def _close_name(name: str) -> str | None:
    """A registered name that is a likely typo of ``name``, or the same function moved to
    another module. Names that merely share a module are not suggested."""
    module, _, function = name.rpartition(".")
    moved = [known for known in _tasks if known.rpartition(".")[2] == function]
    if moved:
        return moved[0]
    siblings = {known.rpartition(".")[2]: known for known in _tasks
                if known.rpartition(".")[0] == module}  # fmt: skip
    close = difflib.get_close_matches(function, list(siblings), n=1, cutoff=0.8)
    return siblings[close[0]] if close else None


def all_tasks() -> dict[str, BackgroundTask]:
    return dict(_tasks)
