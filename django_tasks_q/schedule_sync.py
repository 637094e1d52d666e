"""Declared schedules written to the Schedule table. Beat runs :func:`sync` when it starts.

Rows the sync creates are marked as owned by code, their code-owned fields follow the
declarations, and rows owned by code that are no longer declared are deleted. Whether a
schedule is enabled stays the operator's choice after the row exists.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from django.core.exceptions import ValidationError
from django.db import transaction
from django.db.models import Q

from django_tasks_q import queue
from django_tasks_q.conf import settings as conf
from django_tasks_q.declarations import declared
from django_tasks_q.models import Schedule, ScheduleSource

logger = logging.getLogger("django_tasks_q.beat")


@dataclass
class SyncResult:
    created: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)
    # Declarations left out of the table, with why.
    invalid: dict[str, str] = field(default_factory=dict)


def sync(using: str | None = None) -> SyncResult:
    """Make the table match the declarations in code. Beat calls it when it starts."""
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
