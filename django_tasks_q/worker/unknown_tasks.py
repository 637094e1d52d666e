"""Claimed tasks whose name this worker does not know.

During a deploy, code that enqueues a new task may be live before every worker knows it.
Such a task is given back (without counting an attempt) for a worker that knows it, and this
worker avoids it for a while; once its grace period (``TASKS_Q["UNKNOWN_TASK_GRACE"]``) is
over, the worker that claims it runs it, and its runner fails it, saying why. The rule itself
is :func:`django_tasks_q.retry.unknown_task_waited_enough`.
"""

from __future__ import annotations

import logging
import time

from django_tasks_q import registry
from django_tasks_q.conf import settings as conf
from django_tasks_q.queue import ClaimedTask
from django_tasks_q.retry import (
    UNKNOWN_TASK_AVOID,
    UNKNOWN_TASK_DELAY,
    unknown_task_waited_enough,
)

logger = logging.getLogger("django_tasks_q.worker")


class UnknownTasks:
    """Says which claimed tasks run here, and which given-back ones not to claim again yet."""

    def __init__(self, *, worker_id: str) -> None:
        self.worker_id = worker_id
        # Warned about once each.
        self._names: set[str] = set()
        # Ids of tasks given back, with when this worker may claim them again (monotonic).
        self._avoid_until: dict[int, float] = {}

    def runs_here(self, task: ClaimedTask) -> bool:
        """Whether to run ``task`` here: its name is known, or it has waited long enough for
        a worker that knows it (then the runner fails it, saying so)."""
        if registry.find(task.name) is not None:
            return True
        if unknown_task_waited_enough(
            enqueued_at=task.enqueued_at,
            claimed_at=task.last_attempted_at,
            grace=conf.UNKNOWN_TASK_GRACE,
        ):
            return True
        if task.name not in self._names:
            self._names.add(task.name)
            logger.warning(
                "Worker %s does not know task %r (deployed to the enqueuing code before this "
                "worker?); giving such tasks back for a worker that knows them, for up to %gs "
                "after they were enqueued",
                self.worker_id, task.name, conf.UNKNOWN_TASK_GRACE,
            )  # fmt: skip
        return False

    def avoid(self, tasks: list[ClaimedTask]) -> None:
        """Leave ``tasks``, just given back, to other workers for a while: never past their
        grace period, when this worker is the one to fail them."""
        now = time.monotonic()
        for task in tasks:
            waited = (task.last_attempted_at - task.enqueued_at).total_seconds()
            left = max(0.0, conf.UNKNOWN_TASK_GRACE - waited)
            self._avoid_until[task.id] = now + min(UNKNOWN_TASK_AVOID, left + UNKNOWN_TASK_DELAY)

    def avoided(self) -> list[int]:
        """Ids this worker must not claim now."""
        if not self._avoid_until:
            return []
        now = time.monotonic()
        for task_id in [i for i, until in self._avoid_until.items() if until <= now]:
            del self._avoid_until[task_id]
        return list(self._avoid_until)
