"""The worker loop: claim ready tasks in batches, hand them to a pool, record outcomes in batches.

One thread (the caller of :meth:`Worker.run`) owns the queue connection and is the only one
talking to the queue; the pool (threads of this process, or child processes) only runs task
functions. A listener thread turns NOTIFY into a wake-up; polling every ``poll_interval``
seconds covers everything else.
"""

from __future__ import annotations

import logging
import os
import queue as stdlib_queue
import signal
import socket
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import psycopg

from django_tasks_q import registry
from django_tasks_q.backend import PostgresBackend
from django_tasks_q.conf import settings as conf
from django_tasks_q.errors import described_entry
from django_tasks_q.queue import (
    CANCEL_CHANNEL,
    ClaimedTask,
    Outcome,
    QueueConnection,
    listen_connection,
)
from django_tasks_q.retry import (
    UNKNOWN_TASK_AVOID,
    UNKNOWN_TASK_DELAY,
    unknown_task_waited_enough,
)
from django_tasks_q.worker.heartbeat import Heartbeat
from django_tasks_q.worker.pool import ProcessPool
from django_tasks_q.worker.pruner import Pruner
from django_tasks_q.worker.rescuer import Rescuer
from django_tasks_q.worker.runner import Runner
from django_tasks_q.worker.threads import ThreadPool

if TYPE_CHECKING:
    from django_tasks_q.metrics import WorkerMetrics

logger = logging.getLogger("django_tasks_q.worker")


def default_worker_name() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


def unique_worker_id(name: str) -> str:
    """The id of one process start under ``name``: never the id of an earlier start, so a
    restarted worker cannot mistake its predecessor's tasks for its own."""
    return f"{name}-{uuid.uuid4().hex[:6]}"


