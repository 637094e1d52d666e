"""Exceptions raised by django_tasks_q. Django's own task exceptions are re-used where they fit."""

from __future__ import annotations

from django_tasks_q.compat import InvalidTask, TaskResultDoesNotExist

__all__ = [
    "InvalidTask",
    "LimitError",
    "OutcomeNotStored",
    "ProcessDied",
    "Retry",
    "SoftTimeLimitExceeded",
    "TaskCancelled",
    "TaskExpired",
    "TaskResultDoesNotExist",
    "TaskTimeoutError",
    "TimeLimitExceeded",
    "UnknownTaskError",
    "WorkerLost",
]


class UnknownTaskError(InvalidTask, LookupError):
    """No task is registered under the given name."""


class LimitError(InvalidTask):
    """A task's ``limit_by`` failed, or gave no usable key, for the arguments of one call;
    nothing was enqueued (docs/flow-control.md)."""


class TaskTimeoutError(TimeoutError):
    """``TaskHandle.wait()`` gave up before the task finished."""


class WaitInsideTransaction(RuntimeError):
    """``wait()`` was called inside the transaction that enqueued the task: no worker can
    see the task before that transaction commits, so the wait could never end."""


class Retry(Exception):
    """Raised by ``context.retry()`` to ask the worker to run the task again.

    ``countdown`` (seconds) chooses when (default: the task's retry policy); ``exc`` is the
    error to record for this attempt and to fail with once retries are exhausted;
    ``max_retries`` overrides the task's limit for this decision.
    """

    def __init__(
        self,
        *,
        countdown: float | None = None,
        exc: BaseException | None = None,
        max_retries: int | None = None,
    ) -> None:
        self.countdown = countdown
        self.exc = exc
        self.max_retries = max_retries
        super().__init__(
            f"retry requested (countdown={countdown!r})" + (f": {exc!r}" if exc else "")
        )


class MaxRetriesExceededError(Exception):
    """``context.retry()`` was called on the last allowed attempt without an ``exc``."""


class TaskCancelled(Exception):
    """Raised by ``context.raise_if_cancelled()``: someone cancelled the running task."""


class DependencyNotMet(Exception):
    """Recorded on a workflow step cancelled without running: a task it depends on did not
    succeed (the entry's ``dependency`` names it), or, for an error callback, none failed.
    Written by the database's dependency trigger; never raised inside a task."""


class TaskExpired(Exception):
    """Recorded on a task cancelled because no attempt had started by its ``expires_at``
    (set by a schedule's ``expires_after``). Never raised inside a task."""


class TimeLimitExceeded(Exception):
    """A task ran longer than its ``timeout`` and the process running it was killed."""


class WorkerLost(Exception):
    """An attempt was lost through no fault of the task: its worker died, froze past its
    lease or was restarted, its process was killed from outside, or the database went away
    under it. The task runs again, up to ``max_lost_attempts`` lost attempts."""


class OutcomeNotStored(Exception):
    """Recorded in place of an outcome the database refused to store (the attempt's result or
    error); never raised inside a task."""


class ProcessDied(Exception):
    """The process-pool child running a task exited or crashed by the task's doing (an exit
    status, or a signal such as SIGSEGV it raised itself). A failure like an exception: the
    task's retry policy applies."""


class SoftTimeLimitExceeded(Exception):
    """Raised inside a task when its ``soft_timeout`` runs out (process pool only): catch it
    to clean up before the hard ``timeout`` kills the process."""

    def __init__(self, message: str = "The task ran past its soft time limit.") -> None:
        super().__init__(message)
