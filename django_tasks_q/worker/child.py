"""Inside a child of the process pool: receive tasks over the pipe, run them, report back.

Messages from the supervisor: ``("run", [ClaimedTask, ...])`` (for free threads, and to
queue behind busy ones) and ``("stop",)``. To the supervisor: :class:`Ready` once Django is
set up, then :class:`ChildReport` with the outcomes of finished tasks, and on stop
:class:`Returned` for the tasks queued in it that it did not start.

Outcomes are sent in batches while the child has queued tasks to go on with: one message (and
one wake-up of the supervisor) for many short tasks. A batch is sent when the child would
otherwise wait for work, before it starts a task with a time limit (whose clock the supervisor
starts when it learns the previous task ended), and at the latest after :data:`REPORT_DELAY`
seconds or :data:`REPORT_BATCH` outcomes. Cancellation requests arrive through shared
memory (``cancelled``: ids, 0 for none), so a child busy with a task needs no reader for them.

This module is imported before Django is set up, so it imports nothing that loads models at
module level.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import queue
import resource
import select
import signal
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from inspect import iscoroutinefunction
from multiprocessing.connection import Connection
from typing import TYPE_CHECKING

from django_tasks_q.exceptions import SoftTimeLimitExceeded
from django_tasks_q.queue import ClaimedTask, Outcome

if TYPE_CHECKING:
    from django_tasks_q.worker.runner import Runner


@dataclass(frozen=True, slots=True)
class Ready:
    """The child has set Django up and takes tasks."""


@dataclass(frozen=True, slots=True)
class Returned:
    """Tasks queued in a stopping child that it did not start; the worker releases them."""

    ids: list[int]


@dataclass(frozen=True, slots=True)
class ChildReport:
    """Outcomes of finished tasks, in the order they finished."""

    outcomes: tuple[Outcome, ...]
    max_rss_mb: float


# Longest an outcome waits to be reported, and most outcomes in one report. An outcome not
# reported when the child dies is taken for a lost attempt (the task runs again), so the
# delay stays short.
REPORT_DELAY = 0.002
REPORT_BATCH = 32


def child_main(
    conn: Connection,
    cancelled: Sequence[int],
    worker_id: str,
    backend_alias: str,
    log_level: str,
    threads: int,
) -> None:
    _die_with_parent()
    # The supervisor decides when children stop; Ctrl-C on the terminal must not kill a task.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    import django

    django.setup()

    from django_tasks_q.backend import get_backend
    from django_tasks_q.worker.logs import configure_logging
    from django_tasks_q.worker.runner import Runner

    configure_logging(log_level)
    jobs: queue.SimpleQueue[ClaimedTask | None] = queue.SimpleQueue()
    runner = Runner(
        worker_id=worker_id,
        backend=get_backend(backend_alias),
        is_cancel_requested=lambda task_id: task_id in cancelled[:],
    )
    send_lock = threading.Lock()

    def receive() -> None:
        while True:
            try:
                message = conn.recv()
            except (EOFError, OSError):  # the supervisor is gone: finish up and exit
                message = ("stop",)
            if message[0] == "run":
                for job in message[1]:
                    jobs.put(job)
                continue
            unstarted = []
            while True:
                try:
                    job = jobs.get_nowait()
                except queue.Empty:
                    break
                if job is not None:
                    unstarted.append(job.id)
            if unstarted:
                with send_lock:
                    conn.send(Returned(unstarted))
            for _ in range(threads):
                jobs.put(None)
            return

    reports = _Reports(conn, send_lock)

    signal.signal(signal.SIGALRM, _soft_time_limit_reached)
    if threads == 1:
        # One task at a time: the main thread reads the pipe itself, with no hand-off.
        conn.send(Ready())
        inbox = _Inbox(conn)
        _execute(inbox.next_job, runner, lambda outcome: reports.add(outcome, inbox.goes_on()))
        reports.flush()
        return
    threading.Thread(target=receive, name="tasks-q-child-receiver", daemon=True).start()

    def report(outcome: Outcome) -> None:
        reports.add(outcome, goes_on=not jobs.empty())

    executors = [
        threading.Thread(target=_execute, args=(jobs.get, runner, report), name=f"tasks-q-{n}")
        for n in range(1, threads)
    ]
    for executor in executors:
        executor.start()
    with send_lock:
        conn.send(Ready())
    # The main thread runs tasks too: there a soft time limit arrives as a signal, which also
    # interrupts a blocking call such as sleep().
    _execute(jobs.get, runner, report)
    for executor in executors:
        executor.join()
    reports.flush()


def _die_with_parent() -> None:
    """End this child when its worker dies, even if the worker was SIGKILLed: an orphan would
    keep running a task whose lease is about to be given to another worker."""
    parent = os.getppid()
    with contextlib.suppress(OSError, AttributeError):  # Linux only; the watch below covers all
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(1)

    threading.Thread(target=watch, name="tasks-q-child-watch", daemon=True).start()


_PR_SET_PDEATHSIG = 1


class _Reports:
    """Outcomes waiting to be sent to the supervisor, as one :class:`ChildReport`.

    A thread of its own sends what is still waiting :data:`REPORT_DELAY` seconds after the
    first of a batch, so an outcome is never held while a long task runs after it. It is
    parked on a lock while nothing waits: waking it costs one release per batch.
    """

    def __init__(self, conn: Connection, send_lock: threading.Lock) -> None:
        self.conn = conn
        self.send_lock = send_lock
        self.lock = threading.Lock()
        self.pending: list[Outcome] = []
        self.since = 0.0
        self.parked = True
        self.unpark = threading.Lock()
        self.unpark.acquire()
        threading.Thread(target=self._send_late, name="tasks-q-child-reports", daemon=True).start()

    def add(self, outcome: Outcome, goes_on: bool) -> None:
        """Report ``outcome``: with the next ones if this child ``goes_on`` with a queued task
        at once, within the limits; now otherwise."""
        with self.lock:
            self.pending.append(outcome)
            if len(self.pending) == 1:
                self.since = time.monotonic()
                if goes_on:
                    if self.parked:
                        self.parked = False
                        self.unpark.release()
                    return
            elif goes_on and len(self.pending) < REPORT_BATCH:
                return
            outcomes, self.pending = tuple(self.pending), []
        self._send(outcomes)

    def flush(self) -> None:
        with self.lock:
            outcomes, self.pending = tuple(self.pending), []
        if outcomes:
            self._send(outcomes)

    def _send(self, outcomes: tuple[Outcome, ...]) -> None:
        rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        with self.send_lock:
            self.conn.send(ChildReport(outcomes, rss_mb))

    def _send_late(self) -> None:
        while True:
            self.unpark.acquire()
            while True:
                outcomes: tuple[Outcome, ...] = ()
                with self.lock:
                    if not self.pending:
                        self.parked = True
                        break
                    left = self.since + REPORT_DELAY - time.monotonic()
                    if left <= 0:
                        outcomes, self.pending = tuple(self.pending), []
                if not outcomes:
                    time.sleep(left)
                    continue
                try:
                    self._send(outcomes)
                except OSError:  # the supervisor is gone: nobody to tell
                    return


class _Inbox:
    """The tasks of a one-thread child, read from the pipe by the thread that runs them."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.jobs: deque[ClaimedTask] = deque()
        self.stopping = False
        # Looked at before each task; Connection.poll() would build a selector every time.
        self.arrivals = select.poll()
        self.arrivals.register(conn.fileno(), select.POLLIN)

    def goes_on(self) -> bool:
        """Whether the next task is here already and its start may be reported late (it has
        no time limit)."""
        return bool(self.jobs) and not self.jobs[0].timeout

    def next_job(self) -> ClaimedTask | None:
        # Read what has arrived before starting a queued task: a stop among it means that
        # task must be given back, not run.
        while not self.stopping and (not self.jobs or self.arrivals.poll(0)):
            try:
                message = self.conn.recv()
            except (EOFError, OSError):  # the supervisor is gone
                message = ("stop",)
            if message[0] == "run":
                self.jobs.extend(message[1])
            else:
                self.stopping = True
        if not self.stopping:
            return self.jobs.popleft()
        if self.jobs:
            self.conn.send(Returned([job.id for job in self.jobs]))
            self.jobs.clear()
        return None


