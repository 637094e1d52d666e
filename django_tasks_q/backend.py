"""``django.tasks`` backend storing tasks in PostgreSQL.

``TASKS = {"default": {"BACKEND": "django_tasks_q.backend.PostgresBackend"}}`` makes Django's
``@task`` and ``@background_task`` one model of a task. A project that does not configure
``TASKS`` at all still gets this backend for ``@background_task`` (see :func:`implicit_backend`).
"""

from __future__ import annotations

import dataclasses
import json
import uuid
from collections.abc import Sequence
from contextlib import nullcontext
from datetime import datetime
from functools import cache
from typing import Any

from django.conf import settings
from django.db import IntegrityError, transaction
from django.utils import timezone

from django_tasks_q import canvas, queue, registry, tracing
from django_tasks_q.canvas import Step
from django_tasks_q.compat import (
    DEFAULT_TASK_BACKEND_ALIAS,
    DEFAULT_TASK_QUEUE_NAME,
    TASK_MAX_PRIORITY,
    TASK_MIN_PRIORITY,
    BaseTaskBackend,
    InvalidTask,
    Task,
    TaskResultDoesNotExist,
    is_module_level_function,
    task_backends,
    task_enqueued,
)
from django_tasks_q.conf import settings as conf
from django_tasks_q.exceptions import UnknownTaskError
from django_tasks_q.limits import RECEIVED, RECEIVED_ARGUMENTS, limits_for, may_be_limited
from django_tasks_q.models import Cancellation, TaskStatus, task_lookup
from django_tasks_q.models import Task as TaskRow
from django_tasks_q.results import TaskHandle
from django_tasks_q.routing import route_for
from django_tasks_q.serialization import check_arguments, dumps
from django_tasks_q.tasks import BackgroundTask, MissingTask, RemoteTask, expiry_time


