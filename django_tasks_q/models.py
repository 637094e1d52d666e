"""The schema. Reads, schedules and the admin use the ORM; the hot path uses ``sql/queue.sql``."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta
from enum import StrEnum
from typing import TYPE_CHECKING, Any

from django.core.exceptions import NON_FIELD_ERRORS, ValidationError
from django.db import models, router, transaction
from django.db.models import F
from django.db.models.functions import Now
from django.utils.translation import gettext_lazy as _

from django_tasks_q import queue, registry
from django_tasks_q.conf import settings as conf
from django_tasks_q.exceptions import InvalidTask, UnknownTaskError
from django_tasks_q.querysets import TaskQuerySet
from django_tasks_q.schedules import (
    Cron,
    Interval,
    Once,
    ScheduleError,
    Timing,
    check_cron,
    check_interval,
    get_zone,
)
from django_tasks_q.serialization import SerializationError, check_json

if TYPE_CHECKING:
    from django_tasks_q.tasks import BackgroundTask


class TaskStatus(models.TextChoices):
    """Django's ``TaskResultStatus`` values, plus WAITING and CANCELLED."""

    # Waits for the tasks it depends on (docs/workflows.md); becomes READY when they finish.
    WAITING = "WAITING", _("Waiting")
    READY = "READY", _("Ready")
    RUNNING = "RUNNING", _("Running")
    SUCCESSFUL = "SUCCESSFUL", _("Successful")
    FAILED = "FAILED", _("Failed")
    CANCELLED = "CANCELLED", _("Cancelled")


class Cancellation(StrEnum):
    """What ``cancel()`` did. Truthy unless the task had already finished."""

    # It had not started (READY): it never will.
    CANCELLED = "cancelled"
    # It was RUNNING (started, or claimed by a worker and about to start): its worker stops
    # it before it starts, or the task sees context.is_cancelled(); it ends CANCELLED.
    STOP_REQUESTED = "stop_requested"
    # It had already finished: nothing changed.
    ALREADY_FINISHED = "already_finished"

    def __bool__(self) -> bool:
        return self is not Cancellation.ALREADY_FINISHED


