"""The heartbeat: proof of life for one worker, and recovery of tasks whose worker died.

Runs on its own thread and connection, so a main thread blocked on a slow statement or a
thread stuck in a task never delays it.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Collection

import psycopg

from django_tasks_q.backoff import Backoff, describe_database_error
from django_tasks_q.queue import QueueConnection
from django_tasks_q.worker.options import check_heartbeat
from django_tasks_q.worker.pruner import Pruner
from django_tasks_q.worker.rescuer import Rescuer

logger = logging.getLogger("django_tasks_q.worker")

# Rows of workers not heard of for a week are deleted.
WORKER_RETENTION_SECONDS = 7 * 24 * 3600
PRUNE_WORKERS_EVERY_BEATS = 720
# Finished tasks are pruned every this many beats (every minute by default), or at every beat
# while the last pass left rows behind.
PRUNE_TASKS_EVERY_BEATS = 12


class Heartbeat:
    """Extends this worker's leases, keeps the worker row current, and runs the rescuer (lost
    attempts) and the pruner (finished tasks past their retention)."""

    def __init__(
        self,
        *,
        worker_id: str,
        connection: QueueConnection,
        interval: float,
        lease_seconds: float,
        register: Callable[[QueueConnection], None],
        counters: Callable[[], tuple[int, int]],
        rescuer: Rescuer,
        on_cancel_requested: Callable[[list[int], list[int]], None],
        held: Callable[[], Collection[int]],
        pruner: Pruner | None = None,
    ) -> None:
        check_heartbeat(interval=interval, lease_seconds=lease_seconds)
        self.worker_id = worker_id
        self.connection = connection
        self.interval = interval
        self.lease_seconds = lease_seconds
        self.register = register
        self.counters = counters
        self.rescuer = rescuer
        self.on_cancel_requested = on_cancel_requested
        self.held = held
        self.pruner = pruner
        self.beats = 0
        self._reported = (0, 0)

    def run_once(self) -> None:
        succeeded, failed = self.counters()
        alive, _, cancel_requested, terminate = self.connection.heartbeat(
            worker_id=self.worker_id,
            lease_seconds=self.lease_seconds,
            succeeded=succeeded - self._reported[0],
            failed=failed - self._reported[1],
            held=self.held(),
        )
        self._reported = (succeeded, failed)
        if cancel_requested:
            self.on_cancel_requested(cancel_requested, terminate)
        if not alive:
            # Pruned while this worker was unreachable for a long time: say who we are again.
            self.register(self.connection)
        self.rescuer.run_once()
        self.beats += 1
        if self.beats % PRUNE_WORKERS_EVERY_BEATS == 0:
            self.connection.prune_workers(older_than=WORKER_RETENTION_SECONDS)
        if self.pruner and (self.pruner.behind or self.beats % PRUNE_TASKS_EVERY_BEATS == 1):
            self.pruner.run_once()

    def run(self, stopping: threading.Event) -> None:
        """Beat every ``interval`` seconds until ``stopping`` is set; survive database loss."""
        backoff = Backoff()
        while not stopping.wait(self.interval):
            try:
                self.run_once()
                backoff.reset()
            except psycopg.OperationalError as exc:
                delay = backoff.next()
                logger.error(
                    "Worker %s heartbeat lost the database (%s); trying again in %.1fs",
                    self.worker_id, describe_database_error(exc), delay,
                )  # fmt: skip
                self.connection.close()
                stopping.wait(delay)
            except Exception:
                # A heartbeat must never die quietly: the worker's leases depend on it.
                logger.exception("Worker %s heartbeat failed; trying again", self.worker_id)

    def stop(self) -> None:
        """Mark the worker stopped, with its last counts."""
        succeeded, failed = self.counters()
        self.connection.stop_worker(
            worker_id=self.worker_id,
            succeeded=succeeded - self._reported[0],
            failed=failed - self._reported[1],
        )
        self._reported = (succeeded, failed)
