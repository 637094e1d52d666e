"""``@background_task`` and the task object it makes: a ``django.tasks.Task`` with our options."""

from __future__ import annotations

import difflib
import inspect
import re
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, NoReturn

from django.utils import timezone

from django_tasks_q import canvas, limits, registry
from django_tasks_q.compat import (
    DEFAULT_TASK_BACKEND_ALIAS,
    DEFAULT_TASK_QUEUE_NAME,
    InvalidTask,
    Task,
    TaskContext,
)
from django_tasks_q.declarations import DeclarationError, from_decorator
from django_tasks_q.exceptions import (
    MaxRetriesExceededError,
    Retry,
    TaskCancelled,
    UnknownTaskError,
)

if TYPE_CHECKING:
    from django_tasks_q.results import TaskHandle

DEFAULT_RETRY_DELAY = 180.0
DEFAULT_RETRY_BACKOFF_MAX = 600.0


@dataclass(frozen=True, slots=True, kw_only=True)
class BackgroundTask(Task):
    """A Django ``Task`` that runs on the Postgres queue, with Celery-style options."""

    task_name: str = ""
    max_retries: int = 0
    retry_backoff: bool | float = False
    retry_backoff_max: float = DEFAULT_RETRY_BACKOFF_MAX
    retry_jitter: bool = True
    autoretry_for: tuple[type[BaseException], ...] = ()
    default_retry_delay: float = DEFAULT_RETRY_DELAY
    timeout: float | None = None
    soft_timeout: float | None = None
    ignore_result: bool = False
    # Lost attempts tolerated before the task is FAILED; None: TASKS_Q["MAX_LOST_ATTEMPTS"].
    max_lost_attempts: int | None = None
    # A cron expression, an interval, a one-off datetime or a dict; see declarations.py.
    schedule: Any = None
    # Callbacks run after every enqueue of this task: signatures (docs/workflows.md).
    link: tuple[dict[str, Any], ...] = ()
    link_error: tuple[dict[str, Any], ...] = ()
    # Flow control across every worker (docs/flow-control.md): at most `concurrency` running
    # at once, at most `rate_limit` starts ("10/s", "100/m"), per value of `limit_by` (a
    # parameter's name or a function of the arguments) when given, else for the task.
    concurrency: int | None = None
    rate_limit: str | float | None = None
    limit_by: str | Callable[..., Any] | None = None
    # Fair queues: tasks of this queue take turns by this key (a parameter's name or a
    # function of the arguments), so one key's backlog does not hold the others up.
    fair_by: str | Callable[..., Any] | None = None
    # Whether the queue and priority were chosen in code (the decorator, using(), apply_async):
    # TASKS_Q["ROUTES"] decides the others (django_tasks_q.routing).
    queue_given: bool = False
    priority_given: bool = False

    def __post_init__(self) -> None:
        _validate_options(self)
        Task.__post_init__(self)
        registry.register(self)

    @property
    def name(self) -> str:
        """The registered name: ``task_name`` if given, else ``module.function``."""
        return self.task_name or self.module_path

    @property
    def max_attempts(self) -> int:
        return self.max_retries + 1

    def get_backend(self):
        from django_tasks_q.backend import resolve_backend

        return resolve_backend(self.backend)

    def postgres_backend(self, what: str) -> Any:
        """This task's backend, which ``what`` (an option or a call) needs to be ours; a clear
        error naming the configured backend when it is another (Django's ImmediateBackend or
        DummyBackend in tests, say)."""
        from django_tasks_q.backend import PostgresBackend

        backend = self.get_backend()
        if not isinstance(backend, PostgresBackend):
            kind = f"{type(backend).__module__}.{type(backend).__name__}"
            raise InvalidTask(
                f"{what} needs django_tasks_q's PostgreSQL backend, but TASKS"
                f"[{self.backend!r}] uses {kind}. Configure "
                "'django_tasks_q.backend.PostgresBackend' there, or leave it out."
            )
        return backend

    def using(
        self,
        *,
        priority: int | None = None,
        queue_name: str | None = None,
        run_after: datetime | None = None,
        backend: str | None = None,
    ) -> BackgroundTask:
        """Django's ``using``: a copy with other defaults. A queue or priority given here is
        not changed by a route."""
        task = Task.using(
            self, priority=priority, queue_name=queue_name, run_after=run_after, backend=backend
        )
        given = {}
        if queue_name is not None:
            given["queue_given"] = True
        if priority is not None:
            given["priority_given"] = True
        return replace(task, **given) if given else task

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """Run the function here and now, like calling the undecorated function (for an
        ``async def`` task, that returns a coroutine to await)."""
        return self.func(*args, **kwargs)

    def enqueue(self, *args: Any, **kwargs: Any) -> TaskHandle:
        """Django's ``enqueue``. A task with ``link`` / ``link_error`` callbacks needs our
        backend: another would run it without them."""
        if self.link or self.link_error:
            self.postgres_backend("A task with link= or link_error= callbacks")
        return Task.enqueue(self, *args, **kwargs)

    async def aenqueue(self, *args: Any, **kwargs: Any) -> TaskHandle:
        if self.link or self.link_error:
            self.postgres_backend("A task with link= or link_error= callbacks")
        return await Task.aenqueue(self, *args, **kwargs)

    def delay(self, *args: Any, **kwargs: Any) -> TaskHandle:
        """Enqueue with these arguments (Celery spelling of ``enqueue``)."""
        return self.enqueue(*args, **kwargs)

    async def adelay(self, *args: Any, **kwargs: Any) -> TaskHandle:
        """``delay`` from async code (``aenqueue``)."""
        return await self.aenqueue(*args, **kwargs)

    async def aapply_async(
        self,
        args: Sequence[Any] | None = None,
        kwargs: Mapping[str, Any] | None = None,
        **options: Any,
    ) -> TaskHandle:
        """``apply_async`` from async code; the same options."""
        from asgiref.sync import sync_to_async

        return await sync_to_async(self.apply_async, thread_sensitive=True)(args, kwargs, **options)

    def apply_async(
        self,
        args: Sequence[Any] | None = None,
        kwargs: Mapping[str, Any] | None = None,
        *,
        countdown: float | None = None,
        eta: datetime | None = None,
        queue: str | None = None,
        priority: int | None = None,
        expires: float | timedelta | datetime | None = None,
        unique_key: str | None = None,
        task_id: str | uuid.UUID | None = None,
        depends_on: Iterable[Any] | None = None,
        link: Any = None,
        link_error: Any = None,
        **unknown: Any,
    ) -> TaskHandle:
        """Enqueue with per-call options: start no sooner than ``countdown`` seconds from now
        or ``eta``; override the task's ``queue`` and ``priority``; with ``expires`` (seconds
        from now, a timedelta or an aware datetime), no attempt starts after that time: a task
        still waiting then is cancelled instead. With ``unique_key``, if a task with that key
        is waiting, ready or running, nothing is enqueued and its handle is returned.
        ``task_id`` (Celery's name): an id of the caller's choosing, not only digits, which
        ``get_result()`` finds the task by; while a task with that id is kept, enqueueing it
        again returns that task.

        ``depends_on`` (handles, ids or :class:`~django_tasks_q.canvas.After`): the task
        waits until those finished, and is cancelled if one did not succeed (unless its
        ``After`` says otherwise). ``link`` / ``link_error``: signatures to run after it
        succeeded (with its result) or once it failed (with its id and last error)."""
        if unknown:
            _refuse_unknown_options(unknown)
        if task_id is not None:
            task_id = _checked_task_id(task_id)
            if unique_key is not None:
                raise InvalidTask(
                    "task_id cannot be combined with unique_key: a chosen id already makes "
                    "enqueueing twice a no-op."
                )
        if (
            depends_on is not None
            or link is not None
            or link_error is not None
            or (self.link or self.link_error)
        ):
            if task_id is not None:
                raise InvalidTask(
                    "task_id cannot be combined with depends_on, link or link_error: workflow "
                    "steps get their ids from the database."
                )
            if unique_key is not None:
                raise InvalidTask(
                    "unique_key cannot be combined with depends_on, link or link_error."
                )
            self.postgres_backend("apply_async(depends_on=, link=, link_error=)")
            options = {
                "countdown": countdown, "eta": eta, "queue": queue, "priority": priority,
                "expires": expires, "link": link, "link_error": link_error,
            }  # fmt: skip
            sig = canvas.Signature(
                self,
                args or (),
                kwargs,
                {name: value for name, value in options.items() if value is not None},
            )
            plan = canvas.plan_for_task(sig, depends_on or ())
            return plan.enqueue().steps[0]
        task = self.with_options(countdown=countdown, eta=eta, queue=queue, priority=priority)
        args, kwargs = tuple(args or ()), dict(kwargs or {})
        if expires is None and unique_key is None and task_id is None:
            return task.enqueue(*args, **kwargs)
        if unique_key is not None and not (
            isinstance(unique_key, str) and 0 < len(unique_key) <= 255
        ):
            raise InvalidTask(
                f"unique_key must be a non-empty string of at most 255 characters, "
                f"got {unique_key!r}."
            )
        given = {"expires": expires, "unique_key": unique_key, "task_id": task_id}
        names = ", ".join(f"{name}=" for name, value in given.items() if value is not None)
        backend = self.postgres_backend(f"apply_async({names})")
        expires_at = None if expires is None else expiry_time(expires, task.run_after)
        return backend.enqueue(
            task, args, kwargs, expires_at=expires_at, unique_key=unique_key, chosen_id=task_id
        )

    def s(self, *args: Any, **kwargs: Any) -> canvas.Signature:
        """A signature of this task with these arguments: a workflow step, or a callback.
        In a chain it receives the previous step's result before ``args``."""
        return canvas.Signature(self, args, kwargs)

    def si(self, *args: Any, **kwargs: Any) -> canvas.Signature:
        """An immutable signature: in a chain or as a callback, it receives nothing more."""
        return canvas.Signature(self, args, kwargs, immutable=True)

    def signature(
        self,
        args: Sequence[Any] = (),
        kwargs: Mapping[str, Any] | None = None,
        *,
        immutable: bool = False,
        **options: Any,
    ) -> canvas.Signature:
        return canvas.Signature(self, args, kwargs, options, immutable=immutable)

    def with_options(
        self,
        *,
        countdown: float | None = None,
        eta: datetime | None = None,
        queue: str | None = None,
        priority: int | None = None,
    ) -> BackgroundTask:
        if countdown is not None and eta is not None:
            raise InvalidTask("Pass either countdown or eta, not both.")
        if countdown is not None:
            if not isinstance(countdown, (int, float)) or countdown < 0:
                raise InvalidTask(f"countdown must be a number of seconds >= 0, got {countdown!r}.")
            eta = timezone.now() + timedelta(seconds=countdown)
        if (eta, queue, priority) == (None, None, None):
            return self
        return self.using(run_after=eta, queue_name=queue, priority=priority)

    def enqueue_many(
        self,
        args_list: Iterable[Sequence[Any]],
        kwargs_list: Iterable[Mapping[str, Any]] | None = None,
    ) -> list[TaskHandle]:
        """Enqueue one task per argument tuple, in one statement.

        ``add.enqueue_many([(1, 2), (3, 4)])``; ``kwargs_list`` gives keyword arguments per task.
        """
        args_list = [tuple(args) for args in args_list]
        kwargs_list = (
            [dict(k) for k in kwargs_list] if kwargs_list is not None else [{}] * len(args_list)
        )
        if len(kwargs_list) != len(args_list):
            raise InvalidTask(
                f"enqueue_many got {len(args_list)} argument tuples but {len(kwargs_list)} "
                "keyword dicts; pass one of each per task."
            )
        backend = self.get_backend()
        if not hasattr(backend, "enqueue_many"):  # Django's own backends: one at a time
            pairs = zip(args_list, kwargs_list, strict=True)
            return [self.enqueue(*args, **kwargs) for args, kwargs in pairs]
        return backend.enqueue_many(self, args_list, kwargs_list)


