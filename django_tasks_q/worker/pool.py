"""The process pool: child processes run tasks, so a hard time limit has something to kill.

The worker process (the supervisor) keeps all queue work: claims, outcomes, heartbeats. One
dispatcher thread feeds the children over pipes and waits on all of them at once, so a
finished task is answered with the next one without a thread hand-off per child. Tasks the
worker claims while every child waits for work are sent by the worker's own thread, so they
do not wait for the dispatcher to wake up. A child runs up to ``threads`` tasks at a time
with the same :class:`Runner` the thread pool uses.

Tasks go to the children with free threads first. Only when every thread is busy and the
worker holds more tasks (it prefetches when tasks are short) are tasks queued in children
behind their running ones, so a child never waits for the pipe between two short tasks. How
many: what the mean duration so far says takes :data:`QUEUED_WORK` seconds (at most
:data:`MAX_QUEUED` a thread; one a thread while durations are unknown or long), so what may
wait behind a task that turns out long, while another child idles, is a few milliseconds of
expected work. A child runs its tasks in the order they arrive, so the dispatcher knows when
each one starts (when a thread frees) and counts its time limit from then. A child that
overruns a task's ``timeout`` is killed and the attempt fails (the task's retry policy decides
what next). A child that dies is replaced: killed by a signal from outside (SIGKILL from the
out-of-memory killer, SIGTERM, ...) its attempts are lost and run again; exited or crashed by
the task's doing (an exit status, SIGSEGV, SIGABRT, ...) they fail. Tasks of other threads of
a killed child are lost, and tasks queued in it that had not started go to another child.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import multiprocessing
import os
import pickle
import selectors
import signal
import socket
import struct
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import TYPE_CHECKING

from django_tasks_q.errors import NOT_STARTED_CANCELLED
from django_tasks_q.exceptions import ProcessDied, TaskCancelled, TimeLimitExceeded, WorkerLost
from django_tasks_q.queue import ClaimedTask, Outcome
from django_tasks_q.worker.child import Ready, Returned, child_main, send_message
from django_tasks_q.worker.logs import current_level_name

if TYPE_CHECKING:  # the runner imports the models, which a child may only load after setup()
    from django_tasks_q.worker.runner import Runner

logger = logging.getLogger("django_tasks_q.worker")

# Seconds a task cancelled with terminate=True gets to stop by itself before it is killed.
TERMINATE_GRACE = 2.0
# Longest the dispatcher sleeps: how late it notices a cancel request or a dead child.
TICK = 0.2
# Work, in seconds of the tasks' mean duration, queued behind each thread of a busy child: it
# covers the dispatcher's delay between a report and the next tasks. Queued tasks of a child
# wait for its threads even while another child idles, so this stays small.
QUEUED_WORK = 0.005
# Most tasks queued behind one thread (no-op tasks: the hand-off is then the bottleneck).
MAX_QUEUED = 16
# Children in a row that die before they are ready: then something is wrong with the set-up
# (settings, imports), and starting more would only loop.
MAX_START_FAILURES = 3

# Spawned, not forked: the supervisor has threads and open connections that a fork would copy.
_context = multiprocessing.get_context("spawn")


def queued_per_thread(mean_duration: float | None) -> int:
    """Tasks to queue behind each busy thread of a child: :data:`QUEUED_WORK` seconds of them
    by the tasks' mean duration so far (``None`` while unknown: one)."""
    if mean_duration is None:
        return 1
    fit = int(QUEUED_WORK / max(mean_duration, 1e-6))
    return max(1, min(MAX_QUEUED, fit))


@dataclass(slots=True)
class _Running:
    job: ClaimedTask
    started: float
    cancel_sent: bool = False
    terminate_at: float | None = None

    @property
    def deadline(self) -> float | None:
        return self.started + self.job.timeout if self.job.timeout else None


