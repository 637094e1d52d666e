"""Schedules declared in code, read and checked.

Two ways to declare one: ``@background_task(schedule=...)`` on the task, and entries of
``TASKS_Q["SCHEDULES"]``. This module only reads them (it sits below the models, so a task can
check its ``schedule=`` at import); :mod:`django_tasks_q.schedule_sync` writes them to the
Schedule table when beat starts.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings as django_settings
from django.utils import timezone

from django_tasks_q import registry
from django_tasks_q.conf import SETTING_NAME
from django_tasks_q.schedules import ScheduleError, check_cron, check_interval, get_zone

KEYS = ("name", "task", "cron", "interval", "run_at", "timezone", "args", "kwargs", "queue",
        "priority", "expires_after", "catch_up", "enabled")  # fmt: skip
DEFAULTS: dict[str, Any] = {
    "cron": "",
    "interval": None,
    "run_at": None,
    "timezone": "UTC",
    "args": [],
    "kwargs": {},
    "queue": "",
    "priority": None,
    "expires_after": None,
    "catch_up": "skip",
    "enabled": True,
}


class DeclarationError(ValueError):
    """A declared schedule is malformed; the message names it and the fix."""


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _duration(value: Any, key: str, where: str) -> timedelta | None:
    if value is None:
        return None
    if isinstance(value, timedelta):
        return value
    if _is_number(value):
        return timedelta(seconds=value)
    raise DeclarationError(
        f"{where}: {key!r} must be a timedelta or a number of seconds, got {value!r}."
    )


def normalize(entry: Any, where: str) -> dict[str, Any]:
    """Schedule field values for one declaration (defaults filled in), or DeclarationError.

    Only the shape is checked here; :meth:`Schedule.clean` checks the values.
    """
    if not isinstance(entry, Mapping):
        raise DeclarationError(
            f"{where} must be a dict such as {{'name': 'nightly', 'task': 'app.tasks.report', "
            f"'cron': '0 3 * * *'}}, got {type(entry).__name__}."
        )
    for key in entry:
        if key not in KEYS:
            close = difflib.get_close_matches(str(key), KEYS, n=1)
            hint = f"did you mean {close[0]!r}?" if close else f"valid keys: {', '.join(KEYS)}."
            raise DeclarationError(f"{where} has an unknown key {key!r}; {hint}")
    for key in ("name", "task"):
        if not isinstance(entry.get(key), str) or not entry[key].strip():
            raise DeclarationError(f"{where} needs a {key!r}: a non-empty string.")
    fields = {**DEFAULTS, **entry}
    fields["interval"] = _duration(fields["interval"], "interval", where)
    fields["expires_after"] = _duration(fields["expires_after"], "expires_after", where)
    if fields["run_at"] is not None and not isinstance(fields["run_at"], datetime):
        raise DeclarationError(f"{where}: 'run_at' must be a datetime, got {fields['run_at']!r}.")
    if fields["run_at"] is not None and timezone.is_naive(fields["run_at"]):
        raise DeclarationError(
            f"{where}: 'run_at' {fields['run_at'].isoformat()} is naive; pass an aware "
            "datetime, e.g. datetime(2030, 1, 1, 9, 0, tzinfo=ZoneInfo('Europe/Paris'))."
        )
    for key, kind in (("cron", str), ("timezone", str), ("queue", str), ("catch_up", str)):
        if not isinstance(fields[key], kind):
            raise DeclarationError(f"{where}: {key!r} must be a string, got {fields[key]!r}.")
    if not isinstance(fields["enabled"], bool):
        raise DeclarationError(f"{where}: 'enabled' must be True or False.")
    if isinstance(fields["args"], tuple):
        fields["args"] = list(fields["args"])
    fields["cron"] = " ".join(fields["cron"].split())
    return fields


def from_decorator(value: Any, task_name: str) -> dict[str, Any]:
    """The declaration made by ``@background_task(schedule=value)``, named after the task.

    ``value``: a cron expression, an interval (a timedelta or a number of seconds), a one-off
    aware datetime, or a dict of the keys a ``TASKS_Q["SCHEDULES"]`` entry takes, but "task".
    Raises DeclarationError, checking the timing too: a mistake fails at import.
    """
    where = f"@background_task(schedule=...) of {task_name}"
    if isinstance(value, str):
        entry: dict[str, Any] = {"cron": value}
    elif isinstance(value, timedelta) or _is_number(value):
        entry = {"interval": value}
    elif isinstance(value, datetime):
        entry = {"run_at": value}
    elif isinstance(value, Mapping):
        if "task" in value:
            raise DeclarationError(f"{where}: leave out 'task'; it is this task.")
        entry = dict(value)
    else:
        raise DeclarationError(
            f"{where} must be a cron expression, a timedelta, a number of seconds, a datetime "
            f"or a dict, got {value!r}."
        )
    fields = normalize({"name": task_name, **entry, "task": task_name}, where)
    try:
        if fields["cron"]:
            check_cron(fields["cron"])
        if fields["interval"] is not None:
            check_interval(fields["interval"])
        get_zone(fields["timezone"])
    except ScheduleError as exc:
        raise DeclarationError(f"{where}: {exc}") from None
    return fields


@dataclass(frozen=True)
class Entry:
    where: str
    value: Any
    task_name: str | None = None  # set for a decorator's schedule=

    def read(self) -> dict[str, Any]:
        if self.task_name is not None:
            return from_decorator(self.value, self.task_name)
        return normalize(self.value, self.where)

    def declared_name(self) -> str | None:
        """The name this declaration gives, if it can be told even when it is malformed."""
        if isinstance(self.value, Mapping) and isinstance(self.value.get("name"), str):
            return self.value["name"]
        return self.task_name


def declared_entries() -> list[Entry]:
    """Every schedule declared in code, decorators first, in a stable order."""
    entries = [
        Entry(f"@background_task(schedule=...) of {name}", task.schedule, name)
        for name, task in sorted(registry.all_tasks().items())
        if task.schedule is not None
    ]
    value = getattr(django_settings, SETTING_NAME, {})
    listed = value.get("SCHEDULES", ()) if isinstance(value, dict) else ()
    if isinstance(listed, (list, tuple)):
        entries += [
            Entry(f"{SETTING_NAME}['SCHEDULES'][{index}]", entry)
            for index, entry in enumerate(listed)
        ]
    return entries


@dataclass
class Declarations:
    valid: list[dict[str, Any]]
    # where -> what is wrong, for declarations that could not be read.
    problems: dict[str, str]
    # Names those unreadable declarations give, as far as they can be told: their rows stay.
    names_of_problems: set[str]


def declared() -> Declarations:
    """The readable declarations as field values, and the problems of the others."""
    found = Declarations([], {}, set())
    for entry in declared_entries():
        try:
            found.valid.append(entry.read())
        except DeclarationError as exc:
            found.problems[entry.where] = str(exc)
            name = entry.declared_name()
            if name:
                found.names_of_problems.add(name)
    return found
