"""Run one claimed task and describe how it ended. Knows tasks and signals, not SQL."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import threading
import time
from collections.abc import Callable
from inspect import iscoroutinefunction
from typing import Any

import psycopg
from asgiref.sync import sync_to_async
from django.db import connections
from django.dispatch import Signal

from django_tasks_q import registry, tracing
from django_tasks_q.backend import PostgresBackend
from django_tasks_q.backoff import describe_database_error
from django_tasks_q.conf import settings as conf
from django_tasks_q.errors import NOT_STARTED_CANCELLED, error_entry
from django_tasks_q.exceptions import (
    Retry,
    SoftTimeLimitExceeded,
    TaskCancelled,
    UnknownTaskError,
    WorkerLost,
)
from django_tasks_q.models import TaskStatus
from django_tasks_q.queue import ClaimedTask, Outcome
from django_tasks_q.results import TaskFailure, TaskHandle
from django_tasks_q.retry import Decision, after_error, after_lost
from django_tasks_q.serialization import result_to_json
from django_tasks_q.signals import task_finished, task_retried, task_started
from django_tasks_q.tasks import BackgroundTask, BackgroundTaskContext

logger = logging.getLogger("django_tasks_q.worker")


def as_declared(claimed: ClaimedTask) -> ClaimedTask:
    """``claimed`` with its task's declared attempts and time limit where its row carries
    none: a task enqueued by name from a process that does not have it (send_task) has
    max_attempts 0 (the outcome records the real number) and no timeout."""
    if claimed.max_attempts and claimed.timeout is not None:
        return claimed
    task = registry.find(claimed.name)
    if task is None:
        return claimed
    max_attempts = claimed.max_attempts or getattr(task, "max_attempts", 1)
    timeout = claimed.timeout if claimed.timeout is not None else getattr(task, "timeout", None)
    if (max_attempts, timeout) == (claimed.max_attempts, claimed.timeout):
        return claimed
    return dataclasses.replace(claimed, max_attempts=max_attempts, timeout=timeout)


class Runner:
    """Executes claimed tasks for one worker. Safe to share between executor threads.

    What becomes of each attempt is decided by :mod:`django_tasks_q.retry`; this class runs
    the task, sends the lifecycle signals and logs, and describes the outcome to record.
    """

    def __init__(
        self,
        *,
        worker_id: str,
        backend: PostgresBackend,
        is_cancel_requested: Callable[[int], bool] = lambda task_id: False,
    ) -> None:
        self.worker_id = worker_id
        self.backend = backend
        self.is_cancel_requested = is_cancel_requested
        self._quiet_until = 0.0  # no "not started" log line before this (time.monotonic())

    def handle_for(
        self, task: BackgroundTask, claimed: ClaimedTask, holder: str | None = None
    ) -> TaskHandle:
        return TaskHandle.build(
            task,
            backend=self.backend.alias,
            id=claimed.id,
            status=TaskStatus.RUNNING,
            args=claimed.args,
            kwargs=claimed.kwargs,
            stored_errors=claimed.errors,
            holder=holder or self.worker_id,
            attempt_count=claimed.attempt,
            max_attempts=claimed.max_attempts,
            lost_attempts=claimed.lost_attempts,
            enqueued_at=claimed.enqueued_at,
            started_at=claimed.started_at,
            last_attempted_at=claimed.last_attempted_at,
            run_after=claimed.run_after,
            queue=claimed.queue,
            priority=claimed.priority,
        )

    def run(self, claimed: ClaimedTask) -> Outcome:
        """Run one attempt. Never raises: whatever the task does becomes its outcome."""
        with tracing.run_span(claimed) as span:
            try:
                outcome = self._run(claimed)
            except BaseException as exc:  # a bug of ours or a hostile exception: its failure
                outcome = self.crashed(claimed, exc)
            tracing.ended(span, outcome)
            return outcome

    def _run(self, claimed: ClaimedTask) -> Outcome:
        if self.is_cancel_requested(claimed.id):
            return self.ended_outside(claimed, TaskCancelled(NOT_STARTED_CANCELLED), 0.0)
        task = registry.find(claimed.name)
        if task is None:
            return self._unknown(claimed)
        if not self._database_reachable(claimed):
            return Outcome(id=claimed.id, attempt=claimed.attempt, status="READY", started=False)
        handle = self.handle_for(task, claimed)
        sender = type(self.backend)
        # DEBUG: at INFO, a second line per task costs a no-op task's worker about a third
        # of its CPU (docs/worker.md#logging); the outcome line below says it ran.
        logger.debug(
            "Task started %s #%s attempt %s/%s",
            claimed.name, claimed.id, claimed.attempt, claimed.max_attempts,
            extra=self._extra(claimed, "started"),
        )  # fmt: skip
        _send(task_started, sender, task_result=handle)
        began = time.perf_counter()
        try:
            if task.takes_context:
                context = BackgroundTaskContext(
                    task_result=handle,
                    cancel_check=lambda: self.is_cancel_requested(claimed.id),
                )
                value = call(task, (context, *claimed.args), claimed.kwargs)
            else:
                value = call(task, claimed.args, claimed.kwargs)
        except BaseException as exc:
            duration = time.perf_counter() - began
            lost = _database_went_away(exc)
            _discard_broken_connections()
            if lost:
                return self._lost(task, claimed, handle, exc, duration)
            # SystemExit / KeyboardInterrupt raised by task code end this attempt only: the
            # worker stays up and the failure is recorded like any other.
            return self._failure(task, claimed, handle, exc, duration)
        duration = time.perf_counter() - began
        if task.ignore_result:
            result_json, problem = None, None
        else:
            result_json, problem = result_to_json(value)
        if problem is not None:
            error = TypeError(f"{problem} (the task ran; its return value could not be stored)")
            return self._failure(task, claimed, handle, error, duration, retry=False)
        object.__setattr__(handle, "status", TaskStatus.SUCCESSFUL)
        object.__setattr__(handle, "_return_value", value if result_json is not None else None)
        logger.info(
            "Task succeeded %s #%s attempt %s/%s in %.3fs",
            claimed.name, claimed.id, claimed.attempt, claimed.max_attempts, duration,
            extra=self._extra(claimed, "succeeded", duration),
        )  # fmt: skip
        _send(task_finished, sender, task_result=handle)
        return Outcome(
            id=claimed.id,
            attempt=claimed.attempt,
            status=TaskStatus.SUCCESSFUL,
            result_json=result_json,
            max_attempts=claimed.max_attempts,
            duration=duration,
        )

    def ended_outside(self, claimed: ClaimedTask, exc: BaseException, duration: float) -> Outcome:
        """The outcome of an attempt that ended outside the task function, told by ``exc``:

        - ``WorkerLost``: lost through no fault of the task (its process was killed from
          outside, or because another task in it had to be stopped); it runs again.
        - ``TaskCancelled``: stopped on a cancellation (its process killed on
          ``cancel(terminate=True)``, or cancelled before it was started).
        - anything else: the task's own doing (killed at the time limit, its process exited
          or crashed); the task's retry policy applies.
        """
        status = TaskStatus.CANCELLED if isinstance(exc, TaskCancelled) else TaskStatus.FAILED
        task = registry.find(claimed.name)
        if task is None:
            return self._failed_for_good(claimed, exc, duration, status=status)
        handle = self.handle_for(task, claimed)
        if isinstance(exc, WorkerLost):
            return self._lost(task, claimed, handle, exc, duration)
        if isinstance(exc, TaskCancelled):
            return self._cancelled(claimed, handle, exc, duration)
        return self._failure(task, claimed, handle, exc, duration)

    def crashed(self, claimed: ClaimedTask, exc: BaseException) -> Outcome:
        """The last resort when describing an attempt failed: FAILED with what is known, and no
        signal (the error is logged). Never raises."""
        with contextlib.suppress(Exception):  # logging must not be what takes the worker down
            logger.error(
                "Task %s #%s: the worker could not describe how this attempt ended",
                claimed.name, claimed.id, exc_info=exc, extra=self._extra(claimed, "failed"),
            )  # fmt: skip
        return Outcome(
            id=claimed.id,
            attempt=claimed.attempt,
            status=TaskStatus.FAILED,
            error=error_entry(exc, attempt=claimed.attempt, worker_id=self.worker_id),
            max_attempts=claimed.max_attempts,
        )

    def announce(
        self, claimed: ClaimedTask, status: str, error: dict[str, Any], *, holder: str
    ) -> None:
        """Send the signals for an outcome decided outside this worker's runs: a lost attempt
        another worker recovered, or a task cancelled by the claim (expired, cancelled)."""
        task = registry.find(claimed.name)
        if task is None:
            return
        handle = self.handle_for(task, claimed, holder=holder)
        failure = TaskFailure.from_json(error)
        object.__setattr__(handle, "errors", [*handle.errors, failure])
        object.__setattr__(handle, "status", TaskStatus(status))
        sender = type(self.backend)
        if status == TaskStatus.READY:
            _send(task_retried, sender, task_result=handle, error=None, delay=0.0)
        else:
            _send(task_finished, sender, task_result=handle)

    def _database_reachable(self, claimed: ClaimedTask) -> bool:
        """Whether this thread has, or can open, a connection to the queue's database.

        Connections stay open between tasks, so this costs nothing but after a connection
        was dropped. When the server refuses (out of connections, restarting), the task does
        not start: it goes back to the queue without spending an attempt, rather than using up
        its lost attempts on a database that is not there for anyone."""
        from django.db import OperationalError

        connection = connections[self.backend.database]
        if connection.connection is not None:
            return True
        try:
            connection.ensure_connection()
        except (OperationalError, *_CONNECTION_ERRORS) as exc:
            now = time.monotonic()
            if now >= self._quiet_until:  # once per interval, not once per task
                self._quiet_until = now + UNREACHABLE_LOG_INTERVAL
                logger.error(
                    "Task %s #%s not started: no database connection (%s); it goes back to "
                    "the queue without spending an attempt",
                    claimed.name, claimed.id, describe_database_error(exc),
                )  # fmt: skip
            return False
        return True

    def _unknown(self, claimed: ClaimedTask) -> Outcome:
        """No task of this name here, and the worker did not give it back: it has waited its
        grace period for a worker that knows it. Never imports an arbitrary dotted path."""
        message = (
            f"No worker that knows task {claimed.name!r} took it within "
            f"TASKS_Q['UNKNOWN_TASK_GRACE'] ({conf.UNKNOWN_TASK_GRACE:g}s) of its enqueueing. "
            + registry.unknown_task_message(claimed.name)
        )
        logger.error(
            "Task %s #%s cannot run: %s", claimed.name, claimed.id, message,
            extra=self._extra(claimed, "failed"),
        )  # fmt: skip
        return self._failed_for_good(claimed, UnknownTaskError(message), 0.0)

    def _failed_for_good(
        self,
        claimed: ClaimedTask,
        exc: BaseException,
        duration: float,
        *,
        status: str = TaskStatus.FAILED,
    ) -> Outcome:
        """Ended without retries or signals: for a task whose name is not known here."""
        return Outcome(
            id=claimed.id,
            attempt=claimed.attempt,
            status=status,
            error=error_entry(exc, attempt=claimed.attempt, worker_id=self.worker_id),
            max_attempts=claimed.max_attempts,
            duration=duration,
        )

    def _failure(
        self,
        task: BackgroundTask,
        claimed: ClaimedTask,
        handle: TaskHandle,
        exc: BaseException,
        duration: float,
        *,
        retry: bool = True,
    ) -> Outcome:
        decision = after_error(
            task,
            exc,
            attempt=claimed.attempt,
            max_attempts=claimed.max_attempts,
            lost_attempts=claimed.lost_attempts,
            cancel_requested=self.is_cancel_requested(claimed.id),
            retry=retry,
        )
        if decision.status == TaskStatus.CANCELLED:
            return self._cancelled(claimed, handle, exc, duration)
        recorded = exc.exc or exc if isinstance(exc, Retry) else exc
        error = error_entry(recorded, attempt=claimed.attempt, worker_id=self.worker_id)
        if decision.status == TaskStatus.READY:
            logger.warning(
                "Task retrying %s #%s attempt %s/%s in %.3fs: %s: %s (next try in %.1fs)",
                claimed.name, claimed.id, claimed.attempt, decision.max_attempts, duration,
                error["type"], error["message"], decision.delay,
                extra=self._extra(claimed, "retrying", duration),
            )  # fmt: skip
        else:
            logger.error(
                "Task failed %s #%s attempt %s/%s in %.3fs: %s: %s",
                claimed.name, claimed.id, claimed.attempt, decision.max_attempts, duration,
                error["type"], error["message"],
                extra=self._extra(claimed, "failed", duration),
            )  # fmt: skip
        return self._concluded(claimed, handle, decision, error, duration, raised=recorded)

    def _lost(
        self,
        task: BackgroundTask,
        claimed: ClaimedTask,
        handle: TaskHandle,
        exc: BaseException,
        duration: float,
    ) -> Outcome:
        """An attempt lost to the infrastructure (see :func:`retry.after_lost`)."""
        decision = after_lost(
            max_attempts=claimed.max_attempts,
            lost_attempts=claimed.lost_attempts,
            max_lost_attempts=claimed.max_lost_attempts,
            cancel_requested=self.is_cancel_requested(claimed.id),
            database=not isinstance(exc, WorkerLost),
        )
        if decision.status == TaskStatus.CANCELLED:
            return self._cancelled(claimed, handle, exc, duration)
        error = error_entry(exc, attempt=claimed.attempt, worker_id=self.worker_id)
        if not isinstance(exc, WorkerLost):
            # The database went away under the task: every lost attempt reads WorkerLost, the
            # driver's error stays in the message and the traceback.
            error["message"] = (
                f"the database connection was lost under the task ({error['type']}: "
                f"{error['message']})"
            )
            error["type"] = WORKER_LOST
        lost_count = claimed.lost_attempts + 1
        if decision.status == TaskStatus.READY:
            logger.warning(
                "Task lost %s #%s attempt %s (%s of %s lost attempts allowed): %s; runs again "
                "in %.1fs",
                claimed.name, claimed.id, claimed.attempt, lost_count,
                claimed.max_lost_attempts, error["message"], decision.delay,
                extra=self._extra(claimed, "lost", duration),
            )  # fmt: skip
        else:
            logger.error(
                "Task failed %s #%s: attempt %s was lost, the %sth lost attempt of %s allowed: %s",
                claimed.name, claimed.id, claimed.attempt, lost_count,
                claimed.max_lost_attempts, error["message"],
                extra=self._extra(claimed, "failed", duration),
            )  # fmt: skip
        return self._concluded(claimed, handle, decision, error, duration, raised=exc, lost=True)

    def _concluded(
        self,
        claimed: ClaimedTask,
        handle: TaskHandle,
        decision: Decision,
        error: dict[str, Any],
        duration: float,
        *,
        raised: BaseException,
        lost: bool = False,
    ) -> Outcome:
        """The handle, signal and outcome of an attempt that did not succeed and was not
        cancelled: another attempt follows (``task_retried``) or the task is FAILED
        (``task_finished``)."""
        object.__setattr__(handle, "errors", [*handle.errors, TaskFailure.from_json(error)])
        object.__setattr__(handle, "max_attempts", decision.max_attempts)
        object.__setattr__(handle, "status", decision.status)
        sender = type(self.backend)
        if decision.status == TaskStatus.READY:
            _send(task_retried, sender, task_result=handle, error=raised, delay=decision.delay)
        else:
            _send(task_finished, sender, task_result=handle)
        return Outcome(
            id=claimed.id,
            attempt=claimed.attempt,
            status=decision.status,
            error=error,
            max_attempts=decision.max_attempts,
            retry_delay=decision.delay,
            duration=duration,
            lost=lost,
        )

    def _cancelled(
        self, claimed: ClaimedTask, handle: TaskHandle, exc: BaseException, duration: float
    ) -> Outcome:
        error = error_entry(exc, attempt=claimed.attempt, worker_id=self.worker_id)
        object.__setattr__(handle, "status", TaskStatus.CANCELLED)
        object.__setattr__(handle, "errors", [*handle.errors, TaskFailure.from_json(error)])
        logger.warning(
            "Task cancelled %s #%s attempt %s/%s after %.3fs",
            claimed.name, claimed.id, claimed.attempt, claimed.max_attempts, duration,
            extra=self._extra(claimed, "cancelled", duration),
        )  # fmt: skip
        _send(task_finished, type(self.backend), task_result=handle)
        return Outcome(
            id=claimed.id,
            attempt=claimed.attempt,
            status=TaskStatus.CANCELLED,
            error=error,
            max_attempts=claimed.max_attempts,
            duration=duration,
        )

    @staticmethod
    def _extra(claimed: ClaimedTask, outcome: str, duration: float | None = None) -> dict:
        return {
            "task_id": claimed.id,
            "task_name": claimed.name,
            "attempt": claimed.attempt,
            "queue": claimed.queue,
            "outcome": outcome,
            "duration": duration,
        }


def call(task: BackgroundTask, args: tuple | list, kwargs: dict[str, Any]) -> Any:
    """Call the task's function; a coroutine function runs on this thread's event loop."""
    if not iscoroutinefunction(task.func):
        return task.func(*args, **kwargs)
    loop = _event_loop()
    work = loop.create_task(task.func(*args, **kwargs))
    soft_limit = None
    if task.soft_timeout:
        soft_limit = loop.call_later(task.soft_timeout, work.cancel, _SOFT_LIMIT)
    try:
        return loop.run_until_complete(work)
    except asyncio.CancelledError as exc:
        if exc.args == (_SOFT_LIMIT,):
            raise SoftTimeLimitExceeded() from None
        raise
    except BaseException:
        # Something outside the coroutine interrupted the loop (a signal): do not leave the
        # coroutine pending; let it see a cancellation and clean up.
        if not work.done():
            work.cancel()
            with contextlib.suppress(BaseException):
                loop.run_until_complete(work)
        raise
    finally:
        if soft_limit is not None:
            soft_limit.cancel()


_SOFT_LIMIT = "soft time limit"
_thread_state = threading.local()


def _event_loop() -> asyncio.AbstractEventLoop:
    """One event loop per thread that runs tasks, kept for the thread's life: async tasks share
    it instead of paying for a new loop (and new async connections) each."""
    loop = getattr(_thread_state, "loop", None)
    if loop is None or loop.is_closed():
        loop = asyncio.new_event_loop()
        _thread_state.loop = loop
    return loop


def close_event_loop() -> None:
    """Close this thread's event loop, if it has one (when the thread ends).

    The async ORM runs its queries through asgiref's thread-sensitive executor, a thread
    with Django connections of its own: close those too, as the worker does its threads'.
    """
    loop = getattr(_thread_state, "loop", None)
    if loop is None or loop.is_closed():
        return
    try:
        loop.run_until_complete(sync_to_async(connections.close_all, thread_sensitive=True)())
        loop.run_until_complete(loop.shutdown_asyncgens())
    finally:
        loop.close()


def _send(signal: Signal, sender: type, **kwargs: Any) -> None:
    """Send a lifecycle signal; a receiver that raises is logged and cannot disturb the task."""
    for receiver, response in signal.send_robust(sender, **kwargs):
        if isinstance(response, Exception):
            logger.error(
                "Signal receiver %r raised", receiver, exc_info=response,
                extra={"task_id": kwargs["task_result"].id},
            )  # fmt: skip


def _discard_broken_connections() -> None:
    """After a failed task, drop this thread's Django connections that no longer work, so the
    next task starts on a healthy one (connections are otherwise kept open between tasks)."""
    for conn in connections.all(initialized_only=True):
        if conn.in_atomic_block:
            continue
        if conn.errors_occurred:
            if conn.is_usable():
                conn.errors_occurred = False
            else:
                conn.close()


def _database_went_away(exc: BaseException) -> bool:
    """Whether the task failed because its database went away (the server restarted or is
    shutting down, the connection was terminated): an error of the database driver's
    connection kind, raised while connecting or leaving a Django connection of this thread
    broken. A query cancelled by a timeout or a deadlock is the task's own error."""
    from django.db import InterfaceError, OperationalError

    seen: set[int] = set()
    cause: BaseException | None = exc
    while cause is not None and id(cause) not in seen:
        seen.add(id(cause))
        if isinstance(cause, (*_CONNECTION_ERRORS, OperationalError, InterfaceError)):
            break
        cause = cause.__cause__ or cause.__context__
    else:
        return False
    if _raised_while_connecting(cause):
        return True
    # psycopg marks a connection broken when the server went away, and only then.
    return any(
        conn.connection is not None and (conn.connection.closed or conn.connection.broken)
        for conn in connections.all(initialized_only=True)
    )


def _raised_while_connecting(exc: BaseException) -> bool:
    """Whether ``exc`` came from Django opening a database connection."""
    traceback = exc.__traceback__
    while traceback is not None:
        code = traceback.tb_frame.f_code
        if code.co_name in _CONNECTING and "django" in code.co_filename:
            return True
        traceback = traceback.tb_next
    return False


# Seconds between two "not started: no database connection" lines of one runner.
UNREACHABLE_LOG_INTERVAL = 10.0
_CONNECTING = frozenset({"ensure_connection", "get_new_connection"})
WORKER_LOST = f"{WorkerLost.__module__}.{WorkerLost.__qualname__}"
_CONNECTION_ERRORS = (psycopg.OperationalError, psycopg.InterfaceError)