def _execute(
    next_job: Callable[[], ClaimedTask | None],
    runner: Runner,
    report: Callable[[Outcome], None],
) -> None:
    from django.db import connections

    on_main_thread = threading.current_thread() is threading.main_thread()
    try:
        while (job := next_job()) is not None:
            report(_run_one(job, runner, on_main_thread))
    finally:
        from django_tasks_q.worker.runner import close_event_loop

        close_event_loop()
        connections.close_all()


def _run_one(job: ClaimedTask, runner: Runner, on_main_thread: bool) -> Outcome:
    """Run one task under its soft limit. Whatever happens, returns its outcome: a soft limit
    that fires after the task returned, or while it is disarmed, cannot escape."""
    outcome: Outcome | None = None
    limit: _SoftLimit | None = None
    soft_timeout: float | None = None
    try:
        soft_timeout = _soft_timeout(job.name)
        limit = _SoftLimit(soft_timeout, on_main_thread) if soft_timeout else None
        outcome = runner.run(job)
    except SoftTimeLimitExceeded as exc:
        # The limit fired after the task returned but before it was disarmed: the attempt
        # did overrun its soft limit, so record it as that failure.
        outcome = outcome or runner.ended_outside(job, exc, soft_timeout or 0.0)
    except BaseException as exc:
        outcome = outcome or runner.crashed(job, exc)
    finally:
        while limit is not None:
            try:
                limit.disarm()
                limit = None
            except SoftTimeLimitExceeded:  # fired during disarm: the outcome stands
                continue
    return outcome