class Worker:
    """Runs tasks until stopped (or, with ``burst``, until no ready task is left)."""

    def __init__(
        self,
        *,
        backend: PostgresBackend,
        queues: Sequence[str] | None = None,
        concurrency: int = 4,
        threads: int = 1,
        batch_size: int = 50,
        prefetch: int | None = None,
        poll_interval: float = 1.0,
        lease_seconds: float = 60.0,
        heartbeat_interval: float = 5.0,
        grace_period: float | None = None,
        keep_successful: float | None = None,
        keep_failed: float | None = None,
        pool: str = "threads",
        max_tasks_per_child: int | None = None,
        max_memory_per_child: float | None = None,
        listen: bool = True,
        services: Sequence[Callable[[threading.Event], None]] = (),
        metrics: WorkerMetrics | None = None,
        burst: bool = False,
        name: str | None = None,
    ) -> None:
        if concurrency < 1:
            raise ValueError(f"concurrency must be at least 1, got {concurrency}")
        if threads < 1:
            raise ValueError(f"threads must be at least 1, got {threads}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        if poll_interval <= 0:
            raise ValueError(f"poll_interval must be > 0 seconds, got {poll_interval}")
        self.backend = backend
        self.queues = list(queues) if queues else None
        self.concurrency = concurrency
        self.batch_size = batch_size
        if prefetch is not None and prefetch < 0:
            raise ValueError(f"prefetch must be >= 0 or None (adaptive), got {prefetch}")
        # None: adapt to task durations (see _prefetch); a number fixes it.
        self.prefetch = prefetch
        self.poll_interval = poll_interval
        self.lease_seconds = lease_seconds
        self.listen = listen
        # Run on threads of their own until the worker stops (the embedded beat is one).
        self.services = list(services)
        self.metrics = metrics
        self.burst = burst
        if grace_period is not None and grace_period < 0:
            raise ValueError(f"grace period must be >= 0 seconds or None, got {grace_period}")
        self.grace_period = grace_period
        if pool not in ("threads", "processes"):
            raise ValueError(f"pool must be 'threads' or 'processes', got {pool!r}")
        if pool == "threads" and threads != 1:
            raise ValueError(
                "threads per child is for the process pool; with the thread pool, "
                "concurrency is the number of threads"
            )
        for option, value in (
            ("max_tasks_per_child", max_tasks_per_child),
            ("max_memory_per_child", max_memory_per_child),
        ):
            if value is not None and value <= 0:
                raise ValueError(f"{option} must be > 0 or None, got {value}")
        self.pool = pool
        self.threads = threads
        # Tasks this worker runs at once: processes x threads each, or threads.
        self.capacity = concurrency * threads
        self.max_tasks_per_child = max_tasks_per_child
        self.max_memory_per_child = max_memory_per_child
        self._stop_requested_at: float | None = None
        self._exit_code = 0
        self.name = name or default_worker_name()
        if len(self.name) > 90:
            raise ValueError(f"worker name must be at most 90 characters, got {len(self.name)}")
        self.worker_id = unique_worker_id(self.name)
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
            on_ready=self._look_for_work,
            notify=listen,
        )
        self.heartbeat = Heartbeat(
            worker_id=self.worker_id,
            connection=heartbeat_connection,
            interval=heartbeat_interval,
            lease_seconds=lease_seconds,
            register=self._register,
            counters=lambda: (self.succeeded, self.failed),
            rescuer=self.rescuer,
            on_cancel_requested=self._on_cancel_requested,
            pruner=Pruner(
                connection=heartbeat_connection,
                keep_successful=keep_successful,
                keep_failed=keep_failed,
            ),
        )
        self.connection = QueueConnection(
            backend.database, application_name=f"django_tasks_q worker {self.worker_id}"
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
        self._reconcile = False
        self._unrecorded: list[Outcome] = []
        # False once a claim came back short; a notification, a retry or the poll resets it.
        self._maybe_ready = True
        self._mean_duration: float | None = None
        self._mean_round_trip = 0.0
        self._signals_received = 0
        self._abandon = False
        # Task names this worker does not know, warned about once each; ids of such tasks it
        # gave back, with when it may claim them again (monotonic clock).
        self._unknown_names: set[str] = set()
        self._avoid_until: dict[int, float] = {}

    # -- lifecycle ----------------------------------------------------------------------

    def stop(self) -> None:
        """Stop claiming; running tasks finish, unstarted ones go back to READY."""
        if self._stop_requested_at is None:
            self._stop_requested_at = time.monotonic()
        self._stopping.set()
        self._wake.set()

    def run(self) -> int:
        """Run until stopped. Returns the process exit code (0 after a clean stop)."""
        logger.info(
            "Worker %s (%s) starting: queues=%s pool=%s concurrency=%s%s batch_size=%s listen=%s",
            self.worker_id, self.name, ",".join(self.queues) if self.queues else "*", self.pool,
            self.concurrency, f" threads={self.threads}" if self.pool == "processes" else "",
            self.batch_size, self.listen,
        )  # fmt: skip
        self._register(self.connection)
        self._recover_predecessors()
        heartbeat = threading.Thread(
            target=self.heartbeat.run, args=(self._stopped,), name="tasks-q-heartbeat", daemon=True
        )
        heartbeat.start()
        self.executor.start()
        if self.listen:
            threading.Thread(target=self._listen, name="tasks-q-listener", daemon=True).start()
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
                self._say_stopped()
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

    def _register(self, connection: QueueConnection) -> None:
        connection.register_worker(
            worker_id=self.worker_id,
            name=self.name,
            hostname=socket.gethostname(),
            pid=os.getpid(),
            queues=self.queues,
            concurrency=self.capacity,
        )

    def _on_cancel_requested(self, ids: list[int], terminate: list[int]) -> None:
        self._cancel_requested.update(ids)
        self._terminate_requested.update(terminate)
        self.executor.cancel_requested_changed()

    def _look_for_work(self) -> None:
        self._maybe_ready = True
        self._wake.set()

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
        backoff = 0.5
        while not self._stopping.is_set():
            try:
                did_work = self._exchange()
                backoff = 0.5
            except psycopg.OperationalError as exc:
                self._lost_database(exc, backoff)
                self._stopping.wait(backoff)
                backoff = min(backoff * 2, 30.0)
                continue
            except psycopg.Error:
                # Not the connection: a statement the database refused. Nothing it carried
                # was lost (outcomes stay unrecorded); try again rather than exit.
                logger.exception(
                    "Worker %s: the queue statement failed; trying again in %.1fs",
                    self.worker_id, backoff,
                )  # fmt: skip
                self._stopping.wait(backoff)
                backoff = min(backoff * 2, 30.0)
                continue
            if did_work:
                continue
            if self.burst and not self._held and not self._maybe_ready:
                return
            if not self._wake.wait(self.poll_interval):
                self._maybe_ready = True  # the poll: look again even without a notification
            self._wake.clear()

    def _lost_database(self, exc: Exception, retry_in: float) -> None:
        logger.error(
            "Worker %s lost the database (%s); reconnecting in %.1fs",
            self.worker_id, exc, retry_in,
        )  # fmt: skip
        self.connection.close()
        # The last statement may have committed without us seeing the answer: then rows were
        # claimed that no thread will run. Give them back once the database answers again.
        self._reconcile = True

    def _claim_limit(self) -> int:
        """How many tasks to claim now: 0, or a batch worth a round trip.

        Executors that have nothing to do always get work. Otherwise the prefetch buffer is
        refilled only once half a batch has room, so a steady stream of completions does not
        turn into a stream of one-row claims.
        """
        if not self._maybe_ready or self._stopping.is_set() or not self.executor.ready:
            return 0
        prefetch = self._prefetch()
        free = self.capacity + prefetch - len(self._held)
        if free <= 0:
            return 0
        if len(self._held) < self.capacity or free >= min(self.batch_size, prefetch) // 2:
            return min(self.batch_size, free)
        return 0

    def _prefetch(self) -> int:
        """Tasks to hold beyond the executors' capacity.

        Adaptive by default: as many as the executors finish during one database round trip,
        so short tasks never wait for the next claim, while long tasks are not hoarded by one
        worker when others are idle. Capped by ``batch_size``.
        """
        if self.prefetch is not None:
            return self.prefetch
        if self._mean_duration is None:
            return 0
        ahead = self.capacity * self._mean_round_trip / max(self._mean_duration, 1e-6)
        return min(self.batch_size, int(ahead + 0.5))

    def _exchange(self) -> bool:
        """Record finished outcomes and claim more, in one round trip. Returns whether it did
        anything."""
        gave_back = self._release_given_back()
        self._take_delivered()
        limit = self._claim_limit()
        if not self._unrecorded and not limit:
            return gave_back
        if self._reconcile:
            released = self.connection.release_unknown(worker_id=self.worker_id, known=self._held)
            self._reconcile = False
            if released:
                logger.warning(
                    "Worker %s returned %s tasks claimed while the connection was lost",
                    self.worker_id, released,
                )  # fmt: skip
        outcomes = self._unrecorded
        began = time.perf_counter()
        try:
            updated, claimed, skipped = self.connection.exchange(
                worker_id=self.worker_id,
                outcomes=outcomes,
                queues=self.queues,
                limit=limit,
                lease_seconds=self.lease_seconds,
                avoid=self._avoided() if self._avoid_until else (),
            )
        except psycopg.OperationalError:
            raise
        except psycopg.Error as exc:
            if not outcomes:
                raise
            # One outcome the database refuses must not take the others, or the worker, down.
            updated, claimed, skipped = self._record_one_by_one(outcomes, exc), [], []
            limit = 0
        # Recorded: only now may they be forgotten (a lost connection keeps them for the retry).
        self._unrecorded = []
        self._mean_round_trip = _moving_average(self._mean_round_trip, time.perf_counter() - began)
        for outcome in outcomes:
            self._mean_duration = _moving_average(self._mean_duration, outcome.duration)
        if outcomes:
            self._held.difference_update(o.id for o in outcomes)
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
            if any(outcome.status == "READY" for outcome in outcomes):
                self._maybe_ready = True  # a retry may be due at once
        if self.metrics:
            self.metrics.recorded(outcomes, updated)
            self.metrics.claimed(claimed)
        for task in skipped:  # cancelled by the claim: expired, or cancelled before it started
            self.runner.announce(task, "CANCELLED", task.errors[-1], holder="")
        if limit:
            self._held.update(task.id for task in claimed)
            deferred = []
            for task in claimed:
                if self._knows(task):
                    self.executor.submit(task)
                else:
                    deferred.append(task)
            if deferred:
                self._defer_unknown(deferred)
            if len(claimed) + len(skipped) < limit:
                self._maybe_ready = False  # drained: wait for a notification or the next poll
        return True

    def _take_delivered(self) -> None:
        """Move outcomes the pool delivered into those waiting to be recorded."""
        while True:
            try:
                self._unrecorded.append(self._outcomes.get_nowait())
            except stdlib_queue.Empty:
                return

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

    def _knows(self, task: ClaimedTask) -> bool:
        """Whether to run ``task`` here: its name is known, or it has waited long enough for a
        worker that knows it (then the runner fails it, saying so)."""
        if registry.find(task.name) is not None:
            return True
        if unknown_task_waited_enough(
            enqueued_at=task.enqueued_at,
            claimed_at=task.last_attempted_at,
            grace=conf.UNKNOWN_TASK_GRACE,
        ):
            return True
        if task.name not in self._unknown_names:
            self._unknown_names.add(task.name)
            logger.warning(
                "Worker %s does not know task %r (deployed to the enqueuing code before this "
                "worker?); giving such tasks back for a worker that knows them, for up to %gs "
                "after they were enqueued",
                self.worker_id, task.name, conf.UNKNOWN_TASK_GRACE,
            )  # fmt: skip
        return False

    def _defer_unknown(self, tasks: list[ClaimedTask]) -> None:
        """Give back tasks of unknown names without counting an attempt, due again shortly,
        and leave them to other workers for a while (never past their grace period, when this
        worker is the one to fail them)."""
        ids = [task.id for task in tasks]
        self.connection.release(worker_id=self.worker_id, ids=ids, delay=UNKNOWN_TASK_DELAY)
        self._held.difference_update(ids)
        if self.metrics:
            self.metrics.released(ids)
        now = time.monotonic()
        for task in tasks:
            waited = (task.last_attempted_at - task.enqueued_at).total_seconds()
            left = max(0.0, conf.UNKNOWN_TASK_GRACE - waited)
            self._avoid_until[task.id] = now + min(UNKNOWN_TASK_AVOID, left + UNKNOWN_TASK_DELAY)

    def _avoided(self) -> list[int]:
        now = time.monotonic()
        for task_id in [i for i, until in self._avoid_until.items() if until <= now]:
            del self._avoid_until[task_id]
        return list(self._avoid_until)

    def _warn_lost(self, outcomes: list[Outcome], updated: set[int]) -> None:
        lost = sorted({o.id for o in outcomes} - updated)
        logger.warning(
            "Worker %s no longer held tasks %s when they finished; their outcome was "
            "not recorded (cancelled or recovered meanwhile)",
            self.worker_id, lost,
        )  # fmt: skip

    # -- pool and listener ----------------------------------------------------------------

    def _make_pool(self) -> ThreadPool | ProcessPool:
        if self.pool == "threads":
            return ThreadPool(
                worker_id=self.worker_id,
                runner=self.runner,
                deliver=self._deliver,
                threads=self.concurrency,
            )
        return ProcessPool(
            worker_id=self.worker_id,
            backend_alias=self.backend.alias,
            runner=self.runner,
            deliver=self._deliver,
            give_back=self._give_back,
            on_ready=self._look_for_work,
            on_fatal=self._on_pool_failed,
            processes=self.concurrency,
            threads=self.threads,
            max_tasks_per_child=self.max_tasks_per_child,
            max_memory_per_child=self.max_memory_per_child,
            cancel_requested=self._cancel_requested.__contains__,
            terminate_requested=self._terminate_requested.__contains__,
            any_cancel_requested=lambda: bool(self._cancel_requested),
        )

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
            released = self.connection.release(worker_id=self.worker_id, ids=ids)
        except psycopg.OperationalError:
            self._given_back.put(ids)
            raise
        self._held.difference_update(ids)
        if self.metrics:
            self.metrics.released(ids)
        logger.info("Worker %s returned %s unstarted tasks to the queue", self.worker_id, released)
        return True

    def _listen(self) -> None:
        backoff = 0.5
        while not self._stopping.is_set():
            try:
                with listen_connection(
                    self.backend.database,
                    application_name=f"django_tasks_q listener {self.worker_id}",
                    also=[CANCEL_CHANNEL],
                ) as conn:
                    backoff = 0.5
                    while not self._stopping.is_set():
                        for notice in conn.notifies(timeout=1.0, stop_after=1):
                            if notice.channel == CANCEL_CHANNEL:
                                self._cancel_notice(notice.payload)
                                continue
                            self._maybe_ready = True
                            self._wake.set()
            except psycopg.Error as exc:
                logger.warning("Worker %s listener reconnecting: %s", self.worker_id, exc)
                self._stopping.wait(backoff)
                backoff = min(backoff * 2, 30.0)

    def _cancel_notice(self, payload: str) -> None:
        """A task's cancellation was requested: if this worker holds it, act at once (a
        claimed task that has not started must never start)."""
        task_id, _, terminate = payload.partition(" ")
        try:
            held = int(task_id) in self._held
        except ValueError:
            return
        if held:
            self._on_cancel_requested([int(task_id)], [int(task_id)] if terminate else [])

    # -- shutdown -------------------------------------------------------------------------

    def _shutdown(self) -> None:
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
                        self.worker_id, self.grace_period, len(self._held),
                    )  # fmt: skip
                    self._abandon = True
                    self._exit_code = 1
                    break
                try:
                    if self._exchange():
                        continue
                except psycopg.OperationalError as exc:
                    self._lost_database(exc, 1.0)
                    continue
                self._wake.wait(1.0 if self.grace_period is None else min(1.0, self.grace_period))
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
            f"its grace period of {self.grace_period}s ran out"
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
        if self.grace_period is None or self._stop_requested_at is None:
            return False
        return time.monotonic() - self._stop_requested_at >= self.grace_period


def _moving_average(current: float | None, sample: float, weight: float = 0.1) -> float:
    return sample if current is None else current + weight * (sample - current)
