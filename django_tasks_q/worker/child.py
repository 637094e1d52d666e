"""Inside a child of the process pool: receive tasks over the pipe, run them, report back.

Messages from the supervisor: ``("run", [ClaimedTask, ...])`` (for free threads, and to
queue behind busy ones) and ``("stop",)``. To the supervisor: :class:`Ready` once Django is
set up, then one :class:`ChildReport` per finished task, and on stop :class:`Returned` for
the tasks queued in it that it did not start. Cancellation requests arrive through shared
memory (``cancelled``: ids, 0 for none), so a child busy with a task needs no reader for them.

This module is imported before Django is set up, so it imports nothing that loads models at
module level.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import pickle
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
    outcome: Outcome
    max_rss_mb: float

    def __reduce__(self) -> tuple:
        # One per task: a tuple pickles in a fraction of the generic dataclass's time.
        return ChildReport, (self.outcome, self.max_rss_mb)


# Seconds between two readings of the child's peak memory: getrusage() costs more than running
# a short task, and the limit (--max-memory-per-child) does not need it after every one.
RSS_INTERVAL = 0.1


def child_main(
    conn: Connection,
    cancelled: Sequence[int],
    worker_id: str,
    backend_alias: str,
    log_level: str,
    threads: int,
    watch_memory: bool = False,
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

    # Read only for --max-memory-per-child, its one use.
    peak = _PeakMemory() if watch_memory else None
    inbox = _Inbox(conn) if threads == 1 else None

    def more_queued() -> bool:
        return bool(inbox.jobs) if inbox else not jobs.empty()

    def report(outcome: Outcome) -> None:
        # At once, before the next task starts: if that task crashes the child, this one's
        # outcome is known, not taken for a casualty of the crash. The memory reading is
        # fresh when the child has nothing more to run, so one that grew past the limit is
        # replaced before it idles.
        megabytes = peak.megabytes(fresh=not more_queued()) if peak else 0.0
        with send_lock:
            send_message(conn, ChildReport(outcome, megabytes))

    signal.signal(signal.SIGALRM, _soft_time_limit_reached)
    if inbox:
        # One task at a time: the main thread reads the pipe itself, with no hand-off.
        conn.send(Ready())
        _execute(inbox.next_job, runner, report)
        return
    threading.Thread(target=receive, name="tasks-q-child-receiver", daemon=True).start()

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


def send_message(conn: Connection, message: object) -> None:
    """``conn.send(message)`` for this pool's messages, at a fraction of the cost: they need
    none of multiprocessing's reducers (for sockets, locks), only plain pickling, which the
    receiving ``conn.recv()`` reads alike."""
    conn.send_bytes(pickle.dumps(message, pickle.HIGHEST_PROTOCOL))


class _PeakMemory:
    """The child's peak resident memory, read again once :data:`RSS_INTERVAL` has passed, or
    when asked for a fresh reading."""

    def __init__(self) -> None:
        self.value = 0.0
        self.read_at = float("-inf")

    def megabytes(self, *, fresh: bool = False) -> float:
        now = time.monotonic()
        if fresh or now - self.read_at >= RSS_INTERVAL:
            self.read_at = now
            self.value = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        return self.value


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


class _Inbox:
    """The tasks of a one-thread child, read from the pipe by the thread that runs them."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.jobs: deque[ClaimedTask] = deque()
        self.stopping = False
        # Looked at before each task; Connection.poll() would build a selector every time.
        self.arrivals = select.poll()
        self.arrivals.register(conn.fileno(), select.POLLIN)

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
    if name in _soft_timeouts:
        return _soft_timeouts[name]
    from django_tasks_q import registry
    from django_tasks_q.exceptions import UnknownTaskError

    try:
        task = registry.get(name)
    except UnknownTaskError:
        return None  # not remembered: the name may yet be registered
    # The runner enforces an async task's soft limit on its event loop.
    timeout = None if iscoroutinefunction(task.func) else task.soft_timeout
    _soft_timeouts[name] = timeout
    return timeout


# Per task name, looked up once: the registry does not change once a child runs tasks.
_soft_timeouts: dict[str, float | None] = {}
