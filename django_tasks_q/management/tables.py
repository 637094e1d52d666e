"""The one error every command gives when the database lacks the queue's tables or columns:
say to migrate, with no traceback."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import psycopg
from django.core.management.base import CommandError

MIGRATE_HINT = (
    "the django_tasks_q tables are missing or out of date. Run `python manage.py migrate`."
)


def missing_schema(exc: BaseException) -> psycopg.Error | None:
    """The database's "no such table / column" error behind ``exc`` (Django wraps psycopg's),
    if that is what it is."""
    seen: set[int] = set()
    cause: BaseException | None = exc
    while cause is not None and id(cause) not in seen:
        seen.add(id(cause))
        if isinstance(cause, (psycopg.errors.UndefinedTable, psycopg.errors.UndefinedColumn)):
            return cause
        cause = cause.__cause__
    return None


@contextlib.contextmanager
def tables_required() -> Iterator[None]:
    """Turn a missing table or column of the queue into a CommandError that says to migrate."""
    try:
        yield
    except Exception as exc:
        missing = missing_schema(exc)
        if missing is None:
            raise
        raise CommandError(f"{missing.diag.message_primary}: {MIGRATE_HINT}") from exc
