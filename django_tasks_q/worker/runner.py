"""Run one claimed task and describe how it ended. Knows tasks and signals, not SQL."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
import traceback
from collections.abc import Callable
from inspect import iscoroutinefunction
from typing import Any

from asgiref.sync import sync_to_async
from django.db import connections
from django.dispatch import Signal

from django_tasks_q import registry
from django_tasks_q.backend import PostgresBackend
from django_tasks_q.exceptions import (
    Retry,
    SoftTimeLimitExceeded,
    TaskCancelled,
    UnknownTaskError,
)
from django_tasks_q.models import TaskStatus
from django_tasks_q.queue import ClaimedTask, Outcome
from django_tasks_q.results import TaskFailure, TaskHandle, worker_ids
from django_tasks_q.retry import retry_delay, should_retry
from django_tasks_q.serialization import result_to_json
from django_tasks_q.signals import task_finished, task_retried, task_started
from django_tasks_q.tasks import BackgroundTask, BackgroundTaskContext

logger = logging.getLogger("django_tasks_q.worker")


def error_entry(exc: BaseException, attempt: int, worker_id: str) -> dict[str, Any]:
    kind = type(exc)
    return {
        "attempt": attempt,
        "worker_id": worker_id,
        "type": f"{kind.__module__}.{kind.__qualname__}",
        "message": str(exc),
        "traceback": "".join(traceback.format_exception(exc)),
    }


class Runner:
    """Executes claimed tasks for one worker. Safe to share between executor threads."""

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

    def handle_for(self, task: BackgroundTask, claimed: ClaimedTask) -> TaskHandle:
        errors = [TaskFailure.from_json(error) for error in claimed.errors]
        return TaskHandle(
            task=task,
            id=str(claimed.id),
            status=TaskStatus.RUNNING,
            enqueued_at=claimed.enqueued_at,
            started_at=claimed.started_at,
            finished_at=None,
            last_attempted_at=claimed.last_attempted_at,
            args=claimed.args,
            kwargs=claimed.kwargs,
            backend=self.backend.alias,
            errors=errors,
            worker_ids=worker_ids(errors, self.worker_id, claimed.attempt),
            attempt_count=claimed.attempt,
            max_attempts=claimed.max_attempts,
            run_after=claimed.run_after,
            queue=claimed.queue,
            priority=claimed.priority,
        )

    def run(self, claimed: ClaimedTask) -> Outcome:
        try:
            task = registry.get(claimed.name)
        except UnknownTaskError as exc:
            # Never import a dotted path from the database: only registered tasks run.
            logger.error(
                "Task %s #%s cannot run: %s",
                claimed.name,
                claimed.id,
                exc,
                extra=self._extra(claimed, "failed"),
            )
            return self._failed_for_good(claimed, exc, 0.0)
        handle = self.handle_for(task, claimed)
        sender = type(self.backend)
        logger.info(
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
            _discard_broken_connections()
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

    def failed_outside(self, claimed: ClaimedTask, exc: BaseException, duration: float) -> Outcome:
        """The outcome of an attempt that ended outside the task function: its process was
        killed at the time limit, or died. The task's retry policy applies."""
        try:
            task = registry.get(claimed.name)
        except UnknownTaskError:
            return self._failed_for_good(claimed, exc, duration)
        return self._failure(task, claimed, self.handle_for(task, claimed), exc, duration)

    def cancelled_outside(
        self, claimed: ClaimedTask, exc: TaskCancelled, duration: float
    ) -> Outcome:
        """The outcome of an attempt whose process was killed on ``cancel(terminate=True)``."""
        try:
            task = registry.get(claimed.name)
        except UnknownTaskError:
            return self._failed_for_good(claimed, exc, duration)
        return self._cancelled(claimed, self.handle_for(task, claimed), exc, duration)

    def _failed_for_good(
        self, claimed: ClaimedTask, exc: BaseException, duration: float
    ) -> Outcome:
        """FAILED without retries or signals: for a task whose name is not registered here."""
        return Outcome(
            id=claimed.id,
            attempt=claimed.attempt,
            status=TaskStatus.FAILED,
            error=error_entry(exc, claimed.attempt, self.worker_id),
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
        if isinstance(exc, TaskCancelled):
            return self._cancelled(claimed, handle, exc, duration)
        max_attempts = claimed.max_attempts
        requested_delay = None
        recorded = exc
        if isinstance(exc, Retry):
            if exc.max_retries is not None:
                max_attempts = exc.max_retries + 1
            requested_delay = exc.countdown
            recorded = exc.exc or exc
        error = error_entry(recorded, claimed.attempt, self.worker_id)
        object.__setattr__(handle, "errors", [*handle.errors, TaskFailure.from_json(error)])
        object.__setattr__(handle, "max_attempts", max_attempts)
        sender = type(self.backend)
        if retry and should_retry(task, exc, claimed.attempt, max_attempts):
            delay = retry_delay(task, claimed.attempt, requested_delay)
            object.__setattr__(handle, "status", TaskStatus.READY)
            logger.warning(
                "Task retrying %s #%s attempt %s/%s in %.3fs: %s: %s (next try in %.1fs)",
                claimed.name, claimed.id, claimed.attempt, max_attempts, duration,
                error["type"], error["message"], delay,
                extra=self._extra(claimed, "retrying", duration),
            )  # fmt: skip
            _send(task_retried, sender, task_result=handle, error=recorded, delay=delay)
            return Outcome(
                id=claimed.id,
                attempt=claimed.attempt,
                status=TaskStatus.READY,
                error=error,
                max_attempts=max_attempts,
                retry_delay=delay,
                duration=duration,
            )
        object.__setattr__(handle, "status", TaskStatus.FAILED)
        logger.error(
            "Task failed %s #%s attempt %s/%s in %.3fs: %s: %s",
            claimed.name, claimed.id, claimed.attempt, max_attempts, duration,
            error["type"], error["message"],
            extra=self._extra(claimed, "failed", duration),
        )  # fmt: skip
        _send(task_finished, sender, task_result=handle)
        return Outcome(
            id=claimed.id,
            attempt=claimed.attempt,
            status=TaskStatus.FAILED,
            error=error,
            max_attempts=max_attempts,
            duration=duration,
        )

    def _cancelled(
        self, claimed: ClaimedTask, handle: TaskHandle, exc: TaskCancelled, duration: float
    ) -> Outcome:
        error = error_entry(exc, claimed.attempt, self.worker_id)
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
