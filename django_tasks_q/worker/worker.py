"""The worker loop: claim ready tasks in batches, hand them to a pool, record outcomes in batches.

One thread (the caller of :meth:`Worker.run`) owns the queue connection and is the only one
talking to the queue; the pool (threads of this process, or child processes) only runs task
functions. A listener thread turns NOTIFY into a wake-up; polling every ``poll_interval``
seconds covers everything else.
"""

from __future__ import annotations

import heapq
import logging
import os
import queue as stdlib_queue
import signal
import socket
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import psycopg

from django_tasks_q.backend import PostgresBackend
from django_tasks_q.backoff import Backoff, describe_database_error
from django_tasks_q.errors import described_entry
from django_tasks_q.queue import (
    NOTHING_PAUSED,
    ClaimedTask,
    Outcome,
    QueueConnection,
    parse_ready_notice,
)
from django_tasks_q.retry import UNKNOWN_TASK_DELAY, UNREACHABLE_RETRY_DELAY
from django_tasks_q.worker.claim_floor import ClaimFloor
from django_tasks_q.worker.claim_sizer import RECORD_WITHIN, ClaimSizer
from django_tasks_q.worker.health_file import HealthFile
from django_tasks_q.worker.heartbeat import Heartbeat
from django_tasks_q.worker.listener import Listener
from django_tasks_q.worker.options import WorkerOptions
from django_tasks_q.worker.pool import ProcessPool
from django_tasks_q.worker.pruner import Pruner
from django_tasks_q.worker.rescuer import Rescuer
from django_tasks_q.worker.runner import Runner, as_declared
from django_tasks_q.worker.threads import ThreadPool
from django_tasks_q.worker.unknown_tasks import UnknownTasks

if TYPE_CHECKING:
    from django_tasks_q.metrics import WorkerMetrics

logger = logging.getLogger("django_tasks_q.worker")


def unique_worker_id(name: str) -> str:
    """The id of one process start under ``name``: never the id of an earlier start, so a
    restarted worker cannot mistake its predecessor's tasks for its own."""
    return f"{name}-{uuid.uuid4().hex[:6]}"


# With notifications, what is paused is also read this often, in case one was missed.
PAUSES_REREAD = 30.0


