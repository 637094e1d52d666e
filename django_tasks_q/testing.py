"""Test helpers for projects that enqueue tasks (docs/testing.md).

In an ordinary ``TestCase`` (or a pytest-django test with ``db``), enqueued tasks are rows
written in the test's transaction. :class:`TaskQueue` reads them, asserts on them, and runs
them here, in the test's thread and transaction, with the worker's own code: retries,
failures, workflows and limits behave as in production, and everything is rolled back with
the test.

- pytest: ``pytest_plugins = ["django_tasks_q.testing"]`` in ``conftest.py``, then the
  ``task_queue`` fixture.
- unittest: ``class MyTests(TaskQueueMixin, TestCase)``, then ``self.task_queue`` and
  ``self.assertEnqueued(...)``.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping, Sequence
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from django.db import connections, transaction
from django.db.models.expressions import RawSQL
from psycopg.pq import TransactionStatus

from django_tasks_q.backend import PostgresBackend, resolve_backend
from django_tasks_q.compat import DEFAULT_TASK_BACKEND_ALIAS, InvalidTask
from django_tasks_q.models import Task
from django_tasks_q.queue import QueueConnection
from django_tasks_q.stats import database_now
from django_tasks_q.worker.runner import Runner, as_declared

if TYPE_CHECKING:
    from django_tasks_q.results import TaskHandle

# The statement-end check of migration 0007: a test's transaction never commits, so run()
# makes it fire at once.
DEPENDENCY_CHECK = "django_tasks_q_dependency_added"
WORKER_ID = "testing"
DEFAULT_RUN_LIMIT = 1000
_UNSET: Any = object()


class TaskQueue:
    """The tasks enqueued through one backend's database, for tests."""

    def __init__(self, backend: str = DEFAULT_TASK_BACKEND_ALIAS) -> None:
        found = resolve_backend(backend)
        if not isinstance(found, PostgresBackend):
            kind = f"{type(found).__module__}.{type(found).__name__}"
            raise InvalidTask(
                f"TaskQueue reads tasks the PostgreSQL backend stored, but TASKS[{backend!r}] "
                f"uses {kind}, which keeps none. Configure "
                "'django_tasks_q.backend.PostgresBackend' for your tests."
            )
        self.backend = found
        self.using = found.database
        self.worker_id = f"{WORKER_ID}-{os.getpid()}"

    # -- what was enqueued ------------------------------------------------------------------

    def enqueued(
        self, task: Any = None, *, queue: str | None = None, status: str | None = None
    ) -> list[TaskHandle]:
        """Handles of the enqueued tasks, in order: of ``task`` (a task object or its name),
        of ``queue``, with ``status``; every task when none is given."""
        rows = Task.objects.using(self.using).order_by("id")
        if task is not None:
            rows = rows.filter(name=task_name(task))
        if queue is not None:
            rows = rows.filter(queue=queue)
        if status is not None:
            rows = rows.filter(status=status)
        return [self.backend.handle_from_row(row) for row in rows]

    def assert_enqueued(
        self,
        task: Any,
        *,
        args: Sequence[Any] = _UNSET,
        kwargs: Mapping[str, Any] = _UNSET,
        queue: str | None = None,
        count: int | None = None,
    ) -> list[TaskHandle]:
        """Assert that ``task`` was enqueued: with these ``args`` / ``kwargs`` / ``queue``
        where given, ``count`` times where given (else at least once). Returns the matches."""
        found = self._matching(task, args, kwargs, queue)
        if (count is None and not found) or (count is not None and len(found) != count):
            wanted = "at least once" if count is None else f"{count} time(s)"
            raise AssertionError(
                f"Expected {task_name(task)} enqueued {wanted}{_described(args, kwargs, queue)}; "
                f"found {len(found)}. {self._what_was_enqueued(task)}"
            )
        return found

    def assert_not_enqueued(
        self,
        task: Any = None,
        *,
        args: Sequence[Any] = _UNSET,
        kwargs: Mapping[str, Any] = _UNSET,
        queue: str | None = None,
    ) -> None:
        """Assert that no such task was enqueued (no task at all, without ``task``)."""
        found = (
            self._matching(task, args, kwargs, queue)
            if task is not None
            else self.enqueued(queue=queue)
        )
        if found:
            what = task_name(task) if task is not None else "no task"
            raise AssertionError(
                f"Expected {what if task is None else what + ' not'} enqueued"
                f"{_described(args, kwargs, queue)}; found {len(found)}: "
                + ", ".join(_short(handle) for handle in found[:10])
            )

    # -- running them -----------------------------------------------------------------------

    def run(
        self, *, until: datetime | timedelta | None = None, limit: int = DEFAULT_RUN_LIMIT
    ) -> list[TaskHandle]:
        """Run the tasks that are due, here, one at a time in claim order, until none is due:
        those they enqueue, their retries and the workflow steps they release too. Returns the
        handles of the tasks that ran, in the order they first ran, read after the last one.

        ``until`` (a datetime, or a timedelta from now) runs what is due by then as well:
        those tasks are made due now first (their ``run_after`` changes). Raises
        AssertionError if more than ``limit`` attempts run: a task that enqueues itself
        for ever, say.
        """
        connection = connections[self.using]
        in_transaction = connection.in_atomic_block
        if in_transaction:
            with connection.cursor() as cursor:
                cursor.execute(f"SET CONSTRAINTS {DEPENDENCY_CHECK} IMMEDIATE")
        queue_connection = QueueConnection.in_djangos_transaction(self.using)
        runner = Runner(worker_id=self.worker_id, backend=self.backend)
        ran: list[int] = []
        try:
            while True:
                if until is not None:
                    self._bring_forward(until)
                picked = queue_connection.finish_and_claim(
                    worker_id=self.worker_id,
                    limit=1,
                    paused=queue_connection.paused(),
                )
                if not any(picked[1:]):  # nothing claimed, cancelled or held back
                    break
                for claimed in picked.claimed:
                    if len(ran) >= limit:
                        raise AssertionError(
                            f"More than {limit} task attempts ran; does a task enqueue itself "
                            "for ever? Pass a higher limit= if that many are expected."
                        )
                    outcome = self._run_one(runner, as_declared(claimed), in_transaction)
                    queue_connection.finish(worker_id=self.worker_id, outcomes=[outcome])
                    ran.append(claimed.id)
        finally:
            if in_transaction:
                with connection.cursor() as cursor:
                    cursor.execute(f"SET CONSTRAINTS {DEPENDENCY_CHECK} DEFERRED")
        return [self.backend.get_result(task_id) for task_id in dict.fromkeys(ran)]

    def _run_one(self, runner: Runner, claimed: Any, in_transaction: bool) -> Any:
        """One attempt, in a savepoint when inside a transaction: a task whose query failed
        leaves the test's transaction usable, as a worker's own connection would be."""
        if not in_transaction:
            return runner.run(claimed)
        outcome = None
        try:
            with transaction.atomic(using=self.using):
                outcome = runner.run(claimed)
                raw = connections[self.using].connection
                if raw is not None and raw.info.transaction_status == TransactionStatus.INERROR:
                    raise _QueryFailed  # back to the savepoint, as the atomic block does
        except _QueryFailed:
            pass
        return outcome

    def _bring_forward(self, until: datetime | timedelta) -> None:
        """Make due now what is due by ``until``. The database's now(): inside a test's
        transaction it is when the transaction began, and claims compare with it."""
        now = database_now(self.using)
        moment = now + until if isinstance(until, timedelta) else until
        # now(), not Django's Now(): on PostgreSQL that is the statement's time, later than
        # the transaction's, and claims compare with the transaction's.
        Task.objects.using(self.using).filter(
            status="READY", run_after__gt=now, run_after__lte=moment
        ).update(run_after=RawSQL("now()", ()))

    # -- helpers ----------------------------------------------------------------------------

    def _matching(self, task: Any, args: Any, kwargs: Any, queue: str | None) -> list[TaskHandle]:
        return [
            handle
            for handle in self.enqueued(task, queue=queue)
            if (args is _UNSET or list(handle.args) == list(args))
            and (kwargs is _UNSET or dict(handle.kwargs) == dict(kwargs))
        ]

    def _what_was_enqueued(self, task: Any) -> str:
        of_task = self.enqueued(task)
        if of_task:
            return "Enqueued: " + ", ".join(_short(handle) for handle in of_task[:10])
        names = sorted({handle.task.name for handle in self.enqueued()})
        return f"Tasks enqueued: {', '.join(names)}." if names else "Nothing was enqueued."