class PostgresBackend(BaseTaskBackend):
    task_class = BackgroundTask
    supports_defer = True
    supports_get_result = True
    supports_priority = True
    supports_async_task = True

    def __init__(self, alias: str, params: dict[str, Any]) -> None:
        super().__init__(alias, params)
        # Unlike Django's base class, no QUEUES means "any queue", not only "default".
        self.queues = set(params.get("QUEUES") or ())
        self.options = params.get("OPTIONS") or {}

    @property
    def database(self) -> str:
        return self.options.get("DATABASE") or conf.DATABASE

    def validate_task(self, task: Task) -> None:
        """Django's rules first; where a rule fails, the message says what to change."""
        if isinstance(task, MissingTask) and not isinstance(task, RemoteTask):
            raise UnknownTaskError(
                f"Task {task.name!r} is no longer in the code: a handle of one of its stored "
                "rows can read it, not enqueue it again."
            )
        if isinstance(task, BackgroundTask):
            # The same rules as Django's but one: the context parameter of a bind=True task
            # may have any name (Celery's `self` too), as the worker passes it by position.
            self._explain_invalid(task)
            return
        try:
            super().validate_task(task)
        except InvalidTask as exc:
            self._explain_invalid(task)  # raises a more precise message where it has one
            raise InvalidTask(f"Task {task.module_path}: {exc}") from None
        self._explain_invalid(task)

    def _explain_invalid(self, task: Task) -> None:
        where = f"Task {task.module_path}"
        if not is_module_level_function(task.func):
            raise InvalidTask(
                f"{where}: tasks must be module-level functions, so a worker can find them."
            )
        if task.takes_context and not _has_first_parameter(task.func):
            raise InvalidTask(
                f"{where} takes a context (bind/takes_context) but has no parameter to receive "
                "it; add a first parameter named `context`."
            )
        priority = task.priority
        if (
            isinstance(priority, bool)
            or not isinstance(priority, int)
            or not (TASK_MIN_PRIORITY <= priority <= TASK_MAX_PRIORITY)
        ):
            raise InvalidTask(
                f"{where}: priority must be a whole number between {TASK_MIN_PRIORITY} and "
                f"{TASK_MAX_PRIORITY} (higher runs first), got {priority!r}."
            )
        run_after = task.run_after
        if run_after is not None and settings.USE_TZ and timezone.is_naive(run_after):
            raise InvalidTask(
                f"{where}: eta/run_after {run_after.isoformat()} is a naive datetime but USE_TZ "
                "is on; pass an aware one, e.g. timezone.now() + timedelta(minutes=5)."
            )
        if self.queues and task.queue_name not in self.queues:
            raise InvalidTask(
                f"{where}: queue {task.queue_name!r} is not allowed by TASKS[{self.alias!r}]"
                f"['QUEUES'] ({', '.join(sorted(self.queues))}); use one of those or add it there."
            )

    def enqueue(
        self,
        task: Task,
        args: Sequence[Any],
        kwargs: dict[str, Any],
        *,
        expires_at: datetime | None = None,
        schedule_id: int | None = None,
        scheduled_for: datetime | None = None,
        unique_key: str | None = None,
        chosen_id: str | None = None,
    ) -> TaskHandle:
        """Django's enqueue. Beat also passes the schedule and tick the task stands for, and
        when it expires (no attempt starts after ``expires_at``). With ``unique_key``, while a
        task with that key is unfinished (waiting, ready or running), nothing is enqueued and
        that task's handle is returned instead. With ``chosen_id`` (``task_id=`` of
        ``apply_async``), the task with that id is returned if there is one."""
        task = routed(task)
        if getattr(task, "link", ()) or getattr(task, "link_error", ()):
            if unique_key is not None or chosen_id is not None:
                raise InvalidTask(
                    f"Task {task.name} has link/link_error callbacks, which cannot be combined "
                    "with unique_key or task_id."
                )
            options = {"expires": expires_at} if expires_at is not None else None
            plan = canvas.plan_for_task(canvas.Signature(task, args, kwargs, options), ())
            schedule = (schedule_id, scheduled_for) if schedule_id is not None else None
            return plan.enqueue(schedule=schedule).steps[0]
        self.validate_task(task)
        check_arguments(args, kwargs)
        found_limits = limits_for(task, task.queue_name, args, kwargs)
        args_json, kwargs_json = dumps(list(args)), dumps(kwargs)
        with tracing.enqueue_span("enqueue", task.name, task.queue_name) as traced:
            # A conflicting task can finish between the insert and the look-up; then try again.
            for _ in range(5):
                try:
                    # Only a chosen id can fail the insert; the savepoint keeps the caller's
                    # transaction usable when it does.
                    with transaction.atomic(using=self.database) if chosen_id else nullcontext():
                        row = queue.enqueue(
                            **self._columns(task),
                            args_json=args_json,
                            kwargs_json=kwargs_json,
                            expires_at=expires_at,
                            schedule_id=schedule_id,
                            scheduled_for=scheduled_for,
                            unique_key=unique_key,
                            chosen_id=chosen_id,
                            trace_context=traced and traced.context,
                            **found_limits.columns(),
                        )
                except IntegrityError as error:
                    if chosen_id is None or _constraint_of(error) != "tasks_q_chosen_id_uniq":
                        raise
                    return self._task_with_chosen_id(task, chosen_id)
                if row is not None:
                    break
                existing = queue.active_with_unique_key(unique_key, using=self.database)
                if existing is not None:
                    return self.get_result(existing)
            else:
                raise RuntimeError(
                    f"could not enqueue or find the task with unique key {unique_key!r}"
                )
            if traced:
                traced.enqueued([row.id])
        handle = self._new_handle(task, row, json.loads(args_json), json.loads(kwargs_json))
        task_enqueued.send(type(self), task_result=handle)
        return handle

    def check(self, **kwargs: Any) -> list:
        """System checks for this backend (Django runs them for every TASKS entry)."""
        from django.apps import apps
        from django.core import checks
        from django.db import connections

        messages = list(super().check(**kwargs))
        if not apps.is_installed("django_tasks_q"):
            messages.append(
                checks.Error(
                    f"TASKS[{self.alias!r}] uses PostgresBackend, but django_tasks_q is not in "
                    "INSTALLED_APPS.",
                    hint="Add 'django_tasks_q' to INSTALLED_APPS and run migrate.",
                    id="django_tasks_q.backend.E001",
                )
            )
        if "DATABASE" not in self.options:
            return messages  # TASKS_Q["DATABASE"]: the settings checks cover it (E007, E008)
        if self.database not in connections:
            messages.append(
                checks.Error(
                    f"TASKS[{self.alias!r}] stores tasks in database {self.database!r}, which "
                    "is not in DATABASES.",
                    hint="Set OPTIONS['DATABASE'] to an alias of DATABASES.",
                    id="django_tasks_q.backend.E002",
                )
            )
        elif connections[self.database].vendor != "postgresql":
            messages.append(
                checks.Error(
                    f"TASKS[{self.alias!r}] stores tasks in database {self.database!r}, which is "
                    f"{connections[self.database].vendor}, not PostgreSQL.",
                    hint="Point OPTIONS['DATABASE'] at a database whose ENGINE is "
                    "'django.db.backends.postgresql'.",
                    id="django_tasks_q.backend.E003",
                )
            )
        return messages

    def enqueue_workflow(
        self, steps: Sequence[Step], *, schedule: tuple[int, datetime] | None = None
    ) -> list[TaskHandle]:
        """Enqueue a workflow's steps and the edges between them, in one statement in the
        caller's transaction (see django_tasks_q.canvas). Steps that depend only on tasks
        of one existing workflow join it; otherwise the steps get a workflow of their own.
        ``schedule``: the schedule and tick the first step stands for (beat)."""
        rows: list[queue.WorkflowRow] = []
        edges: list[queue.WorkflowEdge] = []
        has_dependents = [False] * len(steps)
        external: set[int] = set()
        arguments: list[tuple[list, dict]] = []
        # Each distinct task object, routed, and the columns it gives its rows (a chord's
        # header is one task): validated and worked out once.
        prepared: dict[int, tuple[Task, dict[str, Any]]] = {}
        for index, step in enumerate(steps):
            if id(step.task) not in prepared:
                task = routed(step.task)
                self.validate_task(task)
                columns = self._columns(task)
                del columns["using"], columns["notify"]
                prepared[id(step.task)] = (task, columns)
            task, columns = prepared[id(step.task)]
            args, receives = list(step.args), step.receives
            if receives == "results" and not step.waits_for:
                args, receives = [[], *args], ""  # after an empty group: its empty list
            try:
                check_arguments(args, step.kwargs)
                # What the step receives from its dependencies comes first in its arguments.
                received = [RECEIVED] * RECEIVED_ARGUMENTS.get(receives, 0)
                step_limits = limits_for(task, task.queue_name, [*received, *args], step.kwargs)
            except (TypeError, ValueError) as exc:
                raise type(exc)(f"workflow step {index + 1} ({task.name}): {exc}") from None
            for position, (parent, run_if) in enumerate(step.waits_for):
                if isinstance(parent, int):
                    edges.append(queue.WorkflowEdge(index, position, run_if, parent=parent))
                    has_dependents[parent] = True
                else:
                    edges.append(
                        queue.WorkflowEdge(index, position, run_if, parent_id=parent.task_id)
                    )
                    external.add(parent.task_id)
            expires_at = step.expires
            if isinstance(expires_at, str):
                expires_at = datetime.fromisoformat(expires_at)
            if expires_at is not None:
                expires_at = expiry_time(expires_at, task.run_after)
            arguments.append((args, dict(step.kwargs)))
            rows.append(
                queue.WorkflowRow(
                    **columns,
                    args_json=dumps(args),
                    kwargs_json=dumps(step.kwargs),
                    expires_at=expires_at,
                    receives=receives,
                    has_dependents=False,
                    **step_limits.columns(),
                )
            )
        rows = [
            dataclasses.replace(row, has_dependents=flag)
            for row, flag in zip(rows, has_dependents, strict=True)
        ]
        if schedule is not None:
            rows[0] = dataclasses.replace(
                rows[0], schedule_id=schedule[0], scheduled_for=schedule[1]
            )
        workflow_id = str(uuid.uuid4())
        if external:
            found = queue.existing_dependencies(external, using=self.database)
            missing = sorted(external - found.keys())
            if missing:
                raise InvalidTask(
                    f"depends_on names task {', '.join(f'#{n}' for n in missing)}, which does "
                    "not exist (pruned, or an id from another database?)."
                )
            workflows = set(found.values())
            if len(workflows) == 1 and None not in workflows:
                workflow_id = workflows.pop()
        first = prepared[id(steps[0].task)][0]
        with tracing.enqueue_span("enqueue workflow", first.name, first.queue_name) as traced:
            enqueued = queue.enqueue_workflow(
                using=self.database,
                workflow_id=workflow_id,
                rows=rows,
                edges=edges,
                notify=conf.LISTEN_NOTIFY,
                trace_context=traced and traced.context,
            )
            if traced:
                traced.enqueued([row.id for row in enqueued])
        handles = [
            TaskHandle.build(
                prepared[id(step.task)][0],
                backend=self.alias,
                id=row.id,
                status=TaskStatus(row.status),
                args=args,
                kwargs=kwargs,
                max_attempts=getattr(step.task, "max_attempts", 1),
                enqueued_at=row.enqueued_at,
                run_after=row.run_after,
                workflow_id=workflow_id,
            )
            for step, row, (args, kwargs) in zip(steps, enqueued, arguments, strict=True)
        ]
        if task_enqueued.receivers:
            for handle in handles:
                task_enqueued.send(type(self), task_result=handle)
        return handles

    def enqueue_many(
        self, task: Task, args_list: Sequence[Sequence[Any]], kwargs_list: Sequence[dict[str, Any]]
    ) -> list[TaskHandle]:
        task = routed(task)
        if getattr(task, "link", ()) or getattr(task, "link_error", ()):
            # Each task comes with its callbacks: one workflow each, all or none of them.
            with transaction.atomic(using=self.database):
                return [
                    self.enqueue(task, args, kwargs)
                    for args, kwargs in zip(args_list, kwargs_list, strict=True)
                ]
        self.validate_task(task)
        for index, (args, kwargs) in enumerate(zip(args_list, kwargs_list, strict=True)):
            try:
                check_arguments(args, kwargs)
            except (TypeError, ValueError) as exc:
                raise type(exc)(f"task {index} of the batch: {exc}") from None
        args_json = [dumps(list(args)) for args in args_list]
        kwargs_json = [dumps(kwargs) for kwargs in kwargs_list]
        limited: dict[str, list] = {}
        if may_be_limited(task, task.queue_name):
            columns = [
                limits_for(task, task.queue_name, args, kwargs).columns()
                for args, kwargs in zip(args_list, kwargs_list, strict=True)
            ]
            limited = {name: [c[name] for c in columns] for name in columns[0]}
            limited["fair_turn"] = columns[0]["fair_turn"]  # the setting: one for all
        with tracing.enqueue_span("enqueue_many", task.name, task.queue_name) as traced:
            rows = queue.enqueue_many(
                **self._columns(task), args_json=args_json, kwargs_json=kwargs_json,
                trace_context=traced and traced.context, **limited,
            )  # fmt: skip
            if traced:
                traced.enqueued([row.id for row in rows])
        handles = [
            self._new_handle(task, row, list(args), dict(kwargs))
            for row, args, kwargs in zip(rows, args_list, kwargs_list, strict=True)
        ]
        if task_enqueued.receivers:
            for handle in handles:
                task_enqueued.send(type(self), task_result=handle)
        return handles

    def _columns(self, task: Task) -> dict[str, Any]:
        """What every enqueued row takes from the task and the backend."""
        return {
            "using": self.database,
            "name": task.name,
            "queue": task.queue_name,
            "priority": task.priority,
            "run_after": task.run_after,
            "max_attempts": getattr(task, "max_attempts", 1),
            "max_lost_attempts": getattr(task, "max_lost_attempts", None) or conf.MAX_LOST_ATTEMPTS,
            "timeout": getattr(task, "timeout", None),
            "notify": conf.LISTEN_NOTIFY,
        }

    def _new_handle(self, task: Task, row: queue.Enqueued, args: list, kwargs: dict) -> TaskHandle:
        return TaskHandle.build(
            task,
            backend=self.alias,
            id=row.id,
            status=TaskStatus(row.status),
            args=args,
            kwargs=kwargs,
            max_attempts=getattr(task, "max_attempts", 1),
            enqueued_at=row.enqueued_at,
            run_after=row.run_after,
        )

    def _task_with_chosen_id(self, task: Task, chosen_id: str) -> TaskHandle:
        row = TaskRow.objects.using(self.database).get(chosen_id=chosen_id)
        if row.name != task.name:
            raise InvalidTask(
                f"task_id {chosen_id!r} is taken by task #{row.pk} ({row.name}); a chosen id "
                f"names one task, and {task.name} is another. Choose ids that include the task, "
                "e.g. f'{name}-{key}'."
            )
        return self.handle_from_row(row)

    def get_result(self, result_id: str | int) -> TaskHandle:
        """The task with this id: the database's, or the one its caller chose (``task_id=``)."""
        try:
            row = TaskRow.objects.using(self.database).get(**task_lookup(result_id))
        except (ValueError, TypeError, TaskRow.DoesNotExist):
            raise TaskResultDoesNotExist(f"No task with id {result_id!r}.") from None
        return self.handle_from_row(row)

    def handle_from_row(self, row: TaskRow) -> TaskHandle:
        """The handle of a stored row, also when its task was renamed or removed from the code
        since (then its ``task`` is a :class:`MissingTask` that cannot be enqueued)."""
        task = registry.find(row.name)
        if task is None:
            task = MissingTask.named(
                row.name, queue=row.queue, priority=row.priority, backend=self.alias
            )
        elif task.queue_name != row.queue or task.priority != row.priority:
            task = task.using(queue_name=row.queue, priority=row.priority)
        return TaskHandle.build(
            task,
            backend=self.alias,
            id=row.pk,
            status=TaskStatus(row.status),
            args=row.args,
            kwargs=row.kwargs,
            stored_errors=row.errors,
            holder=row.worker_id,
            attempt_count=row.attempts,
            max_attempts=row.max_attempts,
            lost_attempts=row.lost_attempts,
            enqueued_at=row.enqueued_at,
            started_at=row.started_at,
            finished_at=row.finished_at,
            last_attempted_at=row.last_attempted_at,
            run_after=row.run_after,
            queue=row.queue,
            priority=row.priority,
            result_json=row.result,
            workflow_id=None if row.workflow_id is None else str(row.workflow_id),
        )

    def cancel(self, result_id: str | int, *, terminate: bool = False) -> Cancellation:
        """Cancel a task that has not started, or ask a running one to stop (see
        ``context.is_cancelled()``; with ``terminate``, a process-pool worker kills the task's
        process if it has not stopped shortly after). A task claimed by a worker but not
        started yet counts as running here, and never starts."""
        try:
            lookup = task_lookup(result_id)
            task_id = lookup.get("pk") or TaskRow.objects.using(self.database).values_list(
                "pk", flat=True
            ).get(**lookup)
        except (TypeError, ValueError, TaskRow.DoesNotExist):
            raise TaskResultDoesNotExist(f"No task with id {result_id!r}.") from None
        status = queue.cancel(
            task_id, using=self.database, terminate=terminate, notify=conf.LISTEN_NOTIFY
        )
        if status is None:
            return Cancellation.ALREADY_FINISHED
        return Cancellation.CANCELLED if status == "CANCELLED" else Cancellation.STOP_REQUESTED