class Worker:
    """Runs tasks until stopped (or, with ``burst``, until no ready task is left).

    Its options are a :class:`WorkerOptions` (``options=``) or the same keywords
    (``Worker(backend=backend, concurrency=8)``).
    """

    def __init__(
        self,
        *,
        backend: PostgresBackend,
        options: WorkerOptions | None = None,
        services: Sequence[Callable[[threading.Event], None]] = (),
        metrics: WorkerMetrics | None = None,
        **option_values: Any,
    ) -> None:
        if options is None:
            options = WorkerOptions.from_keywords(**option_values)
        elif option_values:
            raise TypeError(
                f"pass options= or keyword options, not both (got {', '.join(option_values)})"
            )
        self.options = options
        self.backend = backend
        # Run on threads of their own until the worker stops (the embedded beat is one).
        self.services = list(services)
        self.metrics = metrics
        self._stop_requested_at: float | None = None
        self._exit_code = 0
        self.name = options.name
        self.worker_id = unique_worker_id(self.name)
        self.health_file = HealthFile(options.health_file)
        # Ids of held tasks whose cancellation was requested; read by running tasks' contexts.
        self._cancel_requested: set[int] = set()
        self._terminate_requested: set[int] = set()
        self.runner = Runner(
            worker_id=self.worker_id,
            backend=backend,
            is_cancel_requested=self._cancel_requested.__contains__,
        )
        self.succeeded = 0
        self.failed = 0
        heartbeat_connection = QueueConnection(
            backend.database, application_name=f"django_tasks_q heartbeat {self.worker_id}"
        )
        self.rescuer = Rescuer(
            connection=heartbeat_connection,
            worker_id=self.worker_id,
            name=self.name,
            runner=self.runner,
            on_ready=self._after_recovery,
            notify=options.listen,
        )
        self.heartbeat = Heartbeat(
            worker_id=self.worker_id,
            connection=heartbeat_connection,
            interval=options.heartbeat_interval,
            lease_seconds=options.lease_seconds,
            register=self._register,
            counters=lambda: (self.succeeded, self.failed),
            rescuer=self.rescuer,
            on_cancel_requested=self._on_cancel_requested,
            # A copy made in one step: the main thread changes the set meanwhile.
            held=lambda: self._held.copy(),
            pruner=Pruner(
                connection=heartbeat_connection,
                keep_successful=options.keep_successful,
                keep_failed=options.keep_failed,
            ),
        )
        self.connection = QueueConnection(
            backend.database, application_name=f"django_tasks_q worker {self.worker_id}"
        )
        # Set when the listener (re)connects: the main loop's backoff ends early.
        self._database_back = threading.Event()
        self.listener = Listener(
            database=backend.database,
            worker_id=self.worker_id,
            on_ready=self._on_ready_notice,
            on_cancel=self._on_cancel_notice,
            on_connected=self._on_listener_connected,
            on_pause=self._on_pause_notice,
        )
        self.processed = 0
        self.executor = self._make_pool()
        self._outcomes: stdlib_queue.SimpleQueue[Outcome] = stdlib_queue.SimpleQueue()
        # Ids the pool gave back unstarted (children stopping with tasks queued in them).
        self._given_back: stdlib_queue.SimpleQueue[list[int]] = stdlib_queue.SimpleQueue()
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._stopped = threading.Event()  # set once shutdown is complete
        # Ids claimed by this worker whose outcome is not recorded yet.
        self._held: set[int] = set()
        # Held tasks whose end may make others READY: their dependents, or the tasks their
        # concurrency limits hold back.
        self._with_dependents: set[int] = set()
        self._limited: set[int] = set()  # held tasks that hold a concurrency limit
        self._looked_from_start = False  # burst: the last claim, from the start, found nothing
        # When starts a rate limit reserved for tasks this worker claimed come (monotonic).
        self._reserved_starts: list[float] = []
        self._paused = NOTHING_PAUSED
        self._pauses_stale = True  # read before the first claim
        self._pauses_read_at = 0.0
        self._reconcile = False
        self._unrecorded: list[Outcome] = []
        self._unrecorded_since = 0.0  # time.monotonic() of the oldest
        self._unstarted: list[Outcome] = []  # could not start: to give back
        # False once a claim came back short; a notification, a retry or the poll resets it.
        self._maybe_ready = True
        self._next_poll = 0.0  # time.monotonic() of the next look without a notification
        self.claim_sizer = ClaimSizer(
            capacity=options.capacity, batch_size=options.batch_size, prefetch=options.prefetch
        )
        self.claim_floor = ClaimFloor(options.queues)
        self._signals_received = 0
        self._abandon = False
        self._started_at = time.monotonic()
        self.unknown_tasks = UnknownTasks(worker_id=self.worker_id)

    # -- lifecycle ----------------------------------------------------------------------

    def stop(self) -> None:
        """Stop claiming; running tasks finish, unstarted ones go back to READY."""
        if self._stop_requested_at is None:
            self._stop_requested_at = time.monotonic()
        self._stopping.set()
        self._wake.set()
        self._database_back.set()

    def run(self) -> int:
        """Run until stopped. Returns the process exit code (0 after a clean stop)."""
        options = self.options
        self._started_at = time.monotonic()
        logger.info(
            "Worker %s (%s) starting: queues=%s pool=%s concurrency=%s%s batch_size=%s listen=%s",
            self.worker_id, self.name, options.queue_names, options.pool, options.concurrency,
            f" threads={options.threads}" if options.pool == "processes" else "",
            options.batch_size, options.listen,
        )  # fmt: skip
        if not self._register_when_the_database_answers():
            self.health_file.remove()
            return self._exit_code  # stopped before the database ever answered
        self._recover_predecessors()
        heartbeat = threading.Thread(
            target=self.heartbeat.run, args=(self._stopped,), name="tasks-q-heartbeat", daemon=True
        )
        heartbeat.start()
        self.executor.start()
        listener = None
        if options.listen:
            listener = threading.Thread(
                target=self.listener.run, args=(self._stopping,), name="tasks-q-listener",
                daemon=True,
            )  # fmt: skip
            listener.start()
        services = [
            threading.Thread(target=self._run_service, args=(service,), daemon=True,
                             name=f"tasks-q-service-{index}")
            for index, service in enumerate(self.services)
        ]  # fmt: skip
        for thread in services:
            thread.start()
        try:
            self._loop()
        finally:
            try:
                self._shutdown()
            finally:
                self._stopped.set()
                for thread in services:
                    thread.join(timeout=10)
                heartbeat.join(timeout=5)
                if listener is not None:
                    # It hears _stopping within a second and closes its connection: a worker
                    # run in-process (burst) leaves no session behind when run() returns.
                    self._stopping.set()
                    listener.join(timeout=5)
                self._say_stopped()
                self.health_file.remove()
        logger.info("Worker %s stopped after %s task attempts", self.worker_id, self.processed)
        return self._exit_code

    def _run_service(self, service: Callable[[threading.Event], None]) -> None:
        from django.db import connections

        try:
            service(self._stopping)
        except Exception:
            logger.exception("Worker %s: %r stopped with an error", self.worker_id, service)
        finally:
            connections.close_all()

    def _recover_predecessors(self) -> None:
        try:
            self.rescuer.recover_predecessors()
        except psycopg.OperationalError as exc:  # the heartbeat's lease rescue covers them
            logger.warning(
                "Worker %s could not recover its predecessors' tasks yet: %s", self.worker_id, exc
            )
            self.rescuer.connection.close()

    def _register_when_the_database_answers(self) -> bool:
        """Register this worker, waiting with a backoff while the database cannot be reached
        (down, restarting, or out of connections): a worker started before its database, as
        containers often are, waits for it. False if stopped meanwhile."""
        backoff = Backoff()
        while not self._stopping.is_set():
            self.health_file.touch()  # waiting for the database is not being stuck
            try:
                self._register(self.connection)
                return True
            except psycopg.OperationalError as exc:
                delay = backoff.next()
                logger.error(
                    "Worker %s cannot reach the database to start (%s); trying again in %.1fs",
                    self.worker_id, describe_database_error(exc), delay,
                )  # fmt: skip
                self.connection.close()
                self._stopping.wait(delay)
        return False

    def _register(self, connection: QueueConnection) -> None:
        connection.register_worker(
            worker_id=self.worker_id,
            name=self.name,
            hostname=socket.gethostname(),
            pid=os.getpid(),
            queues=self.options.queues,
            concurrency=self.options.capacity,
        )

    def _on_cancel_requested(self, ids: list[int], terminate: list[int]) -> None:
        self._cancel_requested.update(ids)
        self._terminate_requested.update(terminate)
        self.executor.cancel_requested_changed()

    def _on_cancel_notice(self, task_id: int, terminate: bool) -> None:
        """A task's cancellation was requested: if this worker holds it, act at once (a
        claimed task that has not started must never start)."""
        if task_id in self._held:
            self._on_cancel_requested([task_id], [task_id] if terminate else [])

    def _on_listener_connected(self) -> None:
        self._pauses_stale = True  # a pause notification may have been missed meanwhile
        self._database_back.set()

    def _on_pause_notice(self) -> None:
        self._pauses_stale = True
        self._look_for_work()

    def _read_pauses(self) -> None:
        """Read what is paused if it may have changed: at once after a notification, else
        every poll interval without notifications, and every PAUSES_REREAD seconds with
        them (a notification missed while the listener reconnected)."""
        every = PAUSES_REREAD if self.options.listen else self.options.poll_interval
        now = time.monotonic()
        if not self._pauses_stale and now - self._pauses_read_at < every:
            return
        self._pauses_stale = False
        paused = self.connection.paused()
        self._pauses_read_at = now
        if not (
            paused.queues >= self._paused.queues and paused.task_names >= self._paused.task_names
        ):
            # Resumed: what stayed READY while paused may sit behind the claim floor.
            self.claim_floor.forget()
        self._paused = paused

    def _look_for_work(self) -> None:
        self._maybe_ready = True
        self._wake.set()

    def _on_ready_notice(self, payload: str) -> None:
        notice = parse_ready_notice(payload)
        self.claim_floor.lower(notice.queue, notice.position)
        self._look_for_work()

    def _after_recovery(self) -> None:
        if not self.options.listen:
            # Recovered tasks sit behind the claim floor, and no notification says where.
            self.claim_floor.forget()
        self._look_for_work()

    def _say_stopped(self) -> None:
        try:
            self.heartbeat.stop()
        except psycopg.Error as exc:
            logger.warning("Worker %s could not mark itself stopped: %s", self.worker_id, exc)
        finally:
            self.heartbeat.connection.close()

    def install_signal_handlers(self) -> None:
        """SIGTERM / SIGINT stop the worker gracefully; a second one exits at once."""

        def on_signal(signum: int, frame: object) -> None:
            self._signals_received += 1
            if self._signals_received == 1:
                logger.info(
                    "Worker %s got %s: finishing running tasks, then exiting",
                    self.worker_id, signal.Signals(signum).name,
                )  # fmt: skip
                self.stop()
            else:
                logger.warning(
                    "Worker %s got a second signal: exiting now, abandoning running tasks",
                    self.worker_id,
                )
                self._abandon = True
                raise SystemExit(1)

        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)

    # -- main loop ----------------------------------------------------------------------

    def _loop(self) -> None:
        backoff = Backoff()
        lost_since: float | None = None
        while not self._stopping.is_set():
            self.health_file.touch()
            try:
                did_work = self._finish_and_claim()
                backoff.reset()
            except psycopg.errors.DeadlockDetected as exc:
                # A deadlock (two statements settling shared workflow dependents in opposite
                # orders, or another session's locks): PostgreSQL rolled this statement back
                # and the connection is fine. Nothing was recorded; do it again at once.
                logger.warning(
                    "Worker %s: the queue statement was rolled back (%s); doing it again",
                    self.worker_id, describe_database_error(exc),
                )  # fmt: skip
                continue
            except psycopg.OperationalError as exc:
                delay = backoff.next()
                lost_since = lost_since or time.monotonic()
                self._lost_database(exc, delay)
                # The listener reconnecting means the database is back: retry then, not
                # at the end of a backoff that may have grown to half a minute.
                self._database_back.clear()
                self._database_back.wait(delay)
                continue
            except psycopg.Error:
                # Not the connection: a statement the database refused. Nothing it carried
                # was lost (outcomes stay unrecorded); try again rather than exit.
                delay = backoff.next()
                logger.exception(
                    "Worker %s: the queue statement failed; trying again in %.1fs",
                    self.worker_id, delay,
                )  # fmt: skip
                self._stopping.wait(delay)
                continue
            if lost_since is not None:
                logger.warning(
                    "Worker %s is connected to the database again, after %.1fs",
                    self.worker_id, time.monotonic() - lost_since,
                )  # fmt: skip
                lost_since = None
            if did_work:
                continue
            if self.options.burst and not self._held and not self._maybe_ready:
                if self._looked_from_start:
                    return
                # Before exiting, one claim from the start: a task made READY behind this
                # worker's claim floor (a higher priority released by a trigger, with no
                # notification to hear) is found there.
                self._looked_from_start = True
                self.claim_floor.forget()
                self._maybe_ready = True
                continue
            self._wake.wait(self._idle_wait())
            self._wake.clear()
            now = time.monotonic()
            if now >= self._next_poll:
                self._maybe_ready = True  # the poll: look again even without a notification
                self._next_poll = now + self.options.poll_interval
            if self._reserved_starts and now >= self._reserved_starts[0]:
                self._maybe_ready = True  # a start a rate limit reserved has come
                while self._reserved_starts and now >= self._reserved_starts[0]:
                    heapq.heappop(self._reserved_starts)

    def _lost_database(self, exc: Exception, retry_in: float) -> None:
        logger.error(
            "Worker %s lost the database (%s); reconnecting in %.1fs",
            self.worker_id, describe_database_error(exc), retry_in,
        )  # fmt: skip
        self.connection.close()
        # The last statement may have committed without us seeing the answer: then rows were
        # claimed that no thread will run. Give them back once the database answers again.
        self._reconcile = True

    def _claim_limit(self, *, recording: bool) -> int:
        """How many tasks to claim now: none unless a claim may find some and the pool can
        take them. ``recording``: a statement records outcomes anyway, so a claim costs no
        round trip of its own."""
        if not self._maybe_ready or self._stopping.is_set() or not self.executor.ready:
            return 0
        # A finished task frees its slot now, not once its outcome is recorded: the claim that
        # replaces it then goes with that outcome, in the same statement.
        held = len(self._held) - len(self._unrecorded)
        return self.claim_sizer.limit(held=held, riding=recording)

    def _finish_and_claim(self) -> bool:
        """Record finished outcomes and claim more, in one round trip. Returns whether it did
        anything."""
        gave_back = self._release_given_back()
        self._take_delivered()
        self._give_back_unstarted()
        recording = self._outcomes_due()
        limit = self._claim_limit(recording=recording)
        if not limit and not recording:
            return gave_back
        if self._reconcile:
            released = self.connection.release_unknown(
                worker_id=self.worker_id, known=self._held, notify=self.options.listen
            )
            self._reconcile = False
            if released:
                logger.warning(
                    "Worker %s returned %s tasks claimed while the connection was lost",
                    self.worker_id, released,
                )  # fmt: skip
        outcomes = self._unrecorded
        if limit and self._limited and any(outcome.id in self._limited for outcome in outcomes):
            # Their ends release what their limits hold back, in a trigger that may wait for
            # another worker's claim of the same key: a statement that claims too could wait
            # for that claim while it waits for this one's keys (migration 0009). The claim
            # follows in a statement of its own.
            limit = 0
        if limit:
            self._read_pauses()
        start = self.claim_floor.start() if limit else None
        began = time.perf_counter()
        try:
            updated, claimed, skipped, parked, throttled = self.connection.finish_and_claim(
                worker_id=self.worker_id,
                outcomes=outcomes,
                queues=self.options.queues,
                limit=limit,
                lease_seconds=self.options.lease_seconds,
                avoid=self.unknown_tasks.avoided(),
                after=start.positions if start else (),
                paused=self._paused,
            )
        except psycopg.OperationalError:
            self.claim_floor.forget()  # the notifications this claim took in are not used
            raise
        except psycopg.Error as exc:
            self.claim_floor.forget()
            if not outcomes:
                raise
            # One outcome the database refuses must not take the others, or the worker, down.
            updated, claimed, skipped, parked, throttled = (
                self._record_one_by_one(outcomes, exc),
                [],
                [],
                [],
                [],
            )
            limit = 0
        # Recorded: only now may they be forgotten (a lost connection keeps them for the retry).
        self._unrecorded = []
        took = time.perf_counter() - began
        self.claim_sizer.observe_round_trip(took)
        if start and limit:  # limit is 0 when outcomes had to be recorded one by one
            self.claim_floor.advance(
                start, (*claimed, *skipped, *parked), limit=limit, seconds=took
            )
        for outcome in outcomes:
            self.claim_sizer.observe_duration(outcome.duration)
        if outcomes:
            self._held.difference_update(o.id for o in outcomes)
            self._limited.difference_update(o.id for o in outcomes)
            self._cancel_requested.difference_update(o.id for o in outcomes)
            self._terminate_requested.difference_update(o.id for o in outcomes)
            for outcome in outcomes:
                if outcome.id in updated and outcome.status == "SUCCESSFUL":
                    self.succeeded += 1
                elif outcome.id in updated and outcome.status == "FAILED":
                    self.failed += 1
            self.processed += len(outcomes)
            if len(updated) != len(outcomes):
                self._warn_lost(outcomes, updated)
        if self.metrics:
            self.metrics.recorded(outcomes, updated)
            self.metrics.claimed(claimed)
        for task in skipped:  # cancelled by the claim: expired, or cancelled before it started
            self.runner.announce(task, "CANCELLED", task.errors[-1], holder="")
        if claimed or skipped or parked or throttled:
            self._looked_from_start = False
        if limit:
            self._held.update(task.id for task in claimed)
            runnable: list[ClaimedTask] = []
            deferred: list[ClaimedTask] = []
            for task in claimed:
                if self.unknown_tasks.runs_here(task):
                    runnable.append(as_declared(task))
                else:
                    deferred.append(task)
            self._with_dependents.update(
                task.id for task in claimed if task.has_dependents or task.limited
            )
            self._limited.update(task.id for task in claimed if task.limited)
            self._with_dependents.update(task.id for task in skipped if task.has_dependents)
            if runnable:
                self.executor.submit(runnable)
            if deferred:
                self._defer_unknown(deferred)
            # Throttled tasks count as picked, but left their place in claim order for a later
            # one: the floor (advanced above) must not follow them there.
            if len(claimed) + len(skipped) + len(parked) + len(throttled) < limit:
                self._maybe_ready = False  # drained: wait for a notification or the next poll
                self._next_poll = time.monotonic() + self.options.poll_interval
            if throttled:
                self._look_again_at_reserved_starts(throttled)
        if any(outcome.status == "READY" for outcome in outcomes) or self._settled_dependents(
            outcomes, skipped
        ):
            # A retry may be due at once, or a dependent made READY by this outcome; the claim
            # of the statement that did it could not see it yet (one statement, one snapshot).
            self._maybe_ready = True
        return True

    def _look_again_at_reserved_starts(self, throttled: list[ClaimedTask]) -> None:
        """Look again when each start a rate limit reserved for these tasks comes: no
        notification announces them. Times are the database's; a host clock off by a little
        makes the worker look a little early or late (a start never comes sooner than its
        reservation: the claim compares with the database's clock)."""
        now, monotonic = datetime.now(UTC), time.monotonic()
        for task in throttled:
            heapq.heappush(
                self._reserved_starts,
                monotonic + max(0.0, (task.run_after - now).total_seconds()),
            )

    def _settled_dependents(self, outcomes: list[Outcome], skipped: list[ClaimedTask]) -> bool:
        """Whether a task just finished had dependents (that may be READY now)."""
        if not self._with_dependents:
            return False
        finished = {outcome.id for outcome in outcomes} | {task.id for task in skipped}
        settled = finished & self._with_dependents
        self._with_dependents -= finished
        return bool(settled)

    def _outcomes_due(self) -> bool:
        """Whether to record the unrecorded outcomes now: the sizer's rule, or the worker
        is stopping."""
        return bool(self._unrecorded) and (
            self._stopping.is_set()
            or self.claim_sizer.record_now(
                held=len(self._held),
                unrecorded=len(self._unrecorded),
                waited=time.monotonic() - self._unrecorded_since,
            )
        )

    def _idle_wait(self) -> float:
        """Seconds the main loop may sleep: until the next poll, the next start a rate limit
        reserved for a task this worker claimed, or the oldest unrecorded outcome is due. A
        delivery or a notification wakes it sooner."""
        now = time.monotonic()
        wait = self._next_poll - now
        if self._reserved_starts:
            wait = min(wait, self._reserved_starts[0] - now)
        if self._unrecorded:
            wait = min(wait, self._unrecorded_since + RECORD_WITHIN - now)
        return max(0.0, wait)

    def _take_delivered(self) -> None:
        """Move outcomes the pool delivered into those waiting to be recorded, and tasks that
        could not start into those to give back."""
        while True:
            try:
                outcome = self._outcomes.get_nowait()
            except stdlib_queue.Empty:
                return
            if outcome.started and not self._unrecorded:
                self._unrecorded_since = time.monotonic()
            (self._unrecorded if outcome.started else self._unstarted).append(outcome)

    def _give_back_unstarted(self) -> None:
        """Give back the tasks that could not start, without counting their attempt. Due again
        shortly, not at once: the database refused this worker's executors a connection, and
        claiming them straight back would only spin. Kept until given back: a lost connection
        leaves them for the next try."""
        if not self._unstarted:
            return
        ids = [outcome.id for outcome in self._unstarted]
        self.connection.release(
            worker_id=self.worker_id, ids=ids, delay=UNREACHABLE_RETRY_DELAY, notify=False
        )
        self._unstarted = []
        self._held.difference_update(ids)
        self._limited.difference_update(ids)
        if self.metrics:
            self.metrics.released(ids)

    def _record_one_by_one(self, outcomes: list[Outcome], failure: psycopg.Error) -> set[int]:
        """Record ``outcomes`` one per statement after a batch failed with ``failure``; each
        the database refuses is recorded as a failure that says why instead."""
        logger.error(
            "Worker %s could not record a batch of %s outcomes (%s); recording them one by one",
            self.worker_id, len(outcomes), failure,
        )  # fmt: skip
        updated: set[int] = set()
        for index, outcome in enumerate(outcomes):
            try:
                updated |= self.connection.finish(worker_id=self.worker_id, outcomes=[outcome])
                continue
            except psycopg.OperationalError:
                self._unrecorded = outcomes[index:]
                raise
            except psycopg.Error as exc:
                refused = exc
            replacement = Outcome(
                id=outcome.id,
                attempt=outcome.attempt,
                status="FAILED",
                error=described_entry(
                    type_path="django_tasks_q.exceptions.OutcomeNotStored",
                    message=(
                        f"The attempt ended {outcome.status}, but the database refused to "
                        f"store that outcome: {refused}"
                    ),
                    attempt=outcome.attempt,
                    worker_id=self.worker_id,
                ),
                max_attempts=outcome.max_attempts,
                duration=outcome.duration,
            )
            logger.error(
                "Worker %s: task #%s's outcome could not be stored (%s); recorded as FAILED",
                self.worker_id, outcome.id, refused,
            )  # fmt: skip
            updated |= self.connection.finish(worker_id=self.worker_id, outcomes=[replacement])
        return updated

    def _defer_unknown(self, tasks: list[ClaimedTask]) -> None:
        """Give back tasks of unknown names without counting an attempt, due again shortly,
        for a worker that knows them."""
        ids = [task.id for task in tasks]
        self.connection.release(
            worker_id=self.worker_id, ids=ids, delay=UNKNOWN_TASK_DELAY, notify=False
        )
        self._held.difference_update(ids)
        self._limited.difference_update(ids)
        if self.metrics:
            self.metrics.released(ids)
        self.unknown_tasks.avoid(tasks)

    def _warn_lost(self, outcomes: list[Outcome], updated: set[int]) -> None:
        lost = sorted({o.id for o in outcomes} - updated)
        logger.warning(
            "Worker %s no longer held tasks %s when they finished; their outcome was "
            "not recorded (cancelled or recovered meanwhile)",
            self.worker_id, lost,
        )  # fmt: skip

    # -- pool -----------------------------------------------------------------------------

    def _make_pool(self) -> ThreadPool | ProcessPool:
        options = self.options
        if options.pool == "threads":
            return ThreadPool(
                worker_id=self.worker_id,
                runner=self.runner,
                deliver=self._deliver,
                threads=options.concurrency,
                on_start=self.metrics.started if self.metrics else None,
                on_all_ready=self._on_all_slots_ready,
            )
        return ProcessPool(
            worker_id=self.worker_id,
            backend_alias=self.backend.alias,
            runner=self.runner,
            deliver=self._deliver,
            give_back=self._give_back,
            on_ready=self._look_for_work,
            on_all_ready=self._on_all_slots_ready,
            on_fatal=self._on_pool_failed,
            processes=options.concurrency,
            threads=options.threads,
            max_tasks_per_child=options.max_tasks_per_child,
            max_memory_per_child=options.max_memory_per_child,
            cancel_requested=self._cancel_requested.__contains__,
            terminate_requested=self._terminate_requested.__contains__,
            any_cancel_requested=lambda: bool(self._cancel_requested),
            on_start=self.metrics.started if self.metrics else None,
            mean_duration=lambda: self.claim_sizer.mean_duration,
        )

    def _on_all_slots_ready(self) -> None:
        """Every slot can take a task now: the process pool's children have set Django up."""
        logger.info(
            "Worker %s ready: %s slots, %.1fs after starting",
            self.worker_id, self.options.capacity, time.monotonic() - self._started_at,
        )  # fmt: skip
        self.health_file.mark_ready()

    def _deliver(self, outcome: Outcome) -> None:
        self._outcomes.put(outcome)
        self._wake.set()

    def _on_pool_failed(self, reason: str) -> None:
        logger.error("Worker %s cannot run tasks: %s. Stopping.", self.worker_id, reason)
        self._exit_code = 1
        self.stop()

    def _give_back(self, ids: list[int]) -> None:
        self._given_back.put(ids)
        self._wake.set()

    def _release_given_back(self) -> bool:
        ids: list[int] = []
        while True:
            try:
                ids.extend(self._given_back.get_nowait())
            except stdlib_queue.Empty:
                break
        if not ids:
            return False
        try:
            released = self.connection.release(
                worker_id=self.worker_id, ids=ids, notify=self.options.listen
            )
        except psycopg.OperationalError:
            self._given_back.put(ids)
            raise
        self._held.difference_update(ids)
        self._limited.difference_update(ids)
        if self.metrics:
            self.metrics.released(ids)
        logger.info("Worker %s returned %s unstarted tasks to the queue", self.worker_id, released)
        return True

    # -- shutdown -------------------------------------------------------------------------

    def _shutdown(self) -> None:
        grace = self.options.grace_period
        unstarted = self.executor.take_unstarted()
        try:
            if unstarted:
                self._given_back.put(unstarted)
                self._release_given_back()
            while self._held:
                if self._grace_over():
                    logger.warning(
                        "Worker %s: grace period of %ss is over, stopping %s running tasks; "
                        "they run again elsewhere",
                        self.worker_id, grace, len(self._held),
                    )  # fmt: skip
                    self._abandon = True
                    self._exit_code = 1
                    break
                try:
                    if self._finish_and_claim():
                        continue
                except psycopg.OperationalError as exc:
                    self._lost_database(exc, 1.0)
                    continue
                self._wake.wait(1.0 if grace is None else min(1.0, grace))
                self._wake.clear()
        finally:
            self.executor.close(kill=self._abandon)
            if self._abandon:
                self._recover_abandoned()
            self.connection.close()

    def _recover_abandoned(self) -> None:
        """The worker stopped tasks it was running (grace period over, or a second signal): it
        knows they are lost, so they are recovered now rather than when their lease expires."""
        # Attempts that ended meanwhile are not lost: record them first, as far as possible.
        self._take_delivered()
        if self._unrecorded:
            try:
                self.connection.finish(worker_id=self.worker_id, outcomes=self._unrecorded)
            except psycopg.Error as exc:
                logger.warning("Worker %s could not record outcomes: %s", self.worker_id, exc)
        abandoned = sorted(self._held - {o.id for o in self._unrecorded})
        reason = (
            f"its grace period of {self.options.grace_period}s ran out"
            if self._grace_over()
            else "it was told to exit at once (a second signal)"
        )
        try:
            recovered = self.rescuer.recover_abandoned(abandoned, reason)
        except psycopg.Error as exc:
            logger.warning(
                "Worker %s could not recover the tasks it stopped (%s); they are recovered "
                "when their lease expires",
                self.worker_id, exc,
            )  # fmt: skip
            return
        if recovered:
            logger.info("Worker %s recovered %s tasks it stopped", self.worker_id, recovered)

    def _grace_over(self) -> bool:
        grace = self.options.grace_period
        if grace is None or self._stop_requested_at is None:
            return False
        return time.monotonic() - self._stop_requested_at >= grace