# Celery's apply_async options that mean nothing here, and what to use instead.
_CELERY_OPTIONS = {
    "time_limit": "set timeout= on @background_task (a hard limit, enforced by the worker)",
    "soft_time_limit": "set soft_timeout= on @background_task",
    "headers": "pass what the task needs as arguments",
    "routing_key": "use queue=",
    "exchange": "use queue=",
    "serializer": "arguments are always JSON",
    "compression": "arguments are stored as jsonb",
    "retry": "enqueueing is an INSERT in your transaction; there is no broker to retry",
    "retry_policy": "enqueueing is an INSERT in your transaction; there is no broker to retry",
    "shadow": "the task's name is its registered name",
    "ignore_result": "set ignore_result= on @background_task",
}
_APPLY_ASYNC_OPTIONS = ("countdown", "eta", "queue", "priority", "expires", "unique_key",
                        "task_id", "depends_on", "link", "link_error")  # fmt: skip


def _checked_task_id(task_id: Any) -> str:
    if isinstance(task_id, uuid.UUID):
        return str(task_id)
    if not (isinstance(task_id, str) and 0 < len(task_id) <= 255):
        raise InvalidTask(
            f"task_id must be a non-empty string of at most 255 characters (a UUID, say), "
            f"got {task_id!r}."
        )
    if task_id.isdigit():
        raise InvalidTask(
            f"task_id {task_id!r} must be not only digits: those are the database's ids. "
            "Use a UUID, or a prefix such as 'invoice-42'."
        )
    return task_id