@dataclass(eq=False)
class Child:
    """One child process, the pipe to it, and what it is running."""

    process: multiprocessing.process.BaseProcess
    conn: Connection
    threads: int
    # Ids of this child's tasks whose cancellation was requested, 0 for none: shared memory
    # the child reads when a task asks, so a busy child needs no message to learn of it.
    cancelled: ctypes.Array
    ready: bool = False
    retiring: bool = False
    tasks_run: int = 0
    max_rss_mb: float = 0.0
    running: dict[int, _Running] = field(default_factory=dict)
    # Ids whose cancellation the child was told of (running or queued).
    cancel_sent: set[int] = field(default_factory=set)
    # Sent, not started: each starts when one of the child's threads frees, in this order.
    queued: deque[ClaimedTask] = field(default_factory=deque)
    inbound: _Inbound = field(init=False)

    def __post_init__(self) -> None:
        self.inbound = _Inbound(self.conn)

    @classmethod
    def start(
        cls, *, worker_id: str, backend_alias: str, threads: int, watch_memory: bool = False
    ) -> Child:
        conn, child_conn = _context.Pipe()
        # A slot for every task a child may hold: running ones and those queued behind them.
        cancelled = _context.RawArray(ctypes.c_int64, (1 + MAX_QUEUED) * threads)
        process = _context.Process(
            target=child_main,
            args=(
                child_conn,
                cancelled,
                worker_id,
                backend_alias,
                current_level_name(),
                threads,
                watch_memory,
            ),
            name="tasks-q-child",
            daemon=True,
        )
        process.start()
        child_conn.close()
        return cls(process=process, conn=conn, threads=threads, cancelled=cancelled)

    @property
    def free(self) -> int:
        """Threads that would start a task sent now."""
        if not self.ready or self.retiring:
            return 0
        return self.threads - len(self.running) - len(self.queued)

    def room(self, max_tasks: int | None, queued_per_thread: int) -> int:
        """Tasks it may be sent now, queued ones included (never past ``max_tasks``)."""
        if not self.ready or self.retiring:
            return 0
        in_flight = len(self.running) + len(self.queued)
        room = (1 + queued_per_thread) * self.threads - in_flight
        if max_tasks:
            room = min(room, max_tasks - self.tasks_run - in_flight)
        return room

    def start_queued(self, on_start: Callable[[ClaimedTask], None] | None = None) -> None:
        """Move queued tasks to running as threads free, as the child itself does."""
        now = time.monotonic()
        while self.queued and len(self.running) < self.threads:
            job = self.queued.popleft()
            self.running[job.id] = _Running(job, now)
            if on_start is not None:
                on_start(job)

    def send(self, message: tuple) -> bool:
        try:
            send_message(self.conn, message)
        except OSError:  # the child is gone; its sentinel tells the dispatcher
            return False
        return True

    def request_cancel(self, task_id: int) -> None:
        held = {job.id for job in self.queued} | set(self.running)
        for index, value in enumerate(self.cancelled):
            if value == 0 or value not in held:
                self.cancelled[index] = task_id
                self.cancel_sent.add(task_id)
                return

    def kill(self) -> None:
        if self.process.is_alive():
            os.kill(self.process.pid, signal.SIGKILL)
        self.process.join(timeout=5)


