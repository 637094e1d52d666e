"""Settings of django_tasks_q, read from ``settings.TASKS_Q`` on every access.

Nothing is copied at import time, so ``override_settings`` and late configuration work.
Validation lives in :mod:`django_tasks_q.checks`; this module only supplies defaults.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings as django_settings

SETTING_NAME = "TASKS_Q"

DEFAULTS: dict[str, Any] = {
    # Database alias that holds the task table, for enqueue and for workers.
    "DATABASE": "default",
    # Wake idle workers with LISTEN/NOTIFY. Turn off behind PgBouncer in transaction mode.
    "LISTEN_NOTIFY": True,
    # Seconds between polls when nothing woke the worker.
    "POLL_INTERVAL": 1.0,
    # Worker defaults; the runtaskworker options override them.
    "CONCURRENCY": 4,
    "BATCH_SIZE": 100,
    # Tasks claimed beyond CONCURRENCY. None adapts to task durations (up to 2 x BATCH_SIZE).
    "PREFETCH": None,
    # Seconds a claim is valid before a lost worker's task may be recovered.
    "LEASE_SECONDS": 60,
    # Seconds between a worker's heartbeats; each one extends the leases of its tasks and
    # recovers tasks whose worker stopped heartbeating. Must be well below LEASE_SECONDS.
    "HEARTBEAT_INTERVAL": 5.0,
    # Attempts of one task that may be lost (its worker killed, frozen past the lease, or the
    # database gone under it) before the task is FAILED: a task that kills every worker it
    # lands on must not loop forever. Lost attempts never spend the task's own retries.
    # A task's @background_task(max_lost_attempts=...) overrides it.
    "MAX_LOST_ATTEMPTS": 3,
    # Seconds a task whose name a worker does not know (deployed to the web before the
    # workers) waits for a worker that knows it; given back untouched meanwhile, then FAILED.
    "UNKNOWN_TASK_GRACE": 600.0,
    # Seconds running tasks get after SIGTERM before the worker exits anyway; None waits.
    "GRACE_PERIOD": None,
    # Seconds finished tasks are kept after they finish, then workers delete them; None keeps
    # them for good. Successful ones, and failed or cancelled ones (kept longer, to look into).
    "KEEP_SUCCESSFUL": 7 * 24 * 3600,
    "KEEP_FAILED": 30 * 24 * 3600,
    # Limits of whole queues, across every worker: {"emails": {"concurrency": 5,
    # "rate_limit": "100/m"}}. Written on each task when it is enqueued (docs/flow-control.md).
    "QUEUE_LIMITS": {},
    # Fair queues: tasks of one fair_by key that may wait READY at once, its turn.
    "FAIR_TURN": 4,
    # Queue and priority by task name or glob, for tasks whose code does not give them
    # (Celery's task_routes): {"billing.tasks.*": "billing", "app.tasks.report":
    # {"queue": "reports", "priority": -10}}.
    "ROUTES": {},
    # Schedules declared in code: a list of dicts, synced into the Schedule table by beat.
    "SCHEDULES": (),
    # Seconds after its time a tick still counts as late (enqueued) rather than missed (left
    # to the schedule's catch-up policy).
    "BEAT_MISSED_AFTER": 60.0,
}


class TasksQSettings:
    """Attribute access to ``settings.TASKS_Q`` with defaults: ``conf.settings.POLL_INTERVAL``."""

    def user_settings(self) -> dict[str, Any]:
        value = getattr(django_settings, SETTING_NAME, None)
        return value if isinstance(value, dict) else {}

    def __getattr__(self, name: str) -> Any:
        if name not in DEFAULTS:
            raise AttributeError(f"{SETTING_NAME} has no setting {name!r}")
        return self.user_settings().get(name, DEFAULTS[name])


settings = TasksQSettings()