def _refuse_unknown_options(unknown: Mapping[str, Any]) -> NoReturn:
    option = next(iter(unknown))
    if option in _CELERY_OPTIONS:
        raise InvalidTask(
            f"apply_async() does not take Celery's {option!r} option: {_CELERY_OPTIONS[option]}."
        )
    close = difflib.get_close_matches(option, _APPLY_ASYNC_OPTIONS, n=1)
    hint = f"did you mean {close[0]!r}?" if close else f"valid: {', '.join(_APPLY_ASYNC_OPTIONS)}"
    raise InvalidTask(f"apply_async() got an unknown option {option!r}; {hint}")


def _missing_function(*args: Any, **kwargs: Any) -> NoReturn:
    raise UnknownTaskError("This task is no longer in the code; it cannot run.")


@dataclass(frozen=True, slots=True, kw_only=True)
class MissingTask(BackgroundTask):
    """Stands for the task of a stored row whose name is no longer in the code (renamed or
    removed), so its handle still reads the row. Not registered, so no worker takes it for a
    known task, and it cannot be enqueued."""

    def __post_init__(self) -> None:
        pass  # neither validated against a backend nor registered

    @classmethod
    def named(cls, name: str, *, queue: str, priority: int, backend: str) -> MissingTask:
        return cls(
            func=_missing_function,
            task_name=name,
            queue_name=queue,
            priority=priority,
            backend=backend,
            run_after=None,
            takes_context=False,
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class RemoteTask(MissingTask):
    """Stands for a task enqueued by name (send_task) that this process does not have: its
    rows carry no options (max_attempts 0), which the worker that runs it fills in from the
    task's declaration (worker.runner.as_declared)."""

    @property
    def max_attempts(self) -> int:
        return 0


def expiry_time(expires: float | timedelta | datetime, run_after: datetime | None) -> datetime:
    if isinstance(expires, datetime):
        if timezone.is_naive(expires):
            raise InvalidTask(
                f"expires {expires.isoformat()} is a naive datetime; pass an aware one, e.g. "
                "timezone.now() + timedelta(hours=1)."
            )
        expires_at = expires
    elif isinstance(expires, timedelta) or (
        isinstance(expires, (int, float)) and not isinstance(expires, bool)
    ):
        seconds = expires.total_seconds() if isinstance(expires, timedelta) else expires
        if seconds <= 0:
            raise InvalidTask(f"expires must be a positive number of seconds, got {expires!r}.")
        expires_at = timezone.now() + timedelta(seconds=seconds)
    else:
        raise InvalidTask(
            f"expires must be seconds, a timedelta or an aware datetime, got {expires!r}."
        )
    if run_after is not None and expires_at <= run_after:
        raise InvalidTask(
            f"expires ({expires_at.isoformat()}) is not after the task may start "
            f"({run_after.isoformat()}): it could never run."
        )
    return expires_at


@dataclass(frozen=True, slots=True)
class TaskRequest:
    """Celery's ``self.request``, as far as it maps: what a bound task knows of its run."""

    id: str
    retries: int  # attempts before this one
    attempt: int
    max_attempts: int
    name: str
    queue: str
    args: list[Any]
    kwargs: dict[str, Any]


@dataclass(frozen=True, slots=True, kw_only=True)
class BackgroundTaskContext(TaskContext):
    """What a ``takes_context`` / ``bind`` task receives as its first argument."""

    cancel_check: Callable[[], bool] = field(default=lambda: False, repr=False)

    def is_cancelled(self) -> bool:
        """Whether someone cancelled this task while it runs (seen within one heartbeat).

        Long tasks should check it between steps and stop early; see also
        :meth:`raise_if_cancelled`.
        """
        return self.cancel_check()

    def raise_if_cancelled(self) -> None:
        """Raise :class:`~django_tasks_q.exceptions.TaskCancelled` if the task was cancelled:
        the task then ends CANCELLED."""
        if self.cancel_check():
            raise TaskCancelled(f"Task {self.task_result.task.name} #{self.task_id} was cancelled")

    @property
    def task_id(self) -> str:
        return self.task_result.id

    @property
    def max_attempts(self) -> int:
        return self.task_result.max_attempts

    @property
    def request(self) -> TaskRequest:
        """Celery's spelling: ``self.request.id``, ``self.request.retries``..."""
        result = self.task_result
        return TaskRequest(
            id=self.task_id,
            retries=self.attempt - 1,
            attempt=self.attempt,
            max_attempts=result.max_attempts,
            name=result.task.name,
            queue=getattr(result, "queue", result.task.queue_name),
            args=list(result.args),
            kwargs=dict(result.kwargs),
        )

    def retry(
        self,
        *,
        countdown: float | None = None,
        exc: BaseException | None = None,
        max_retries: int | None = None,
    ) -> NoReturn:
        """Stop this attempt and run the task again after ``countdown`` seconds (default: the
        task's retry policy). On the last allowed attempt, fail with ``exc`` instead."""
        attempts_allowed = (
            max_retries + 1 + getattr(self.task_result, "lost_attempts", 0)
            if max_retries is not None
            else self.task_result.max_attempts
        )
        if self.attempt >= attempts_allowed and exc is None:
            raise MaxRetriesExceededError(
                f"Task {self.task_result.task.name} #{self.task_id} asked to retry on attempt "
                f"{self.attempt} of {attempts_allowed}."
            )
        raise Retry(countdown=countdown, exc=exc, max_retries=max_retries)


_OPTION_NAMES = (
    "name", "queue", "priority", "max_retries", "retry_backoff", "retry_backoff_max",
    "retry_jitter", "autoretry_for", "default_retry_delay", "timeout", "soft_timeout",
    "ignore_result", "max_lost_attempts", "bind",
    "takes_context", "backend", "schedule", "link", "link_error", "concurrency", "rate_limit",
    "limit_by", "fair_by", "time_limit", "soft_time_limit",
)  # fmt: skip


def background_task(
    function: Callable[..., Any] | None = None,
    *,
    name: str | None = None,
    queue: str | None = None,
    priority: int | None = None,
    max_retries: int = 0,
    retry_backoff: bool | float = False,
    retry_backoff_max: float = DEFAULT_RETRY_BACKOFF_MAX,
    retry_jitter: bool = True,
    autoretry_for: Iterable[type[BaseException]] = (),
    default_retry_delay: float = DEFAULT_RETRY_DELAY,
    timeout: float | None = None,
    soft_timeout: float | None = None,
    ignore_result: bool = False,
    max_lost_attempts: int | None = None,
    bind: bool = False,
    takes_context: bool = False,
    backend: str = DEFAULT_TASK_BACKEND_ALIAS,
    schedule: str | timedelta | float | datetime | Mapping[str, Any] | None = None,
    link: Any = None,
    link_error: Any = None,
    concurrency: int | None = None,
    rate_limit: str | float | None = None,
    limit_by: str | Callable[..., Any] | None = None,
    fair_by: str | Callable[..., Any] | None = None,
    time_limit: float | None = None,
    soft_time_limit: float | None = None,
    **unknown: Any,
) -> Any:
    """Turn a module-level function into a task. Usable bare or with options.

    ``schedule`` also runs it periodically once beat is running: a cron expression
    (``"*/5 * * * *"``), an interval (``timedelta(minutes=5)`` or seconds), a one-off aware
    datetime, or a dict of the keys a ``TASKS_Q["SCHEDULES"]`` entry takes.

    ``link`` / ``link_error``: signatures (or lists of them) run after every enqueue of this
    task succeeded, or once it failed (docs/workflows.md).

    ``time_limit`` / ``soft_time_limit``: Celery's names for ``timeout`` / ``soft_timeout``.

    ``queue`` and ``priority`` left out: ``TASKS_Q["ROUTES"]`` may choose them, else
    ``"default"`` and 0.

    ``concurrency``: at most this many running at once, counted across every worker;
    ``rate_limit``: at most this many starts, in Celery's syntax (``"10/s"``, ``"100/m"``,
    ``"1000/h"``); with ``limit_by`` (a parameter's name, or a function of the task's
    arguments returning a key), both apply per key instead of to the task as a whole
    (docs/flow-control.md). ``fair_by`` (a parameter's name or a function): tasks of the
    queue take turns by that key.
    """
    # Celery's names for the time limits, so that decorators move over unchanged.
    for celery_name, value, ours, given in (
        ("time_limit", time_limit, "timeout", timeout),
        ("soft_time_limit", soft_time_limit, "soft_timeout", soft_timeout),
    ):
        if value is not None and given is not None:
            raise TypeError(
                f"@background_task got both {celery_name}= and {ours}=, which are the same "
                f"option ({celery_name} is Celery's name for it); keep one."
            )
    timeout = timeout if time_limit is None else time_limit
    soft_timeout = soft_timeout if soft_time_limit is None else soft_time_limit
    if unknown:
        option = next(iter(unknown))
        close = difflib.get_close_matches(option, _OPTION_NAMES, n=1)
        hint = (
            f", did you mean {close[0]!r}?"
            if close
            else f"; valid options: {', '.join(_OPTION_NAMES)}"
        )
        raise TypeError(f"@background_task got an unknown option {option!r}{hint}")

    def decorate(func: Callable[..., Any]) -> BackgroundTask:
        return BackgroundTask(
            func=func,
            task_name=name or "",
            queue_name=DEFAULT_TASK_QUEUE_NAME if queue is None else queue,
            priority=0 if priority is None else priority,
            queue_given=queue is not None,
            priority_given=priority is not None,
            backend=backend,
            run_after=None,  # a required field on Django 6.0
            takes_context=bind or takes_context,
            max_retries=max_retries,
            retry_backoff=retry_backoff,
            retry_backoff_max=retry_backoff_max,
            retry_jitter=retry_jitter,
            autoretry_for=tuple(autoretry_for),
            default_retry_delay=default_retry_delay,
            timeout=timeout,
            soft_timeout=soft_timeout,
            ignore_result=ignore_result,
            max_lost_attempts=max_lost_attempts,
            schedule=schedule,
            link=tuple(canvas.callbacks(link)),
            link_error=tuple(canvas.callbacks(link_error)),
            concurrency=concurrency,
            rate_limit=rate_limit,
            limit_by=limit_by,
            fair_by=fair_by,
        )

    if function is not None:
        return decorate(function)
    return decorate


def send_task(
    name: str,
    args: Sequence[Any] | None = None,
    kwargs: Mapping[str, Any] | None = None,
    *,
    backend: str = DEFAULT_TASK_BACKEND_ALIAS,
    **options: Any,
) -> TaskHandle:
    """Enqueue the task registered as ``name``; ``options`` are those of ``apply_async``.

    A name whose module this process does not have is enqueued all the same, for a worker
    whose code has it (Celery's use of ``send_task``: work that another codebase implements).
    A name in one of this process's modules that is not a task there is an UnknownTaskError,
    which suggests the close name: a typo must not wait for a worker that never comes. That task's
    retries and time limit then come from its declaration, as the worker that runs it knows
    it; until one claims it, its handle shows 0 attempts allowed."""
    task = registry.find(name)
    if task is None:
        if registry.module_is_here(name):
            raise UnknownTaskError(registry.unknown_task_message(name))  # a typo, most likely
        if not _DOTTED_NAME.match(name) or len(name) > 255:
            raise InvalidTask(
                f"send_task({name!r}): a task name is a dotted path such as "
                "'billing.tasks.charge', of at most 255 characters."
            )
        task = RemoteTask.named(name, queue=DEFAULT_TASK_QUEUE_NAME, priority=0, backend=backend)
    return task.apply_async(args, kwargs, **options)


_DOTTED_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)+$")