def _constraint_of(error: IntegrityError) -> str | None:
    diag = getattr(error.__cause__, "diag", None)
    return getattr(diag, "constraint_name", None)


def routed(task: Task) -> Task:
    """``task`` with the queue and priority TASKS_Q["ROUTES"] gives it, where its code did
    not choose them. A Django ``@task`` counts as choosing them when they differ from the
    defaults."""
    route = route_for(task.name)
    if route is None:
        return task
    changes: dict[str, Any] = {}
    if route.queue and not getattr(task, "queue_given", task.queue_name != DEFAULT_TASK_QUEUE_NAME):
        changes["queue_name"] = route.queue
    if route.priority is not None and not getattr(task, "priority_given", task.priority != 0):
        changes["priority"] = route.priority
    return dataclasses.replace(task, **changes) if changes else task


def _has_first_parameter(func: Any) -> bool:
    import inspect

    params = list(inspect.signature(func).parameters.values())
    return bool(params) and params[0].kind in (
        inspect.Parameter.POSITIONAL_ONLY,
        inspect.Parameter.POSITIONAL_OR_KEYWORD,
    )


@cache
def implicit_backend() -> PostgresBackend:
    """The backend used when the project has no ``TASKS`` setting of its own."""
    return PostgresBackend(alias=DEFAULT_TASK_BACKEND_ALIAS, params={})


def resolve_backend(alias: str) -> BaseTaskBackend:
    """The backend a task with this ``TASKS`` alias goes to.

    A project that never configured ``TASKS`` gets the Postgres backend, not Django's
    ImmediateBackend default: adding the app is enough to have a queue.
    """
    if not settings.is_overridden("TASKS"):
        return implicit_backend()
    return task_backends[alias]


def get_backend(alias: str = DEFAULT_TASK_BACKEND_ALIAS) -> PostgresBackend:
    """The Postgres backend for ``alias`` (the implicit one if ``TASKS`` is not configured)."""
    backend = resolve_backend(alias)
    if not isinstance(backend, PostgresBackend):
        raise InvalidTask(
            f"TASKS[{alias!r}] uses {type(backend).__module__}.{type(backend).__name__}; "
            "set its BACKEND to 'django_tasks_q.backend.PostgresBackend'."
        )
    return backend