class ProcessPool:
    """``processes`` children with ``threads`` threads each, fed by one dispatcher thread.

    Outcomes are handed to ``deliver`` (from the dispatcher thread), in the order tasks end.
    """

    def __init__(
        self,
        *,
        worker_id: str,
        backend_alias: str,
        runner: Runner,
        deliver: Callable[[Outcome], None],
        give_back: Callable[[list[int]], None],
        on_ready: Callable[[], None] = lambda: None,
        on_all_ready: Callable[[], None] = lambda: None,
        on_fatal: Callable[[str], None] = lambda reason: None,
        processes: int,
        threads: int = 1,
        max_tasks_per_child: int | None = None,
        max_memory_per_child: float | None = None,
        cancel_requested: Callable[[int], bool] = lambda task_id: False,
        terminate_requested: Callable[[int], bool] = lambda task_id: False,
        any_cancel_requested: Callable[[], bool] = lambda: False,
        mean_duration: Callable[[], float | None] = lambda: None,
        on_start: Callable[[ClaimedTask], None] | None = None,
    ) -> None:
        self.worker_id = worker_id
        self.backend_alias = backend_alias
        self.runner = runner
        self.deliver = deliver
        self.give_back = give_back
        self.on_ready = on_ready
        self.on_all_ready = on_all_ready
        self.on_fatal = on_fatal
        self.ready = False  # once a child is ready: until then the worker claims nothing
        self.all_ready = False  # once every first child was ready together
        self._start_failures = 0
        self.processes = processes
        self.threads = threads
        self.max_tasks_per_child = max_tasks_per_child
        self.max_memory_per_child = max_memory_per_child
        self.cancel_requested = cancel_requested
        self.terminate_requested = terminate_requested
        # Whether any request is pending at all: tasks not yet running are only looked over
        # then, so the dispatcher's loop costs nothing extra when nobody cancels.
        self.any_cancel_requested = any_cancel_requested
        # The worker's running mean of task durations (seconds), which sizes its claims too:
        # it decides how much work to queue in busy children.
        self.mean_duration = mean_duration
        # Told as a task moves from queued in a child to running there (metrics).
        self.on_start = on_start
        self.children: list[Child] = []
        self._retired: list[Child] = []
        self._pending: deque[ClaimedTask] = deque()
        self._lock = threading.Lock()  # guards _pending
        # Guards the children and what they hold: held by the dispatcher while it handles
        # events, and taken by submit() to send the worker's claims without waking it.
        self._children_lock = threading.Lock()
        self._wake_read, self._wake_write = os.pipe()
        os.set_blocking(self._wake_write, False)
        self._selector = selectors.DefaultSelector()
        self._selector.register(self._wake_read, selectors.EVENT_READ)
        self._draining = False  # the worker is stopping: children give back queued tasks
        self._closing = False
        self._kill = False
        self._thread: threading.Thread | None = None

    @property
    def capacity(self) -> int:
        return self.processes * self.threads

    # -- the worker's side ----------------------------------------------------------------

    def start(self) -> None:
        self.children = [self._new_child() for _ in range(self.processes)]
        self._thread = threading.Thread(
            target=self._dispatch, name="tasks-q-dispatcher", daemon=True
        )
        self._thread.start()

    def submit(self, jobs: list[ClaimedTask]) -> None:
        with self._lock:
            self._pending.extend(jobs)
        # To children that all wait for work, sent from this thread: a wake-up less between
        # the claim and the task's start, the step an idle machine's CPUs answer slowest.
        # Otherwise the dispatcher sends them, and this thread, which claims and records for
        # every slot, goes back to that sooner (measured: a tenth more throughput).
        if self._children_lock.acquire(blocking=False):
            try:
                idle = not any(child.running or child.queued for child in self.children)
                if idle:
                    self._assign()
            finally:
                self._children_lock.release()
            if idle and not self._pending and not any(job.timeout for job in jobs):
                return  # nothing left to send, and no time limit for it to enforce sooner
        self._wake()

    def cancel_requested_changed(self) -> None:
        """Pass new cancellation requests on now, before a queued task starts."""
        self._wake()

    def take_unstarted(self) -> list[int]:
        """Ids of submitted tasks no child has received; they are forgotten here.

        Children are told to stop: they finish their running tasks and hand the ones queued
        in them to ``give_back``.
        """
        with self._lock:
            self._draining = True
            ids = [job.id for job in self._pending]
            self._pending.clear()
        self._wake()
        return ids

    def close(self, *, kill: bool = False) -> None:
        """Stop the children: after their running tasks end, or at once with ``kill``."""
        self._closing = True
        self._kill = kill
        self._wake()
        if self._thread is not None:
            self._thread.join(timeout=15)
        for child in self.children + self._retired:
            child.kill()
        self._selector.close()
        os.close(self._wake_read)
        os.close(self._wake_write)

    # -- the dispatcher thread --------------------------------------------------------------

    def _wake(self) -> None:
        with contextlib.suppress(BlockingIOError, OSError):  # already woken / closed
            os.write(self._wake_write, b".")

    def _dispatch(self) -> None:
        stop_sent = False
        try:
            while not self._closing:
                with self._children_lock:
                    if self._draining and not stop_sent:
                        for child in self.children:
                            child.send(("stop",))
                        stop_sent = True
                    self._assign()
                    timeout = self._next_deadline()
                events = self._selector.select(timeout)
                with self._children_lock:
                    self._handle(events)
                    self._enforce_limits()
                    self._replace_retired()
            with self._children_lock:
                self._stop_children()
        except BaseException:
            logger.exception("Worker %s: the process pool's dispatcher crashed", self.worker_id)
            raise

    def _assign(self) -> None:
        """Send pending tasks to free threads, the least busy child first; then, if tasks are
        still pending, queue them in children so none waits for the pipe between tasks."""
        if (
            self._pending
            and self.any_cancel_requested()
            and any(self.cancel_requested(job.id) for job in self._pending)
        ):
            with self._lock:
                cancelled = [job for job in self._pending if self.cancel_requested(job.id)]
                self._pending = deque(j for j in self._pending if not self.cancel_requested(j.id))
            for job in cancelled:  # never sent, so never started
                self.deliver(
                    self.runner.ended_outside(job, TaskCancelled(NOT_STARTED_CANCELLED), 0.0)
                )
        depth = queued_per_thread(self.mean_duration())
        for room in (Child.free.fget, lambda c: c.room(self.max_tasks_per_child, depth)):
            while self._pending:
                child = max(self.children, key=room)
                count = min(room(child), len(self._pending))
                if count <= 0:
                    break
                with self._lock:
                    batch = [self._pending.popleft() for _ in range(min(count, len(self._pending)))]
                child.queued.extend(batch)
                child.start_queued(self.on_start)
                if not child.send(("run", batch)):
                    return  # the child died; the next round of events records its tasks

    def _next_deadline(self) -> float:
        """Seconds the dispatcher may wait for events: until the first time limit comes."""
        timeout = TICK
        now = time.monotonic()
        for child in self.children:
            for running in child.running.values():
                deadline = running.deadline
                if deadline is not None:
                    timeout = min(timeout, max(0.0, deadline - now))
        return timeout

    def _handle(self, events: list[tuple[selectors.SelectorKey, int]]) -> None:
        for key, _ in events:
            child = key.data
            if child is None:
                os.read(self._wake_read, 4096)
            elif key.fileobj is child.conn:
                self._receive(child)
            elif not child.process.is_alive():
                self._died(child)

    def _receive(self, child: Child) -> None:
        if not self._drain(child):
            self._died(child)

    def _drain(self, child: Child) -> bool:
        """Handle every message the child has sent; False once its pipe is closed."""
        try:
            messages, open_ = child.inbound.read()
            for message in messages:
                if isinstance(message, Ready):
                    child.ready = True
                    self._start_failures = 0
                    if not self.ready:
                        self.ready = True
                        self.on_ready()
                    if not self.all_ready and all(each.ready for each in self.children):
                        self.all_ready = True
                        self.on_all_ready()
                elif isinstance(message, Returned):
                    self._returned(child, message.ids)
                else:
                    child.max_rss_mb = message.max_rss_mb
                    self._finished(child, message.outcome)
        except (EOFError, OSError):
            return False
        return open_

    def _returned(self, child: Child, ids: list[int]) -> None:
        """A stopping child gave back tasks it had not started."""
        returned = set(ids)
        child.queued = deque(job for job in child.queued if job.id not in returned)
        self.give_back(ids)

    def _finished(self, child: Child, outcome: Outcome) -> None:
        child.running.pop(outcome.id, None)
        child.start_queued(self.on_start)
        if outcome.id in child.cancel_sent:
            child.cancel_sent.discard(outcome.id)
            for index, value in enumerate(child.cancelled):
                if value == outcome.id:
                    child.cancelled[index] = 0
        child.tasks_run += 1
        self.deliver(outcome)
        reason = None
        if self.max_tasks_per_child and child.tasks_run >= self.max_tasks_per_child:
            reason = f"it ran {child.tasks_run} tasks"
        elif self.max_memory_per_child and child.max_rss_mb > self.max_memory_per_child:
            reason = f"it uses {child.max_rss_mb:.0f} MB"
        if reason and not child.retiring:
            logger.info(
                "Worker %s replaces child %s: %s", self.worker_id, child.process.pid, reason
            )
            child.retiring = True

    def _enforce_limits(self) -> None:
        now = time.monotonic()
        looking = self.any_cancel_requested()
        for child in list(self.children):
            for job in child.queued if looking else ():  # the child checks before it starts one
                if job.id not in child.cancel_sent and self.cancel_requested(job.id):
                    child.request_cancel(job.id)
            for running in list(child.running.values()):
                job = running.job
                if not running.cancel_sent and self.cancel_requested(job.id):
                    if job.id not in child.cancel_sent:
                        child.request_cancel(job.id)
                    running.cancel_sent = True
                    if self.terminate_requested(job.id):
                        running.terminate_at = now + TERMINATE_GRACE
                if running.terminate_at is not None and now >= running.terminate_at:
                    self._kill_child(
                        child,
                        job,
                        TaskCancelled(
                            f"Task {job.name} #{job.id} was cancelled; it did not stop within "
                            f"{TERMINATE_GRACE}s, so the process running it was killed."
                        ),
                    )
                    break
                deadline = running.deadline
                if deadline is not None and now >= deadline:
                    self._kill_child(
                        child,
                        job,
                        TimeLimitExceeded(
                            f"Task {job.name} #{job.id} ran longer than its time limit of "
                            f"{job.timeout}s; the process running it was killed."
                        ),
                    )
                    break

    def _kill_child(self, child: Child, culprit: ClaimedTask, reason: BaseException) -> None:
        child.kill()
        self._drain(child)  # reports sent just before the kill still count
        now = time.monotonic()
        for running in child.running.values():
            job = running.job
            duration = now - running.started
            if job.id == culprit.id:
                outcome = self.runner.ended_outside(job, reason, duration)
            else:  # another thread of the same child ran into the kill: not its doing
                outcome = self.runner.ended_outside(
                    job,
                    WorkerLost(
                        f"The process running task {job.name} #{job.id} was killed because "
                        f"task {culprit.name} #{culprit.id} in it had to be stopped."
                    ),
                    duration,
                )
            self.deliver(outcome)
        child.running.clear()
        self._requeue(child)
        self._forget(child)
        self._replace(child)

    def _died(self, child: Child) -> None:
        if child.conn.closed:
            return  # handled already: the pipe and the sentinel both reported it
        child.process.join(timeout=5)
        self._drain(child)  # reports sent just before it died still count
        if child in self._retired:
            self._retired.remove(child)
            self._forget(child)
            return
        if child not in self.children:
            return
        if child.process.is_alive():  # the pipe broke but the process lingers: end it
            child.kill()
        description = _describe_exit(child.process.exitcode)
        if not child.ready and not (self._closing or self._draining):
            self._start_failures += 1
            if self._start_failures >= MAX_START_FAILURES:
                self._forget(child)
                self.on_fatal(
                    f"{self._start_failures} child processes in a row died while starting "
                    f"(last: {description}); their error is above"
                )
                self._draining = True
                return
        now = time.monotonic()
        killed_from_outside = _killed_from_outside(child.process.exitcode)
        for running in child.running.values():
            job, duration = running.job, now - running.started
            if killed_from_outside:
                # The out-of-memory killer or an operator: nothing the task did, as far as we
                # can tell, so the attempt is lost and runs again (up to the lost cap).
                outcome = self.runner.ended_outside(
                    job,
                    WorkerLost(
                        f"The process running task {job.name} #{job.id} was {description} "
                        "from outside (out-of-memory killer, operator); the attempt was lost."
                    ),
                    duration,
                )
            else:
                outcome = self.runner.ended_outside(
                    job,
                    ProcessDied(
                        f"The process running task {job.name} #{job.id} died ({description}) "
                        "while the task ran: it exited or crashed by the task's doing."
                    ),
                    duration,
                )
            self.deliver(outcome)
        if not child.running and not (self._closing or self._draining):
            logger.warning(
                "Worker %s: child %s died (%s) while idle; starting another",
                self.worker_id, child.process.pid, description,
            )  # fmt: skip
        child.running.clear()
        self._requeue(child)
        self._forget(child)
        self._replace(child)

    def _requeue(self, child: Child) -> None:
        """Tasks queued in a child that is gone never started: another child runs them."""
        if not child.queued:
            return
        if self._closing or self._draining:
            self.give_back([job.id for job in child.queued])
        else:
            with self._lock:
                self._pending.extendleft(reversed(child.queued))
        child.queued.clear()

    def _replace(self, child: Child) -> None:
        if child in self.children and not (self._closing or self._draining):
            self.children[self.children.index(child)] = self._new_child()

    def _replace_retired(self) -> None:
        """Start the successor of each retiring child once it has nothing running."""
        for child in list(self.children):
            if child.retiring and not child.running:
                child.send(("stop",))
                self._retired.append(child)
                self._replace(child)

    def _stop_children(self) -> None:
        children = self.children + self._retired
        if self._kill:
            for child in children:
                child.kill()
            return
        for child in children:
            child.send(("stop",))
        deadline = time.monotonic() + 10
        for child in children:
            child.process.join(timeout=max(0.0, deadline - time.monotonic()))

    def _new_child(self) -> Child:
        child = Child.start(
            worker_id=self.worker_id,
            backend_alias=self.backend_alias,
            threads=self.threads,
            watch_memory=bool(self.max_memory_per_child),
        )
        self._selector.register(child.conn, selectors.EVENT_READ, child)
        self._selector.register(child.process.sentinel, selectors.EVENT_READ, child)
        return child

    def _forget(self, child: Child) -> None:
        """Stop watching a child that is gone, and close its pipe."""
        if child.conn.closed:
            return
        self._selector.unregister(child.conn)
        self._selector.unregister(child.process.sentinel)
        child.conn.close()
        child.inbound.close()