FINISHED_STATUSES = frozenset({TaskStatus.SUCCESSFUL, TaskStatus.FAILED, TaskStatus.CANCELLED})
UNFINISHED_STATUSES = frozenset({TaskStatus.WAITING, TaskStatus.READY, TaskStatus.RUNNING})


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
    # Attempts whose worker was lost (killed, frozen past its lease, database gone under the
    # task). They run again without spending the task's own retries (max_attempts grows by
    # one each time), until max_lost_attempts of them were lost: then the task is FAILED.
    lost_attempts = models.IntegerField(default=0, db_default=0)
    max_lost_attempts = models.IntegerField(default=3, db_default=3)
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
    # No attempt starts after this: a claim that finds it passed cancels the task instead.
    expires_at = models.DateTimeField(null=True, blank=True)
    # Set on tasks a schedule enqueued: which schedule, and the tick the task stands for.
    # Indexed only through tasks_q_schedule_tick_uniq, which leaves other tasks out.
    schedule = models.ForeignKey(
        "Schedule",
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="tasks",
        db_index=False,
    )
    scheduled_for = models.DateTimeField(null=True, blank=True, help_text=_("the schedule's tick"))
    # At most one unfinished task per key (tasks_q_unique_key_active; WAITING counts, as a task
    # held by a pause is one that will run): enqueueing a task
    # with the key of one that is waiting or running returns that one instead.
    # NULL, not "": tasks without a key stay out of that index.
    unique_key = models.CharField(max_length=255, null=True, blank=True)  # noqa: DJ001
    # The id the caller chose (apply_async(task_id=...)), unique for as long as the row is
    # kept (tasks_q_chosen_id_uniq): enqueueing the same id again returns this task.
    # Never only digits, so it cannot be mistaken for the database id.
    chosen_id = models.CharField(max_length=255, null=True, blank=True)  # noqa: DJ001
    # The W3C trace context of the span that enqueued the task ({"traceparent": ...}), the
    # parent of each attempt's span when OpenTelemetry is installed (django_tasks_q.tracing).
    trace_context = models.JSONField(null=True, blank=True)
    # Workflows (docs/workflows.md). A WAITING task waits for `waiting_for` more of the tasks
    # it depends on (rows of Dependency) to finish; the statement that records the last one's
    # outcome makes it READY, through the trigger of migration 0007. `has_dependents` marks
    # the tasks that trigger must look at, so a plain task's outcome costs nothing more.
    waiting_for = models.IntegerField(default=0, db_default=0)
    has_dependents = models.BooleanField(default=False, db_default=False)
    # What a dependent receives first when it becomes READY: "" nothing, "result" the result
    # of its dependency, "results" the list of its dependencies' results (in order), "error"
    # the failed dependency's id and last error entry.
    receives = models.CharField(max_length=8, blank=True, default="", db_default="")
    workflow_id = models.UUIDField(null=True, blank=True)
    # Set on a WAITING task held back by a pause ("queue:<name>" or "task:<name>"): resuming
    # makes the tasks it holds READY again (docs/flow-control.md).
    held_by = models.CharField(max_length=300, null=True, blank=True)  # noqa: DJ001
    # Flow control (docs/flow-control.md), from the task's options and its queue's when it is
    # enqueued; migration 0009's triggers enforce them as a claim makes the task RUNNING.
    # concurrency_limits {key: n}: at most n tasks holding the key run at once; a task over a
    # limit waits, WAITING and held by "limit:<key>", until one of those finishes.
    # rate_limits {key: seconds}: tasks holding the key start at most once per that many
    # seconds; one over a rate is due again at the start it reserved, throttled_until.
    # JSON objects, so a GIN index (tasks_q_limited_running_idx, made by the migration) can
    # count the running tasks of a key without django.contrib.postgres.
    concurrency_limits = models.JSONField(null=True, blank=True)
    rate_limits = models.JSONField(null=True, blank=True)
    throttled_until = models.DateTimeField(null=True, blank=True)
    # Fair queues: tasks of one fair_key ("<queue>:<fair_by value>") take turns with other
    # keys, at most fair_turn of them READY at once; the others wait, WAITING and held by
    # "turn:<key>" (migration 0009's django_tasks_q_next_turn trigger). Indexed by the
    # migration (tasks_q_fair_ready_idx).
    fair_key = models.TextField(null=True, blank=True)  # noqa: DJ001
    fair_turn = models.SmallIntegerField(null=True, blank=True)

    objects = TaskQuerySet.as_manager()

    class Meta:
        db_table = "django_tasks_q_task"
        verbose_name = _("task")
        verbose_name_plural = _("tasks")
        indexes = [
            # Serve the claim: ready rows in claim order, the highest priority first. Partial,
            # so they only hold the backlog however many finished rows the table keeps. The
            # order is an expression, (priority * -1, run_after, id), all ascending, so a
            # claim can start its walk at a row comparison: a worker resumes where its last
            # claim stopped instead of stepping over the entries of every task claimed since
            # (see "Claims under a held xmin horizon" in docs/internals.md).
            models.Index(
                F("priority") * -1,
                F("run_after"),
                F("id"),
                name="tasks_q_ready_idx",
                condition=models.Q(status="READY"),
            ),
            # The same, per queue, for workers that serve only some queues.
            models.Index(
                F("queue"),
                F("priority") * -1,
                F("run_after"),
                F("id"),
                name="tasks_q_ready_queue_idx",
                condition=models.Q(status="READY"),
            ),
            models.Index(
                fields=["lease_expires_at"],
                name="tasks_q_running_idx",
                condition=models.Q(status="RUNNING"),
            ),
            # Monitoring: what finished when, by outcome (the dashboard's last hour, failures
            # of the day). Partial, so a task gets its entry once, when it finishes.
            models.Index(
                fields=["status", "finished_at"],
                name="tasks_q_finished_idx",
                condition=models.Q(finished_at__isnull=False),
            ),
            # The admin's date hierarchy and "enqueued" ordering.
            models.Index(fields=["enqueued_at"], name="tasks_q_enqueued_idx"),
            models.Index(
                fields=["workflow_id"],
                name="tasks_q_workflow_idx",
                condition=models.Q(workflow_id__isnull=False),
            ),
            # Monitoring: WAITING tasks per queue (workflow steps, tasks held by a pause).
            models.Index(
                fields=["queue"],
                name="tasks_q_waiting_idx",
                condition=models.Q(status="WAITING"),
            ),
            # The tasks a pause or a limit holds back, in claim order: a limit lets the
            # first of them go each time one of its tasks finishes.
            models.Index(
                F("held_by"),
                F("priority") * -1,
                F("run_after"),
                F("id"),
                name="tasks_q_held_order_idx",
                condition=models.Q(status="WAITING", held_by__isnull=False),
            ),
            # Monitoring: the tasks a rate limit holds back until the start each reserved.
            models.Index(
                fields=["throttled_until"],
                name="tasks_q_throttled_idx",
                condition=models.Q(status="READY", throttled_until__isnull=False),
            ),
        ]
        constraints = [
            models.CheckConstraint(
                condition=models.Q(priority__gte=-100, priority__lte=100),
                name="tasks_q_priority_range",
            ),
            # Beat locks a schedule's row while it enqueues a tick, so a tick is enqueued once;
            # should anything bypass that lock, the second insert fails here instead.
            models.UniqueConstraint(
                fields=["unique_key"],
                condition=models.Q(
                    unique_key__isnull=False, status__in=["WAITING", "READY", "RUNNING"]
                ),
                name="tasks_q_unique_key_active",
            ),
            models.UniqueConstraint(
                fields=["chosen_id"],
                condition=models.Q(chosen_id__isnull=False),
                name="tasks_q_chosen_id_uniq",
            ),
            models.UniqueConstraint(
                fields=["schedule", "scheduled_for"],
                condition=models.Q(schedule__isnull=False),
                name="tasks_q_schedule_tick_uniq",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.name} #{self.pk} ({self.status})"

    @property
    def last_error(self) -> dict | None:
        return self.errors[-1] if self.errors else None


class RunIf(models.TextChoices):
    """When a dependent may run, by how one of its dependencies ended (the same values as
    django_tasks_q.canvas.RUN_IF, which is imported before the models are)."""

    SUCCEEDED = "succeeded", _("it succeeded")  # else the dependent is cancelled
    FINISHED = "finished", _("it finished, however")
    # Error callbacks: run at the first dependency that FAILED; not needed if none does.
    FAILED = "failed", _("it failed")


def task_lookup(result_id: str | int) -> dict[str, Any]:
    """How to find a task by id (``Task.objects.get(**task_lookup(id))``): digits are the
    database's id, anything else one its caller chose (``task_id=``). ValueError when it is
    neither."""
    if isinstance(result_id, int) and not isinstance(result_id, bool):
        return {"pk": result_id}
    if isinstance(result_id, str) and result_id:
        return {"pk": int(result_id)} if result_id.isdigit() else {"chosen_id": result_id}
    raise ValueError(result_id)


class Dependency(models.Model):
    """An edge of a workflow: ``task`` runs after ``depends_on`` finished (``run_if``).

    Inserting one fires a deferred trigger (migration 0007) that, at commit, marks the
    dependency ``has_dependents`` under a row lock, or settles the edge if the dependency
    has already finished: no finish can be missed between the two transactions."""

    pk = models.CompositePrimaryKey("task", "depends_on")
    # The constraints are created by migration 0007, ON DELETE CASCADE, so pruning finished
    # tasks with plain SQL takes their edges along.
    task = models.ForeignKey(
        Task, on_delete=models.CASCADE, related_name="dependencies", db_constraint=False
    )
    depends_on = models.ForeignKey(
        Task, on_delete=models.CASCADE, related_name="dependents", db_constraint=False
    )
    # Place among the task's dependencies: the order of a "results" list.
    position = models.IntegerField(default=0)
    run_if = models.CharField(max_length=10, choices=RunIf.choices, default=RunIf.SUCCEEDED)

    class Meta:
        db_table = "django_tasks_q_dependency"
        verbose_name = _("dependency")
        verbose_name_plural = _("dependencies")
        indexes = [models.Index(fields=["depends_on"], name="tasks_q_dependents_idx")]

    def __str__(self) -> str:
        return f"#{self.task_id} after #{self.depends_on_id} ({self.run_if})"


class Pause(models.Model):
    """A paused queue or task name: workers claim none of its tasks until it is resumed;
    enqueueing goes on, and the tasks wait (docs/flow-control.md). Create and delete rows
    through django_tasks_q.pausing (or the admin and ``manage.py tasks``), which hold back
    and release the waiting tasks and tell the workers."""

    queue = models.CharField(max_length=100, blank=True, default="")
    task_name = models.CharField(max_length=255, blank=True, default="")
    paused_at = models.DateTimeField(db_default=Now())
    reason = models.TextField(blank=True, default="")

    class Meta:
        db_table = "django_tasks_q_pause"
        verbose_name = _("paused queue or task")
        verbose_name_plural = _("paused queues and tasks")
        constraints = [
            models.CheckConstraint(
                condition=(models.Q(queue="") & ~models.Q(task_name=""))
                | (~models.Q(queue="") & models.Q(task_name="")),
                name="tasks_q_pause_one_target",
            ),
            models.UniqueConstraint(fields=["queue", "task_name"], name="tasks_q_pause_uniq"),
        ]

    def __str__(self) -> str:
        return f"queue {self.queue}" if self.queue else f"task {self.task_name}"


class RateLimit(models.Model):
    """Where a rate limit stands: the earliest start its next task may take. Written by the
    claim's trigger (migration 0009); a row per key that has started a task."""

    key = models.TextField(primary_key=True)
    next_at = models.DateTimeField()

    class Meta:
        db_table = "django_tasks_q_rate"
        verbose_name = _("rate limit")
        verbose_name_plural = _("rate limits")

    def __str__(self) -> str:
        return self.key


class Dashboard(Task):
    """No table of its own: gives the admin's monitoring dashboard a place in the app index."""

    class Meta:
        proxy = True
        verbose_name = _("dashboard")
        verbose_name_plural = _("dashboard")


class WorkerState(models.TextChoices):
    RUNNING = "RUNNING", _("Running")
    STOPPED = "STOPPED", _("Stopped")


class Worker(models.Model):
    """A runtaskworker process, as it last reported itself."""

    # Unique per process start; ``name`` is what the operator chose (--worker-id) or
    # hostname-pid. A worker starting under the name of an earlier process recovers at once
    # what that process held.
    id = models.CharField(primary_key=True, max_length=100)
    name = models.CharField(max_length=100, blank=True, default="", db_default="")
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


class CatchUp(models.TextChoices):
    """What a beat pass enqueues when several ticks of a schedule are due, or the only one was
    missed (older than ``BEAT_MISSED_AFTER``): the latest late tick, or one task for all."""

    SKIP = "skip", _("skip them")
    ONCE = "once", _("run once for all of them")


class ScheduleSource(models.TextChoices):
    ADMIN = "admin", _("admin")
    CODE = "code", _("code")


class Schedule(models.Model):
    """A task to enqueue periodically: on a cron expression, every interval, or once."""

    # Written by beat alone. Saving a schedule never writes them from the instance, which may
    # have been loaded before beat last moved them on.
    BEAT_FIELDS = frozenset({"next_run_at", "last_run_at", "run_count"})
    # A change to any of these recomputes next_run_at.
    TIMING_FIELDS = ("cron", "interval", "run_at", "timezone", "enabled")
    # What a declaration in code decides; read-only in the admin for rows owned by code.
    CODE_FIELDS = ("task", "args", "kwargs", "cron", "interval", "run_at", "timezone",
                   "queue", "priority", "expires_after", "catch_up")  # fmt: skip

    name = models.CharField(max_length=200, unique=True)
    task = models.CharField(_("task name"), max_length=255, help_text=_("a registered task name"))
    args = models.JSONField(default=list, blank=True, help_text=_('a JSON list, e.g. [1, "a"]'))
    kwargs = models.JSONField(
        default=dict, blank=True, help_text=_('a JSON object, e.g. {"report": "daily"}')
    )
    cron = models.CharField(
        max_length=200,
        blank=True,
        help_text=_("minute hour day month weekday, e.g. */5 * * * *; optional 6th field: seconds"),
    )
    interval = models.DurationField(
        null=True, blank=True, help_text=_("every so long, e.g. 00:05:00 for five minutes")
    )
    run_at = models.DateTimeField(_("one-off time"), null=True, blank=True)
    timezone = models.CharField(
        max_length=64, default="UTC", help_text=_("IANA name the cron expression is read in")
    )
    enabled = models.BooleanField(default=True)
    queue = models.CharField(max_length=100, blank=True, help_text=_("empty: the task's own queue"))
    priority = models.SmallIntegerField(
        null=True, blank=True, help_text=_("-100..100; empty: the task's own priority")
    )
    expires_after = models.DurationField(
        null=True,
        blank=True,
        help_text=_("a task not started this long after it was enqueued is cancelled"),
    )
    catch_up = models.CharField(max_length=4, choices=CatchUp.choices, default=CatchUp.SKIP)
    source = models.CharField(
        max_length=5, choices=ScheduleSource.choices, default=ScheduleSource.ADMIN, editable=False
    )
    next_run_at = models.DateTimeField(null=True, blank=True, editable=False)
    last_run_at = models.DateTimeField(
        null=True, blank=True, editable=False, help_text=_("tick of the last task enqueued")
    )
    run_count = models.PositiveBigIntegerField(default=0, editable=False)

    class Meta:
        db_table = "django_tasks_q_schedule"
        verbose_name = _("schedule")
        verbose_name_plural = _("schedules")
        indexes = [
            # Beat's question: which enabled schedule is due first.
            models.Index(
                fields=["next_run_at"],
                name="tasks_q_schedule_due_idx",
                condition=models.Q(enabled=True),
            ),
        ]
        constraints = [
            models.CheckConstraint(
                condition=(
                    models.Q(cron__gt="", interval__isnull=True, run_at__isnull=True)
                    | models.Q(cron="", interval__isnull=False, run_at__isnull=True)
                    | models.Q(cron="", interval__isnull=True, run_at__isnull=False)
                ),
                name="tasks_q_schedule_one_timing",
                violation_error_message=_(
                    "Give exactly one of a cron expression, an interval or a one-off time."
                ),
            ),
            models.CheckConstraint(
                condition=models.Q(priority__isnull=True)
                | models.Q(priority__gte=-100, priority__lte=100),
                name="tasks_q_schedule_priority_range",
            ),
        ]

    def __str__(self) -> str:
        return self.name

    def save(self, *args: Any, **kwargs: Any) -> None:
        update_fields = kwargs.get("update_fields")
        if update_fields is not None and set(update_fields) <= self.BEAT_FIELDS:
            super().save(*args, **kwargs)  # beat's own bookkeeping
            return
        using = kwargs.get("using") or router.db_for_write(type(self), instance=self)
        with transaction.atomic(using=using):
            current = None
            if not self._state.adding and self.pk is not None:
                # Locked: a beat enqueueing a tick of this schedule finishes first, so the
                # columns read here are the ones it left.
                current = (
                    type(self)
                    ._base_manager.using(using)
                    .select_for_update()
                    .filter(pk=self.pk)
                    .values(*self.TIMING_FIELDS, *self.BEAT_FIELDS)
                    .first()
                )
            if current is None:
                retimed = True
            else:
                fields = set(update_fields or self._written_by_save())
                retimed = any(
                    getattr(self, name) != current[name]
                    for name in self.TIMING_FIELDS
                    if name in fields
                )
                for name in self.BEAT_FIELDS:
                    setattr(self, name, current[name])
                written = fields - self.BEAT_FIELDS
                if retimed:
                    written.add("next_run_at")
                kwargs["update_fields"] = written
            if retimed:
                self.next_run_at = self.compute_next_run(queue.database_now(using))
            super().save(*args, **kwargs)
            if conf.LISTEN_NOTIFY:
                queue.notify_schedules_changed(using)

    @property
    def kind(self) -> str:
        if self.cron:
            return "cron"
        return "interval" if self.interval is not None else "one-off"

    @property
    def is_code_owned(self) -> bool:
        return self.source == ScheduleSource.CODE

    def timing(self) -> Timing:
        """This schedule's timing; raises :class:`~django_tasks_q.schedules.ScheduleError`
        for values that :meth:`clean` would refuse."""
        if self.cron:
            return Cron(check_cron(self.cron), get_zone(self.timezone))
        if self.interval is not None:
            return Interval(check_interval(self.interval))
        if self.run_at is not None:
            return Once(self.run_at)
        raise ScheduleError(f"Schedule {self.name!r} has no cron, interval or one-off time.")

    def compute_next_run(self, now: datetime) -> datetime | None:
        """Where the schedule starts from when created, enabled or retimed at ``now``."""
        if not self.enabled:
            return None
        timing = self.timing()
        if isinstance(timing, Interval):
            # On the grid of the last run if there was one; never in the past, which would
            # make a change look like downtime.
            if self.last_run_at is None:
                return now
            return max(self.last_run_at + timing.every, now)
        if isinstance(timing, Once):
            done = self.last_run_at is not None and timing.at <= self.last_run_at
            return None if done else timing.at
        return timing.next_after(now)

    def clean(self) -> None:
        errors: dict[str, list[str]] = {}

        def add(field: str, message: str) -> None:
            errors.setdefault(field, []).append(message)

        timings = {"cron": self.cron, "interval": self.interval, "run_at": self.run_at}
        given = [name for name, value in timings.items() if value not in ("", None)]
        if len(given) != 1:
            message = "Give exactly one of a cron expression, an interval or a one-off time" + (
                f" (this one has {' and '.join(given)})." if given else "."
            )
            for name in given or ["cron"]:
                add(name, message)
        try:
            if self.cron:
                self.cron = check_cron(self.cron)
        except ScheduleError as exc:
            add("cron", str(exc))
        try:
            if self.interval is not None:
                check_interval(self.interval)
        except ScheduleError as exc:
            add("interval", str(exc))
        try:
            get_zone(self.timezone)
        except ScheduleError as exc:
            add("timezone", str(exc))
        if self.expires_after is not None and self.expires_after <= timedelta(0):
            add("expires_after", "expires_after must be a positive duration, or empty.")
        if self.priority is not None and not -100 <= self.priority <= 100:
            add("priority", f"Priority must be from -100 to 100, got {self.priority}.")
        self._clean_arguments(add)
        self._clean_task(add, check_backend="priority" not in errors)
        if errors:
            raise ValidationError(errors)

    def clean_fields(self, exclude: Any = None) -> None:
        # args and kwargs are checked by clean(), whose messages say what to pass instead.
        super().clean_fields(exclude={*(exclude or ()), "args", "kwargs"})

    def _clean_arguments(self, add: Callable[[str, str], None]) -> None:
        if not isinstance(self.args, list):
            add("args", f'args must be a JSON list such as [1, "two"], got {self.args!r}.')
        if not isinstance(self.kwargs, dict):
            add("kwargs", f'kwargs must be a JSON object such as {{"a": 1}}, got {self.kwargs!r}.')
        for field, value in (("args", self.args), ("kwargs", self.kwargs)):
            try:
                check_json(value, field)
            except SerializationError as exc:
                add(field, str(exc))

    def _clean_task(self, add: Callable[[str, str], None], *, check_backend: bool) -> None:
        try:
            task = registry.get(self.task)
        except UnknownTaskError as exc:
            add("task", str(exc))
            return
        if not check_backend:
            return
        try:
            # A task checks itself against its backend when it is made (Django's Task does),
            # so making it with this schedule's queue and priority is the check.
            self.task_with_overrides(task)
        except InvalidTask as exc:
            add(NON_FIELD_ERRORS, str(exc))
        except Exception:
            return  # a TASKS setting that does not load is system check E009's to report

    def task_with_overrides(self, task: BackgroundTask) -> BackgroundTask:
        """``task`` with this schedule's queue and priority, where it sets them."""
        if not self.queue and self.priority is None:
            return task
        return task.using(
            queue_name=self.queue or task.queue_name,
            priority=task.priority if self.priority is None else self.priority,
        )

    def _written_by_save(self) -> list[str]:
        return [field.name for field in self._meta.concrete_fields if not field.primary_key]
