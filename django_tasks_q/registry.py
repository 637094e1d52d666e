"""Task name -> task object. A worker runs nothing but task objects.

A task is registered when its module is imported (``<app>/tasks.py`` is autodiscovered).
Django's contract for ``@django.tasks.task`` is that a worker imports the task by its module
path, so :func:`find` imports the module a name points to, and accepts what it finds there
only if it is a task object: never an arbitrary callable.
"""

from __future__ import annotations

import difflib
import importlib
import importlib.util
import logging
import threading
from typing import TYPE_CHECKING

from django.core.exceptions import ImproperlyConfigured

from django_tasks_q.exceptions import UnknownTaskError

if TYPE_CHECKING:
    from django_tasks_q.tasks import BackgroundTask

logger = logging.getLogger("django_tasks_q.worker")

_tasks: dict[str, BackgroundTask] = {}
# Names an import did not resolve, so a worker claiming such tasks does not import again each
# time. Registered names are looked up first, so a task registered later still wins. Bounded,
# since the names come from rows, not from the code.
_not_found: set[str] = set()
_NOT_FOUND_MAX = 1024
# Reentrant: a module imported here may itself look a task up while it is being imported.
_import_lock = threading.RLock()


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
    """The task registered under ``name``, or else the task object at the module path
    ``name`` (importing its module), or None. Nothing found at the path is ever called."""
    task = _tasks.get(name)
    if task is not None or name in _not_found:
        return task
    with _import_lock:
        task = _tasks.get(name) or _import_task(name)
        if task is None:
            if len(_not_found) >= _NOT_FOUND_MAX:
                _not_found.clear()
            _not_found.add(name)
    return task


def get(name: str) -> BackgroundTask:
    """:func:`find`, or ``UnknownTaskError`` saying what to do."""
    task = find(name)
    if task is None:
        raise UnknownTaskError(unknown_task_message(name))
    return task


def _import_task(name: str) -> BackgroundTask | None:
    """Import the module that ``name`` points into, then look the name up again: declaring
    a task registers it, so only a task object ever comes back, never what else the path
    reaches (a plain function, a stand-in for a removed task)."""
    parts = name.split(".")
    if len(parts) < 2 or not all(part.isidentifier() for part in parts):
        return None
    # The longest prefix that is a module holds the task; the rest are attributes.
    for split in range(len(parts) - 1, 0, -1):
        module_name = ".".join(parts[:split])
        try:
            importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if _is_this_or_a_parent(exc.name, module_name):
                continue  # no such module: try the next shorter prefix
            _warn_broken(module_name, exc)  # it exists, but something it imports does not
            return None
        except Exception as exc:  # the module exists but fails to import
            _warn_broken(module_name, exc)
            return None
        return _tasks.get(name)
    return None


def _is_this_or_a_parent(missing: str | None, module_name: str) -> bool:
    return missing is not None and (missing == module_name or module_name.startswith(missing + "."))


def _warn_broken(module_name: str, exc: BaseException) -> None:
    logger.warning("Module %s could not be imported to find a task: %r", module_name, exc)


def module_is_here(name: str) -> bool:
    """Whether the module ``name`` points into is one of this process's: a task of it is
    registered, or some prefix of the name is an importable module."""
    module = name.rpartition(".")[0]
    if any(other.rpartition(".")[0] == module for other in _tasks):
        return True
    parts = name.split(".")
    for split in range(len(parts) - 1, 0, -1):
        try:
            if importlib.util.find_spec(".".join(parts[:split])) is not None:
                return True
        except (ImportError, ValueError):
            continue
    return False


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
    """A registered name that is the same function moved to another module, or a likely
    typo of the function in the same module. Names that merely share a module are unrelated
    tasks and are not suggested."""
    module, _, function = name.rpartition(".")
    known = sorted(_tasks)
    moved = [other for other in known if other.rpartition(".")[2] == function]
    if moved:
        return moved[0]
    siblings = {
        other.rpartition(".")[2]: other for other in known if other.rpartition(".")[0] == module
    }
    close = difflib.get_close_matches(function, list(siblings), n=1, cutoff=0.8)
    return siblings[close[0]] if close else None


def all_tasks() -> dict[str, BackgroundTask]:
    return dict(_tasks)
