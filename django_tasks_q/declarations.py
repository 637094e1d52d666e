"""Schedules declared in code, and their sync into the Schedule table.

Two ways to declare one: ``@background_task(schedule=...)`` on the task, and entries of
``TASKS_Q["SCHEDULES"]``. Beat syncs them when it starts: rows it creates are marked as owned
by code, their code-owned fields follow the declarations, and rows owned by code that are no
longer declared are deleted. Whether a schedule is enabled stays the operator's choice after
the row exists.
"""

from __future__ import annotations

import difflib
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings as django_settings
from django.core.exceptions import ValidationError
from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from django_tasks_q import queue, registry
from django_tasks_q.conf import SETTING_NAME
from django_tasks_q.conf import settings as conf
from django_tasks_q.schedules import ScheduleError, check_cron, check_interval, get_zone

logger = logging.getLogger("django_tasks_q.beat")

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


@dataclass
class SyncResult:
    created: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)
    # Declarations left out of the table, with why.
    invalid: dict[str, str] = field(default_factory=dict)


def sync(using: str | None = None) -> SyncResult:
    """Make the table match the declarations in code. Beat calls it when it starts."""
    from django_tasks_q.models import Schedule, ScheduleSource

    using = using or conf.DATABASE
    found = declared()
    result = SyncResult(invalid=dict(found.problems))
    for problem in found.problems.values():
        logger.error("Schedule declaration skipped: %s", problem)
    declarations = found.valid
    names = [fields["name"] for fields in declarations]
    with transaction.atomic(using=using):
        queue.lock_schedule_sync(using)
        rows = {
            row.name: row
            for row in Schedule.objects.using(using)
            .select_for_update()
            .filter(Q(source=ScheduleSource.CODE) | Q(name__in=names))
        }
        # Rows of declarations that cannot be read stay as they are until the code is fixed.
        seen: set[str] = set(found.names_of_problems)
        for fields in declarations:
            name = fields["name"]
            if name in seen:
                result.invalid[name] = f"Two schedules in code are named {name!r}."
                logger.error("Schedule %r is declared twice in code; the first one wins", name)
                continue
            seen.add(name)
            _sync_one(rows.get(name), fields, using, result)
        for name, row in rows.items():
            if row.source == ScheduleSource.CODE and name not in seen:
                row.delete(using=using)
                result.deleted.append(name)
                logger.info("Schedule %r is no longer declared in code: deleted", name)
    return result


def _sync_one(row: Any, fields: dict[str, Any], using: str, result: SyncResult) -> None:
    from django_tasks_q.models import Schedule, ScheduleSource

    name = fields["name"]
    code_fields = {key: fields[key] for key in Schedule.CODE_FIELDS}
    if row is None:
        row = Schedule(name=name, source=ScheduleSource.CODE, enabled=fields["enabled"])
        created = True
    else:
        unchanged = all(getattr(row, key) == value for key, value in code_fields.items())
        if unchanged and row.source == ScheduleSource.CODE:
            return
        if row.source != ScheduleSource.CODE:
            logger.warning(
                "Schedule %r was created in the admin and is now declared in code: code owns it",
                name,
            )
            row.source = ScheduleSource.CODE
        created = False
    for key, value in code_fields.items():
        setattr(row, key, value)
    try:
        row.full_clean()
    except ValidationError as exc:
        problem = "; ".join(exc.messages)
        result.invalid[name] = problem
        logger.error("Schedule %r declared in code is invalid, table unchanged: %s", name, problem)
        return
    row.save(using=using)
    (result.created if created else result.updated).append(name)
    logger.info("Schedule %r %s from code", name, "created" if created else "updated")
