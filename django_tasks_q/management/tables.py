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
    """The database's "no such table / column" error that ``exc`` is, or that Django wrapped
    in it (the ORM raises its own error from psycopg's; the worker's statements raise
    psycopg's)."""
    for error in (exc, exc.__cause__):
        if isinstance(error, (psycopg.errors.UndefinedTable, psycopg.errors.UndefinedColumn)):
            return error
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