class _SoftLimit:
    """Raises SoftTimeLimitExceeded in the running task after ``seconds``.

    On the main thread an interval timer's SIGALRM does it. Other threads cannot receive
    signals, so a timer thread raises the exception in them asynchronously; it takes effect
    at the task's next Python instruction (not inside a blocking C call).
    """

    def __init__(self, seconds: float, on_main_thread: bool) -> None:
        self.on_main_thread = on_main_thread
        if on_main_thread:
            signal.setitimer(signal.ITIMER_REAL, seconds)
            return
        self.thread_id = threading.get_ident()
        self.lock = threading.Lock()
        self.armed = True
        self.timer = threading.Timer(seconds, self._fire)
        self.timer.daemon = True
        self.timer.start()

    def _fire(self) -> None:
        with self.lock:
            if self.armed:
                _set_async_exc(self.thread_id, SoftTimeLimitExceeded)

    def disarm(self) -> None:
        if self.on_main_thread:
            signal.setitimer(signal.ITIMER_REAL, 0)
            return
        with self.lock:
            self.armed = False
            self.timer.cancel()
            _set_async_exc(self.thread_id, None)  # clears one that was not raised yet


def _set_async_exc(thread_id: int, exc: type[BaseException] | None) -> None:
    ctypes.pythonapi.PyThreadState_SetAsyncExc(
        ctypes.c_ulong(thread_id), ctypes.py_object(exc) if exc else None
    )


def _soft_time_limit_reached(signum: int, frame: object) -> None:
    raise SoftTimeLimitExceeded("The task ran past its soft time limit.")


def _soft_timeout(name: str) -> float | None:
    from django_tasks_q import registry
    from django_tasks_q.exceptions import UnknownTaskError

    try:
        task = registry.get(name)
    except UnknownTaskError:
        return None
    # The runner enforces an async task's soft limit on its event loop.
    return None if iscoroutinefunction(task.func) else task.soft_timeout
