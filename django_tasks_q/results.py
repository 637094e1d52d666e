"""The handle a caller gets back: a ``django.tasks.TaskResult`` that knows our extra state."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from datetime import datetime
from typing import Any

from asgiref.sync import sync_to_async

from django_tasks_q import queue
from django_tasks_q.canvas import WorkflowHandle
from django_tasks_q.compat import Task, TaskError, TaskResult
from django_tasks_q.exceptions import TaskTimeoutError
from django_tasks_q.models import FINISHED_STATUSES, Cancellation, Dependency, TaskStatus
from django_tasks_q.polling import poll_until


@dataclass(frozen=True, slots=True, kw_only=True)
class TaskFailure(TaskError):
    """One failed attempt: Django's ``TaskError`` plus the message and where it happened."""

    message: str = ""
    attempt: int = 0
    worker_id: str = ""
    failed_at: datetime | None = None

    @property
    def type(self) -> str:
        return self.exception_class_path

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> TaskFailure:
        return cls(
            exception_class_path=data.get("type", ""),
            traceback=data.get("traceback", ""),
            message=data.get("message", ""),
            attempt=data.get("attempt", 0),
            worker_id=data.get("worker_id", ""),
            failed_at=_parse_timestamp(data.get("at")),
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class TaskHandle(TaskResult):
    """State of one enqueued task. Call :meth:`refresh` or :meth:`wait` to see progress."""

    attempt_count: int = 0
    max_attempts: int = 1
    # Attempts lost to the infrastructure (a worker killed, the database gone): they ran again
    # without spending the task's retries, and count in attempt_count and max_attempts.
    lost_attempts: int = 0
    run_after: datetime | None = None
    queue: str = ""
    priority: int = 0
    # The workflow this task is a step of (docs/workflows.md), if any.
    workflow_id: str | None = None
    _result_json: Any = field(default=None, repr=False)

    def __post_init__(self) -> None:
        # Arguments and results were checked as strict JSON on the way in; skip Django's
        # normalisation pass.
        object.__setattr__(self, "_return_value", self._result_json)

    @classmethod
    def build(
        cls,
        task: Task,
        *,
        backend: str,
        id: int | str,
        status: TaskStatus,
        args: list,
        kwargs: dict,
        stored_errors: Sequence[dict[str, Any]] = (),
        holder: str = "",
        attempt_count: int = 0,
        max_attempts: int = 1,
        lost_attempts: int = 0,
        enqueued_at: datetime | None = None,
        started_at: datetime | None = None,
        finished_at: datetime | None = None,
        last_attempted_at: datetime | None = None,
        run_after: datetime | None = None,
        queue: str | None = None,
        priority: int | None = None,
        result_json: Any = None,
        workflow_id: str | None = None,
    ) -> TaskHandle:
        """The handle of a task in a given state: every handle is made here.

        ``stored_errors`` are the row's error entries; ``holder`` the worker id holding the
        current attempt. ``queue`` and ``priority`` default to the task's."""
        errors = [TaskFailure.from_json(error) for error in stored_errors]
        return cls(
            task=task,
            id=str(id),
            status=status,
            enqueued_at=enqueued_at,
            started_at=started_at,
            finished_at=finished_at,
            last_attempted_at=last_attempted_at,
            args=args,
            kwargs=kwargs,
            backend=backend,
            errors=errors,
            worker_ids=worker_ids(errors, holder, attempt_count),
            attempt_count=attempt_count,
            max_attempts=max_attempts,
            lost_attempts=lost_attempts,
            run_after=run_after,
            queue=task.queue_name if queue is None else queue,
            priority=task.priority if priority is None else priority,
            workflow_id=workflow_id,
            _result_json=result_json,
        )

    @property
    def attempts(self) -> int:
        """Attempts started so far (Django counts worker ids; we count claims)."""
        return self.attempt_count

    @property
    def is_finished(self) -> bool:
        return self.status in FINISHED_STATUSES

    @property
    def return_value(self) -> Any:
        """The return value; raises ``ValueError`` unless the task succeeded (Django's contract)."""
        if self.status == TaskStatus.CANCELLED:
            raise ValueError("Task was cancelled")
        return TaskResult.return_value.__get__(self)

    @property
    def result(self) -> Any:
        """The return value if the task succeeded, else ``None`` (see :attr:`error`)."""
        return self._return_value if self.status == TaskStatus.SUCCESSFUL else None

    @property
    def error(self) -> TaskFailure | None:
        """The latest failed attempt's error, or ``None``."""
        return self.errors[-1] if self.errors else None

    @property
    def name(self) -> str:
        return self.task.name

    @property
    def workflow(self) -> WorkflowHandle | None:
        """The handle of the workflow this task is a step of, or None."""
        if self.workflow_id is None:
            return None
        return WorkflowHandle.load(self.workflow_id, backend=self.backend)

    def dependencies(self) -> list[TaskHandle]:
        """Handles of the tasks this one depends on (its parents), in order."""
        return self._related("dependencies", "depends_on")

    def dependents(self) -> list[TaskHandle]:
        """Handles of the tasks that depend on this one (its children)."""
        return self._related("dependents", "task")

    def _related(self, edges: str, other: str) -> list[TaskHandle]:
        backend = self.task.get_backend()
        related = (
            Dependency.objects.using(backend.database)
            .filter(**{"depends_on_id" if edges == "dependents" else "task_id": int(self.id)})
            .select_related(other)
            .order_by("position", f"{other}_id")
        )
        return [backend.handle_from_row(getattr(edge, other)) for edge in related]

    def refresh(self) -> None:
        """Reload the state from the database."""
        fresh = self.task.get_backend().get_result(self.id)
        for item in fields(self):
            if item.name not in ("task", "args", "kwargs", "backend"):
                object.__setattr__(self, item.name, getattr(fresh, item.name))

    async def arefresh(self) -> None:
        """Reload the state from the database (async)."""
        await sync_to_async(self.refresh, thread_sensitive=True)()

    def wait(self, timeout: float | None = None, *, poll_interval: float = 0.05) -> TaskHandle:
        """Block until the task is finished (or ``timeout`` seconds pass) and return ``self``.

        Raises :class:`~django_tasks_q.exceptions.TaskTimeoutError` on timeout, and
        :class:`~django_tasks_q.exceptions.WaitInsideTransaction` at once if the task is
        unfinished and was enqueued in the transaction still open here.
        """
        self.refresh()
        if self.is_finished:
            return self
        database = self.task.get_backend().database
        queue.refuse_wait_inside_transaction(
            [int(self.id)], f"Task {self.task.name} #{self.id}", using=database
        )

        def finished() -> bool:
            self.refresh()
            return self.is_finished

        if not poll_until(finished, timeout, poll_interval):
            raise TaskTimeoutError(
                f"Task {self.task.name} #{self.id} is still {self.status} after waiting "
                f"{timeout}s. Is a worker running for queue {self.queue!r}? "
                "(python manage.py runtaskworker)"
            )
        return self

    def cancel(self, *, terminate: bool = False) -> Cancellation:
        """Cancel the task if it has not started, or ask it to stop if it runs; with
        ``terminate``, a process-pool worker kills it if it does not stop by itself.

        Returns what happened: ``Cancellation.CANCELLED`` (it had not started and never
        will), ``Cancellation.STOP_REQUESTED`` (a worker holds it: it is stopped before it
        starts, or sees ``context.is_cancelled()`` while it runs) or
        ``Cancellation.ALREADY_FINISHED`` (falsy: nothing changed)."""
        cancelled = self.task.get_backend().cancel(self.id, terminate=terminate)
        self.refresh()
        return cancelled


def _parse_timestamp(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value) if value else None


def worker_ids(errors: list[TaskFailure], holder: str, attempts: int) -> list[str]:
    """Django's per-attempt worker ids: who ran each failed attempt, then the current holder
    if its attempt has no error (yet)."""
    ids = [error.worker_id for error in errors]
    if holder and attempts > len(errors):
        ids.append(holder)
    return ids
