"""Child processes that run tasks for a worker: the unit a hard time limit can kill.

The worker process (the supervisor) keeps the queue work: claims, outcomes, heartbeats. Each
executor slot owns one child process and hands it one task at a time over a pipe; the child
runs it with the same :class:`Runner` the threaded pool uses and sends the outcome back. A
child that overruns its task's ``timeout`` is killed; a child that dies is replaced; either
way the attempt is recorded as failed and the task's retry policy decides what happens next.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import resource
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import TYPE_CHECKING, Any

from django_tasks_q.exceptions import (
    SoftTimeLimitExceeded,
    TaskCancelled,
    TimeLimitExceeded,
    WorkerLost,
)
from django_tasks_q.queue import ClaimedTask, Outcome
from django_tasks_q.worker.logs import current_level_name

if TYPE_CHECKING:  # the runner imports the models, which a child may only load after setup()
    from django_tasks_q.worker.runner import Runner

logger = logging.getLogger("django_tasks_q.worker")

# Seconds a task cancelled with terminate=True gets to stop by itself before it is killed.
TERMINATE_GRACE = 2.0

# Spawned, not forked: the supervisor has threads and open connections that a fork would copy.
_context = multiprocessing.get_context("spawn")


@dataclass(frozen=True, slots=True)
class ChildReport:
    outcome: Outcome
    max_rss_mb: float


def _child_main(
    conn: Connection, cancel: Any, worker_id: str, backend_alias: str, log_level: str
) -> None:
    # The supervisor decides when children stop; Ctrl-C on the terminal must not kill a task.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    import django

    django.setup()
    from django.db import connections

    from django_tasks_q.worker.logs import configure_logging

    configure_logging(log_level)

    from django_tasks_q.backend import get_backend
    from django_tasks_q.worker.runner import Runner

    signal.signal(signal.SIGALRM, _soft_time_limit_reached)
    runner = Runner(
        worker_id=worker_id,
        backend=get_backend(backend_alias),
        is_cancel_requested=lambda task_id: cancel.is_set(),
    )
    try:
        while True:
            try:
                job = conn.recv()
            except EOFError:
                return
            if job is None:
                return
            soft_timeout = _soft_timeout(job.name)
            if soft_timeout:
                signal.setitimer(signal.ITIMER_REAL, soft_timeout)
            try:
                outcome = runner.run(job)
            finally:
                signal.setitimer(signal.ITIMER_REAL, 0)
            rss_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            conn.send(ChildReport(outcome, rss_kb / 1024))
    finally:
        connections.close_all()


def _soft_time_limit_reached(signum: int, frame: object) -> None:
    raise SoftTimeLimitExceeded("The task ran past its soft time limit.")


def _soft_timeout(name: str) -> float | None:
    from django_tasks_q import registry
    from django_tasks_q.exceptions import UnknownTaskError

    try:
        return registry.get(name).soft_timeout
    except UnknownTaskError:
        return None


class Child:
    """One child process and the pipe to it."""

    def __init__(self, *, worker_id: str, backend_alias: str) -> None:
        self.conn, child_conn = _context.Pipe()
        self.cancel = _context.Event()
        self.process = _context.Process(
            target=_child_main,
            args=(child_conn, self.cancel, worker_id, backend_alias, current_level_name()),
            name="tasks-q-child",
            daemon=True,
        )
        self.process.start()
        child_conn.close()
        self.tasks_run = 0
        self.max_rss_mb = 0.0

    @property
    def pid(self) -> int | None:
        return self.process.pid

    def run(
        self,
        job: ClaimedTask,
        *,
        cancel_requested: Any,
        terminate_requested: Any = lambda task_id: False,
        poll: float = 0.2,
    ) -> ChildReport | BaseException:
        """Run ``job`` in the child. Returns its report, or the exception that describes why
        there is none (time limit, or the child died); the child is dead in that case."""
        self.cancel.clear()
        started = time.monotonic()
        deadline = started + job.timeout if job.timeout else None
        terminate_at = None
        try:
            self.conn.send(job)
            while True:
                wait = (
                    poll if deadline is None else max(0.0, min(poll, deadline - time.monotonic()))
                )
                if self.conn.poll(wait):
                    report = self.conn.recv()
                    self.tasks_run += 1
                    self.max_rss_mb = report.max_rss_mb
                    return report
                if cancel_requested(job.id):
                    self.cancel.set()
                    if terminate_at is None and terminate_requested(job.id):
                        terminate_at = time.monotonic() + TERMINATE_GRACE
                if terminate_at is not None and time.monotonic() >= terminate_at:
                    self.kill()
                    return TaskCancelled(
                        f"Task {job.name} #{job.id} was cancelled; it did not stop within "
                        f"{TERMINATE_GRACE}s, so the process running it was killed."
                    )
                if deadline is not None and time.monotonic() >= deadline:
                    self.kill()
                    return TimeLimitExceeded(
                        f"Task {job.name} #{job.id} ran longer than its time limit of "
                        f"{job.timeout}s; the process running it was killed."
                    )
                if not self.process.is_alive():
                    raise EOFError
        except (EOFError, OSError):
            self.process.join(timeout=5)
            return WorkerLost(
                f"The process running task {job.name} #{job.id} died "
                f"({_describe_exit(self.process.exitcode)})."
            )

    def stop(self, timeout: float = 10) -> None:
        """Ask the child to exit after its current task; kill it if it does not."""
        with contextlib.suppress(OSError):  # already gone
            self.conn.send(None)
        self.process.join(timeout=timeout)
        if self.process.is_alive():
            self.kill()

    def kill(self) -> None:
        if self.process.is_alive():
            os.kill(self.process.pid, signal.SIGKILL)
        self.process.join(timeout=5)


class ChildSlot:
    """One executor slot of the process pool: its child, and when to replace it."""

    def __init__(
        self,
        *,
        worker_id: str,
        backend_alias: str,
        max_tasks: int | None = None,
        max_memory_mb: float | None = None,
    ) -> None:
        self.worker_id = worker_id
        self.backend_alias = backend_alias
        self.max_tasks = max_tasks
        self.max_memory_mb = max_memory_mb
        self.child = self._new_child()

    def run(
        self,
        job: ClaimedTask,
        runner: Runner,
        *,
        cancel_requested: Callable[[int], bool],
        terminate_requested: Callable[[int], bool],
    ) -> Outcome:
        """Run ``job`` in this slot's child and return its outcome, whatever happened."""
        began = time.monotonic()
        report = self.child.run(
            job, cancel_requested=cancel_requested, terminate_requested=terminate_requested
        )
        if isinstance(report, ChildReport):
            self._recycle_if_due()
            return report.outcome
        # The child was killed or died: the attempt ends here, and a new child takes the slot.
        self.child = self._new_child()
        if isinstance(report, TaskCancelled):
            return runner.cancelled_outside(job, report, time.monotonic() - began)
        return runner.failed_outside(job, report, time.monotonic() - began)

    def close(self, *, kill: bool = False) -> None:
        if kill:
            self.child.kill()
        else:
            self.child.stop()

    def _new_child(self) -> Child:
        return Child(worker_id=self.worker_id, backend_alias=self.backend_alias)

    def _recycle_if_due(self) -> None:
        child = self.child
        reason = None
        if self.max_tasks and child.tasks_run >= self.max_tasks:
            reason = f"it ran {child.tasks_run} tasks"
        elif self.max_memory_mb and child.max_rss_mb > self.max_memory_mb:
            reason = f"it uses {child.max_rss_mb:.0f} MB"
        if reason is None:
            return
        logger.info("Worker %s replaces child %s: %s", self.worker_id, child.pid, reason)
        child.stop()
        self.child = self._new_child()


def _describe_exit(code: int | None) -> str:
    if code is None:
        return "exit status unknown"
    if code < 0:
        return f"killed by {signal.Signals(-code).name}"
    return f"exit status {code}"