class _Inbound:
    """The messages a child sent, read without blocking: every message waiting in the pipe
    for one read, where ``Connection.poll()`` and ``recv()`` take three system calls each.

    Reads the framing of :class:`multiprocessing.connection.Connection`, which the child
    writes with: a 4-byte big-endian length (-1 and an 8-byte one for huge messages), then the
    pickle."""

    def __init__(self, conn: Connection) -> None:
        # A socket object over a copy of the descriptor, for recv(MSG_DONTWAIT): the pipe stays
        # blocking for the supervisor's sends.
        self.socket = socket.socket(fileno=os.dup(conn.fileno()))
        self.buffer = bytearray()

    def read(self) -> tuple[list, bool]:
        """The complete messages waiting, and whether the pipe is still open."""
        open_ = True
        while True:
            try:
                data = self.socket.recv(_READ_SIZE, socket.MSG_DONTWAIT)
            except (BlockingIOError, InterruptedError):
                break
            if not data:
                open_ = False
                break
            self.buffer += data
            if len(data) < _READ_SIZE:
                break
        return self._messages(), open_

    def _messages(self) -> list:
        messages = []
        buffer, start = self.buffer, 0
        with memoryview(buffer) as view:
            while len(buffer) - start >= 4:
                (size,) = _LENGTH.unpack_from(buffer, start)
                header = 4
                if size == -1:
                    if len(buffer) - start < 12:
                        break
                    (size,) = _HUGE_LENGTH.unpack_from(buffer, start + 4)
                    header = 12
                end = start + header + size
                if len(buffer) < end:
                    break
                # Our own child's messages, as multiprocessing itself would unpickle them.
                messages.append(pickle.loads(view[start + header : end]))  # noqa: S301
                start = end
        if start:
            del buffer[:start]
        return messages

    def close(self) -> None:
        self.socket.close()


_READ_SIZE = 1 << 16
_LENGTH = struct.Struct("!i")
_HUGE_LENGTH = struct.Struct("!Q")


# Signals another process sends: the kernel's out-of-memory killer (SIGKILL), an operator or
# a supervisor. Signals a process raises against itself (SIGSEGV, SIGABRT, SIGBUS, SIGFPE,
# SIGILL: a crash in the task's code or a native extension) and exit statuses are the task's.
_OUTSIDE_SIGNALS = frozenset({signal.SIGKILL, signal.SIGTERM, signal.SIGHUP, signal.SIGINT,
                              signal.SIGQUIT})  # fmt: skip


def _killed_from_outside(code: int | None) -> bool:
    return code is not None and code < 0 and -code in _OUTSIDE_SIGNALS


def _describe_exit(code: int | None) -> str:
    if code is None:
        return "exit status unknown"
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit status {code}"
