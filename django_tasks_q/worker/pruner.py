"""Deletes finished tasks past their retention (``KEEP_SUCCESSFUL``, ``KEEP_FAILED``).

Every worker runs one, from its heartbeat thread, so the table stays the size of its
retention window without a cron job. Workers share the work: each batch skips rows another
worker is deleting.
"""

from __future__ import annotations

import logging
import time

from django_tasks_q.queue import QueueConnection
from django_tasks_q.worker.options import check_retention

logger = logging.getLogger("django_tasks_q.worker")


class Pruner:
    def __init__(
        self,
        *,
        connection: QueueConnection,
        keep_successful: float | None,
        keep_failed: float | None,
        batch_size: int = 5000,
        time_budget: float = 1.0,
    ) -> None:
        check_retention(keep_successful=keep_successful, keep_failed=keep_failed)
        self.connection = connection
        self.keep_successful = keep_successful
        self.keep_failed = keep_failed
        self.batch_size = batch_size
        self.time_budget = time_budget
        # True when the last run stopped with rows left: run again at the next chance.
        self.behind = False

    @property
    def enabled(self) -> bool:
        return self.keep_successful is not None or self.keep_failed is not None

    def run_once(self) -> int:
        """Delete batches until none is full or the time budget is spent (the heartbeat
        thread runs this, and must get back to extending leases). Returns rows deleted."""
        if not self.enabled:
            return 0
        deleted = 0
        deadline = time.monotonic() + self.time_budget
        while True:
            batch = self.connection.prune_tasks(
                keep_successful=self.keep_successful,
                keep_failed=self.keep_failed,
                limit=self.batch_size,
            )
            deleted += batch
            # Up to batch_size rows of each status: a full batch means there may be more.
            self.behind = batch >= self.batch_size
            if not self.behind or time.monotonic() >= deadline:
                break
        if deleted:
            logger.info("Deleted %s finished tasks past their retention", deleted)
        return deleted