class _QueryFailed(Exception):
    """A task's query failed, and its transaction with it."""


def task_name(task: Any) -> str:
    """The name rows of ``task`` carry: its registered name, or the name given as text."""
    return task if isinstance(task, str) else task.name


def _described(args: Any, kwargs: Any, queue: str | None) -> str:
    parts = []
    if args is not _UNSET:
        parts.append(f"args={list(args)!r}")
    if kwargs is not _UNSET:
        parts.append(f"kwargs={dict(kwargs)!r}")
    if queue is not None:
        parts.append(f"queue={queue!r}")
    return f" with {', '.join(parts)}" if parts else ""


def _short(handle: TaskHandle) -> str:
    return (
        f"#{handle.id} args={list(handle.args)!r} kwargs={dict(handle.kwargs)!r} "
        f"queue={handle.queue!r} {handle.status}"
    )


class TaskQueueMixin:
    """For ``TestCase`` classes: ``self.task_queue`` and assertion methods."""

    task_queue_backend = DEFAULT_TASK_BACKEND_ALIAS

    def setUp(self) -> None:
        super().setUp()  # type: ignore[misc]
        self.task_queue = TaskQueue(self.task_queue_backend)

    def assertEnqueued(self, task: Any, **options: Any) -> list[TaskHandle]:
        return self.task_queue.assert_enqueued(task, **options)

    def assertNotEnqueued(self, task: Any = None, **options: Any) -> None:
        self.task_queue.assert_not_enqueued(task, **options)

    def run_enqueued(self, **options: Any) -> list[TaskHandle]:
        return self.task_queue.run(**options)


try:
    import pytest
except ImportError:  # pragma: no cover - pytest is optional
    pytest = None

if pytest is not None:

    @pytest.fixture
    def task_queue(db: None) -> Iterator[TaskQueue]:
        """The tasks the test enqueued: assert on them, run them (django_tasks_q.testing)."""
        yield TaskQueue()