def _validate_options(task: BackgroundTask) -> None:
    where = f"Task {task.module_path}"
    if (
        not isinstance(task.max_retries, int)
        or isinstance(task.max_retries, bool)
        or task.max_retries < 0
    ):
        raise InvalidTask(f"{where}: max_retries must be an int >= 0, got {task.max_retries!r}.")
    lost = task.max_lost_attempts
    if lost is not None and (not isinstance(lost, int) or isinstance(lost, bool) or lost < 1):
        raise InvalidTask(
            f"{where}: max_lost_attempts must be an int >= 1 or None (the setting), got {lost!r}."
        )
    backoff = task.retry_backoff
    if not isinstance(backoff, (bool, int, float)) or (
        not isinstance(backoff, bool) and backoff <= 0
    ):
        raise InvalidTask(
            f"{where}: retry_backoff must be False, True or a base delay in seconds > 0, "
            f"got {backoff!r}."
        )
    for option in ("retry_backoff_max", "default_retry_delay"):
        value = getattr(task, option)
        if not isinstance(value, (int, float)) or isinstance(value, bool) or value < 0:
            raise InvalidTask(f"{where}: {option} must be a number of seconds >= 0, got {value!r}.")
    if task.timeout is not None and (
        not isinstance(task.timeout, (int, float))
        or isinstance(task.timeout, bool)
        or task.timeout <= 0
    ):
        raise InvalidTask(
            f"{where}: timeout must be a number of seconds > 0 or None, got {task.timeout!r}."
        )
    soft = task.soft_timeout
    if soft is not None and (
        not isinstance(soft, (int, float)) or isinstance(soft, bool) or soft <= 0
    ):
        raise InvalidTask(
            f"{where}: soft_timeout must be a number of seconds > 0 or None, got {soft!r}."
        )
    if soft is not None and task.timeout is not None and soft >= task.timeout:
        raise InvalidTask(
            f"{where}: soft_timeout ({soft}s) must be shorter than timeout ({task.timeout}s), "
            "so the task can clean up before it is killed."
        )
    for exc_class in task.autoretry_for:
        if not (inspect.isclass(exc_class) and issubclass(exc_class, BaseException)):
            raise InvalidTask(
                f"{where}: autoretry_for must list exception classes, got {exc_class!r}."
            )
    if not isinstance(task.queue_name, str) or not task.queue_name or len(task.queue_name) > 100:
        raise InvalidTask(f"{where}: queue must be a non-empty name of at most 100 characters.")
    if len(task.name) > 255:
        raise InvalidTask(f"{where}: the task name must be at most 255 characters.")
    limits.check_concurrency(task.concurrency, where)
    if task.rate_limit is not None:
        limits.parse_rate(task.rate_limit, where)
    if task.limit_by is not None and task.concurrency is None and task.rate_limit is None:
        raise InvalidTask(
            f"{where}: limit_by says what to limit by, but there is no limit: add "
            "concurrency= and/or rate_limit=."
        )
    limits.check_limit_by(task.func, task.limit_by, task.takes_context, where)
    limits.check_limit_by(task.func, task.fair_by, task.takes_context, where, option="fair_by")
    if task.schedule is not None:
        try:
            from_decorator(task.schedule, task.name)
        except DeclarationError as exc:
            raise InvalidTask(str(exc)) from None
