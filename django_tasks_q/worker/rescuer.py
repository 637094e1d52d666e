"""Recovery of lost attempts: what a worker that is gone (or gave up) was running.

Three ways an attempt is found lost, each a statement in ``sql/queue.sql``:

- ``expired``: its lease ran out, so its worker stopped heartbeating (killed, out of memory,
  frozen, its machine gone). Every worker looks at each heartbeat; SKIP LOCKED gives each
  attempt to exactly one.
- ``predecessors``: a worker starting under a name (``--worker-id``, or hostname-pid) recovers
  at once what earlier processes of that name held: they are gone, a restart says so.
- ``abandoned``: the worker stopped its own running tasks when its grace period ran out.

What becomes of each is :func:`django_tasks_q.retry.after_lost`: it runs again without
spending the task's retries, until it has lost ``max_lost_attempts`` attempts.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any

from django_tasks_q.errors import described_entry
from django_tasks_q.queue import EARLIEST, LostTask, QueueConnection
from django_tasks_q.retry import after_lost
from django_tasks_q.worker.runner import WORKER_LOST, Runner, as_declared

logger = logging.getLogger("django_tasks_q.worker")

# Every this many looks for expired leases, one starts from the earliest lease.
FULL_LOOK_EVERY = 12


class Rescuer:
    """Finds lost attempts, records what the retry policy decides, sends their signals."""

    def __init__(
        self,
        *,
        connection: QueueConnection,
        worker_id: str,
        name: str,
        runner: Runner,
        on_ready: Callable[[], None] = lambda: None,
        notify: bool = True,
        limit: int = 100,
    ) -> None:
        if limit < 1:
            raise ValueError(f"limit must be at least 1, got {limit}")
        self.connection = connection
        self.worker_id = worker_id
        self.name = name
        self.runner = runner
        self.on_ready = on_ready
        self.notify = notify
        self.limit = limit
        # Where the next look for expired leases starts (None: from the start).
        self._after: datetime | None = None
        self._looks = 0

    def run_once(self) -> int:
        """Recover attempts whose lease expired; returns how many.

        Each look starts at the database time of the previous one (``lost_expired`` says why
        that is enough); every FULL_LOOK_EVERY looks, and after one that hit its limit, it
        looks from the start, for a recovery that another worker began and rolled back."""
        self._looks += 1
        full = self._after is None or self._looks % FULL_LOOK_EVERY == 0
        looked_at = self.connection.now()
        recovered = self._recover(
            "expired",
            lambda lost: (
                f"worker {lost.holder} stopped heartbeating: its lease on this attempt expired "
                f"at {lost.lease_expires_at}"
            ),
            limit=self.limit,
            after=EARLIEST if full else self._after,
        )
        self._after = looked_at if recovered < self.limit else None
        return recovered

    def recover_predecessors(self) -> int:
        """Recover what earlier processes under this worker's name held; mark them stopped."""
        recovered = self._recover(
            "predecessors",
            lambda lost: (
                f"worker {lost.holder} was replaced by {self.worker_id}, a new process under "
                f"the name {self.name!r}, while this attempt ran"
            ),
            name=self.name,
            worker_id=self.worker_id,
        )
        replaced = self.connection.mark_replaced(name=self.name, worker_id=self.worker_id)
        if replaced:
            logger.info(
                "Worker %s replaces %s (same name %r)", self.worker_id, ", ".join(replaced),
                self.name,
            )  # fmt: skip
        return recovered

    def recover_abandoned(self, ids: Sequence[int], reason: str) -> int:
        """Recover attempts this worker stopped itself (``reason`` says why)."""
        if not ids:
            return 0
        return self._recover(
            "abandoned",
            lambda lost: f"worker {lost.holder} stopped this attempt: {reason}",
            worker_id=self.worker_id,
            ids=list(ids),
        )

    def _recover(self, which: str, describe: Callable[[LostTask], str], **params: Any) -> int:
        errors: dict[int, dict[str, Any]] = {}

        def decide(lost: LostTask) -> tuple[str, int, dict[str, Any]]:
            task = as_declared(lost.task)
            decision = after_lost(
                max_attempts=task.max_attempts,
                lost_attempts=task.lost_attempts,
                max_lost_attempts=task.max_lost_attempts,
                cancel_requested=lost.cancel_requested,
            )
            errors[task.id] = described_entry(
                type_path=WORKER_LOST,
                message=describe(lost),
                attempt=task.attempt,
                worker_id=lost.holder,
            )
            return decision.status, decision.max_attempts, errors[task.id]

        recovered = self.connection.recover_lost(which, decide, notify=self.notify, **params)
        for lost, status in recovered:
            task = lost.task
            logger.warning(
                "Task %s #%s attempt %s was lost (%s); %s",
                task.name, task.id, task.attempt, errors[task.id]["message"],
                "it runs again" if status == "READY"
                else f"{status}: {task.lost_attempts + 1} lost attempts"
                if status == "FAILED" else status,
                extra={"task_id": task.id, "task_name": task.name, "outcome": "lost"},
            )  # fmt: skip
            self.runner.announce(task, status, errors[task.id], holder=lost.holder)
        if any(status == "READY" for _, status in recovered):
            self.on_ready()
        return len(recovered)
