"""The schema. Reads and admin use the ORM; the hot path uses the SQL in ``sql/queue.sql``."""

from __future__ import annotations

from django.db import models
from django.db.models.functions import Now
from django.utils.translation import gettext_lazy as _


class TaskStatus(models.TextChoices):
    """Django's ``TaskResultStatus`` values, plus CANCELLED."""

    READY = "READY", _("Ready")
    RUNNING = "RUNNING", _("Running")
    SUCCESSFUL = "SUCCESSFUL", _("Successful")
    FAILED = "FAILED", _("Failed")
    CANCELLED = "CANCELLED", _("Cancelled")


FINISHED_STATUSES = frozenset({TaskStatus.SUCCESSFUL, TaskStatus.FAILED, TaskStatus.CANCELLED})


class Task(models.Model):
    """One request to run a task, and what happened to it."""

    id = models.BigAutoField(primary_key=True)
    name = models.CharField(_("task name"), max_length=255)
    queue = models.CharField(max_length=100, default="default")
    priority = models.SmallIntegerField(default=0, help_text=_("-100..100, higher runs first"))
    status = models.CharField(max_length=10, choices=TaskStatus.choices, default=TaskStatus.READY)
    args = models.JSONField(default=list, blank=True)
    kwargs = models.JSONField(default=dict, blank=True)
    run_after = models.DateTimeField(db_default=Now(), help_text=_("earliest start"))
    enqueued_at = models.DateTimeField(db_default=Now())
    started_at = models.DateTimeField(null=True, blank=True, help_text=_("first attempt"))
    last_attempted_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    attempts = models.IntegerField(default=0, help_text=_("attempts started so far"))
    max_attempts = models.IntegerField(default=1)
    timeout = models.FloatField(null=True, blank=True, help_text=_("seconds per attempt"))
    # The holder of a RUNNING task: every finish statement checks worker_id and attempts, so
    # a worker that lost its claim cannot overwrite what happened since.
    worker_id = models.CharField(max_length=100, blank=True, default="")
    lease_expires_at = models.DateTimeField(null=True, blank=True)
    # Set by cancel() on a RUNNING task; its worker sees it at the next heartbeat.
    cancel_requested_at = models.DateTimeField(null=True, blank=True)
    # cancel(terminate=True): a process-pool worker kills the task's process if it does not stop.
    cancel_terminate = models.BooleanField(db_default=False)
    result = models.JSONField(null=True, blank=True)
    # One entry per failed attempt: attempt, worker_id, type, message, traceback, at.
    errors = models.JSONField(default=list, blank=True)

    class Meta:
        db_table = "django_tasks_q_task"
        verbose_name = _("task")
        verbose_name_plural = _("tasks")
        indexes = [
            # Serves the claim: ready rows in claim order. Partial, so it only holds the
            # backlog and stays small however many finished rows the table keeps.
            models.Index(
                fields=["-priority", "run_after", "id"],
                name="tasks_q_ready_idx",
                condition=models.Q(status="READY"),
            ),
            # The same, per queue, for workers that serve only some queues.
            models.Index(
                fields=["queue", "-priority", "run_after", "id"],
                name="tasks_q_ready_queue_idx",
                condition=models.Q(status="READY"),
            ),
            models.Index(
                fields=["lease_expires_at"],
                name="tasks_q_running_idx",
                condition=models.Q(status="RUNNING"),
            ),
        ]
        constraints = [
            models.CheckConstraint(
                condition=models.Q(priority__gte=-100, priority__lte=100),
                name="tasks_q_priority_range",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.name} #{self.pk} ({self.status})"

    @property
    def last_error(self) -> dict | None:
        return self.errors[-1] if self.errors else None


class WorkerState(models.TextChoices):
    RUNNING = "RUNNING", _("Running")
    STOPPED = "STOPPED", _("Stopped")


class Worker(models.Model):
    """A runtaskworker process, as it last reported itself."""

    id = models.CharField(primary_key=True, max_length=100)
    hostname = models.CharField(max_length=255)
    pid = models.IntegerField()
    queues = models.JSONField(default=list, blank=True, help_text=_("empty: every queue"))
    concurrency = models.IntegerField()
    state = models.CharField(max_length=10, choices=WorkerState.choices, default="RUNNING")
    started_at = models.DateTimeField(db_default=Now())
    last_heartbeat_at = models.DateTimeField(db_default=Now())
    stopped_at = models.DateTimeField(null=True, blank=True)
    tasks_succeeded = models.BigIntegerField(default=0)
    tasks_failed = models.BigIntegerField(default=0)

    class Meta:
        db_table = "django_tasks_q_worker"
        verbose_name = _("worker")
        verbose_name_plural = _("workers")

    def __str__(self) -> str:
        return self.id
