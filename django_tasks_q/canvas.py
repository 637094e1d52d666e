"""Workflows: signatures, ``chain``, ``group``, ``chord``, callbacks and dependencies.

Every construct compiles to one primitive: a task that depends on other tasks waits (WAITING)
until they finished, and the statement recording the last one's outcome makes it READY
(the trigger of migration 0007). A workflow is written in one statement, in the caller's
transaction. See docs/workflows.md.

Signatures and the canvas types are ``dict`` subclasses holding plain JSON, as Celery's are:
one can be stored, or passed to a task as an argument and rebuilt there with
:func:`signature`.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from django.utils import timezone

from django_tasks_q import registry
from django_tasks_q.compat import InvalidTask
from django_tasks_q.exceptions import TaskTimeoutError
from django_tasks_q.polling import poll_until

if TYPE_CHECKING:
    from django_tasks_q.results import TaskHandle
    from django_tasks_q.tasks import BackgroundTask

# When a dependent may run (models.RunIf; this module is imported before the models are).
SUCCEEDED, FINISHED, FAILED = "succeeded", "finished", "failed"
RUN_IF = (SUCCEEDED, FINISHED, FAILED)
# Task statuses (models.TaskStatus).
_DONE = frozenset({"SUCCESSFUL", "FAILED", "CANCELLED"})

# Options a signature may carry, as in apply_async.
SIGNATURE_OPTIONS = frozenset(
    {"queue", "priority", "countdown", "eta", "expires", "link", "link_error"}
)
# Celery's options with no meaning here, and what to use instead.
_INSTEAD = {
    "task_id": "tasks get their id from the database",
    "serializer": "arguments are always JSON",
    "routing_key": "use queue=",
    "exchange": "use queue=",
    "time_limit": "set timeout= on @background_task",
    "soft_time_limit": "set soft_timeout= on @background_task",
}


def _check_options(options: Mapping[str, Any]) -> None:
    for name in options:
        if name not in SIGNATURE_OPTIONS:
            hint = _INSTEAD.get(name, f"valid options: {', '.join(sorted(SIGNATURE_OPTIONS))}")
            raise InvalidTask(f"A signature does not take the option {name!r} ({hint}).")


def _as_json_time(value: Any) -> Any:
    """Datetimes and timedeltas in options as JSON: ISO text and seconds."""
    if isinstance(value, datetime):
        if timezone.is_naive(value):
            raise InvalidTask(f"{value.isoformat()} is a naive datetime; pass an aware one.")
        return value.isoformat()
    if isinstance(value, timedelta):
        return value.total_seconds()
    return value


def _using_overrides(task: BackgroundTask) -> dict[str, Any]:
    """What ``task.using(...)`` changed from the registered task: a signature holds a name,
    so it carries those as options."""
    registered = registry.find(task.name)
    if registered is None or registered is task:
        return {}
    overrides: dict[str, Any] = {}
    if task.queue_name != registered.queue_name:
        overrides["queue"] = task.queue_name
    if task.priority != registered.priority:
        overrides["priority"] = task.priority
    if task.run_after is not None and task.run_after != registered.run_after:
        overrides["eta"] = task.run_after
    return overrides


def callbacks(value: Any) -> list[Canvas]:
    """One callback or a list of them, as canvas objects."""
    if value is None:
        return []
    items = [value] if isinstance(value, Mapping) else list(value)
    return [signature(item) for item in items]


class Canvas(dict):
    """What ``chain``, ``group``, ``chord`` and signatures share."""

    def __or__(self, other: Any) -> Canvas:
        other = signature(other)
        if isinstance(self, Group) and not isinstance(other, Group):
            return Chord(self["tasks"], other)
        steps = list(self["tasks"]) if isinstance(self, Chain) else [self]
        steps += list(other["tasks"]) if isinstance(other, Chain) else [other]
        return Chain(*steps)

    @property
    def options(self) -> dict[str, Any]:
        return self.setdefault("options", {})

    def link(self, callback: Mapping[str, Any]) -> Mapping[str, Any]:
        """Run ``callback`` after this succeeded, with its result first (unless immutable).
        Returns the callback, as Celery does."""
        self.options.setdefault("link", []).append(signature(callback))
        return callback

    def link_error(self, errback: Mapping[str, Any]) -> Mapping[str, Any]:
        """Run ``errback`` once, at the first task of this that fails, with that task's id and
        its last error entry first (unless immutable)."""
        self.options.setdefault("link_error", []).append(signature(errback))
        return errback

    def set(self, immutable: bool | None = None, **options: Any) -> Canvas:
        """Set options (``queue``, ``priority``, ``countdown``, ``eta``, ``expires``,
        ``link``, ``link_error``); returns self. On a chain, group or chord, the first five
        apply to every task in it that does not set its own; callbacks are added."""
        _check_options(options)
        for name, value in options.items():
            if name in ("link", "link_error"):
                for callback in callbacks(value):
                    getattr(self, name)(callback)
            else:
                self.options[name] = _as_json_time(value)
        if immutable is not None:
            if not isinstance(self, Signature):
                raise InvalidTask("Only a signature can be immutable.")
            self["immutable"] = immutable
        return self

    def on_error(self, errback: Mapping[str, Any]) -> Canvas:
        self.link_error(errback)
        return self

    def delay(self, *args: Any, **kwargs: Any) -> WorkflowHandle:
        return self.apply_async(args, kwargs)

    def apply_async(
        self,
        args: Sequence[Any] | None = None,
        kwargs: Mapping[str, Any] | None = None,
        **options: Any,
    ) -> Any:
        """Enqueue the workflow in the caller's transaction; ``args`` and ``kwargs`` are
        added to its first tasks' (partial application, as Celery does)."""
        canvas = self.clone().set(**options) if options else self
        plan = Plan()
        inputs = Inputs(args=tuple(args or ()), kwargs=dict(kwargs or {}))
        plan.outputs, plan.returns_list = place(plan, canvas, inputs)
        return plan.enqueue()

    def clone(self) -> Canvas:
        """A deep copy (through JSON, which is all a canvas holds)."""
        return signature(json.loads(json.dumps(self)))


class Signature(Canvas):
    """A task with arguments and options, to run later or as a workflow step."""

    def __init__(
        self,
        task: str | BackgroundTask | Mapping[str, Any],
        args: Sequence[Any] = (),
        kwargs: Mapping[str, Any] | None = None,
        options: Mapping[str, Any] | None = None,
        *,
        immutable: bool = False,
    ) -> None:
        if isinstance(task, Mapping):
            super().__init__(task)
            return
        options = dict(options or {})
        _check_options(options)
        if not isinstance(task, str):
            options = {**_using_overrides(task), **options}
        super().__init__(
            kind="signature",
            task=task if isinstance(task, str) else task.name,
            args=list(args),
            kwargs=dict(kwargs or {}),
            options={k: _as_json_time(v) for k, v in options.items()},
            immutable=bool(immutable),
        )

    @property
    def task(self) -> BackgroundTask:
        return registry.get(self["task"])

    @property
    def immutable(self) -> bool:
        return bool(self.get("immutable"))

    def __repr__(self) -> str:
        arguments = [repr(a) for a in self["args"]]
        arguments += [f"{k}={v!r}" for k, v in self["kwargs"].items()]
        return f"{self['task']}.{'si' if self.immutable else 's'}({', '.join(arguments)})"


class Chain(Canvas):
    """Steps run one after the other; each receives the previous one's result first."""

    def __init__(self, *steps: Any, options: Mapping[str, Any] | None = None) -> None:
        if len(steps) == 1 and not isinstance(steps[0], Mapping):
            steps = tuple(steps[0])
        super().__init__(
            kind="chain", tasks=[signature(s) for s in steps], options=dict(options or {})
        )


class Group(Canvas):
    """Tasks that run in parallel; the group's result is the list of theirs, in order."""

    def __init__(self, *tasks: Any, options: Mapping[str, Any] | None = None) -> None:
        if len(tasks) == 1 and not isinstance(tasks[0], Mapping):
            tasks = tuple(tasks[0])
        super().__init__(
            kind="group", tasks=[signature(t) for t in tasks], options=dict(options or {})
        )


class Chord(Canvas):
    """A group (the header) and a body that runs once, with the list of the header's results,
    after every header task succeeded."""

    def __init__(
        self, header: Any, body: Any = None, options: Mapping[str, Any] | None = None
    ) -> None:
        tasks = header["tasks"] if isinstance(header, Group) else header
        super().__init__(
            kind="chord",
            header=[signature(t) for t in tasks],
            body=None if body is None else signature(body),
            options=dict(options or {}),
        )

    def __call__(self, body: Any = None, **options: Any) -> Any:
        """``chord(header)(body)``: enqueue with this body."""
        chord = Chord(self["header"], body if body is not None else self["body"], self.options)
        return chord.apply_async(**options)

    def apply_async(self, args=None, kwargs=None, **options: Any) -> Any:
        if self.get("body") is None:
            raise InvalidTask("This chord has no body: chord(header)(body) or chord(header, body).")
        return super().apply_async(args, kwargs, **options)


# Celery's lower-case spellings.
chain = Chain
group = Group
chord = Chord

_KINDS: dict[str, type[Canvas]] = {
    "signature": Signature, "chain": Chain, "group": Group, "chord": Chord,
}  # fmt: skip


def signature(value: Any) -> Canvas:
    """A signature or canvas object from itself, or from its dict (e.g. a task argument).
    A dict is checked as it is rebuilt: a task name, a list of arguments, a dict of keyword
    arguments, known options."""
    if isinstance(value, Canvas):
        return value
    kind = _KINDS.get(value.get("kind")) if isinstance(value, Mapping) else None
    if kind is None:
        raise InvalidTask(
            f"Expected a signature (task.s(...)), chain, group or chord, got {value!r}."
        )
    options = value.get("options") or {}
    if not isinstance(options, Mapping):
        raise InvalidTask(f"A signature's options must be a dict, got {options!r}.")
    if kind is Signature:
        task, args, kwargs = value.get("task"), value.get("args", []), value.get("kwargs", {})
        if (
            not isinstance(task, str)
            or not isinstance(args, list | tuple)
            or not isinstance(kwargs, Mapping)
        ):
            raise InvalidTask(
                "A signature needs a task name, a list of arguments and a dict of keyword "
                f"arguments, got {value!r}."
            )
        return Signature(task, args, kwargs, options, immutable=bool(value.get("immutable")))
    _check_options(options)
    members = {key: value.get(key) for key in ("tasks", "header") if key in value}
    if any(not isinstance(items, list | tuple) for items in members.values()):
        raise InvalidTask(f"A {value['kind']}'s tasks must be a list, got {value!r}.")
    rebuilt = Canvas.__new__(kind)
    dict.__init__(rebuilt, value)
    for key, items in members.items():
        rebuilt[key] = [signature(item) for item in items]
    if kind is Chord:
        rebuilt["body"] = None if value.get("body") is None else signature(value["body"])
    rebuilt["options"] = dict(options)
    return rebuilt


# -- compiling a canvas to tasks and edges --------------------------------------------------


@dataclass(frozen=True, slots=True)
class After:
    """A dependency for ``apply_async(depends_on=[...])``: an enqueued task (its handle or id)
    and when the dependent may run: ``"succeeded"`` (the default: otherwise the dependent is
    cancelled), ``"finished"`` (however it ended) or ``"failed"`` (an error callback)."""

    task: Any
    run_if: str = SUCCEEDED

    def __post_init__(self) -> None:
        if self.run_if not in RUN_IF:
            raise InvalidTask(f"run_if must be one of {', '.join(RUN_IF)}, got {self.run_if!r}.")

    @property
    def task_id(self) -> int:
        raw = getattr(self.task, "id", self.task)
        try:
            return int(raw)
        except (TypeError, ValueError):
            raise InvalidTask(f"depends_on takes task handles or ids, got {self.task!r}.") from None


@dataclass(slots=True)
class Step:
    """One task of a workflow to enqueue, and what it waits for."""

    task: BackgroundTask
    args: list[Any]
    kwargs: dict[str, Any]
    expires: Any = None
    receives: str = ""
    # (place in the plan, run_if) or (After with an existing task's id, run_if).
    waits_for: list[tuple[int | After, str]] = field(default_factory=list)


@dataclass(slots=True)
class Plan:
    steps: list[Step] = field(default_factory=list)
    # Where the workflow's output is: these steps' results, as a list or the one result.
    outputs: list[int] = field(default_factory=list)
    returns_list: bool = False
    _tasks: dict[tuple, BackgroundTask] = field(default_factory=dict, repr=False)

    def task_for(self, name: str, options: Mapping[str, Any]) -> BackgroundTask:
        """The task ``name`` with a step's options; made once per plan for the same options
        (a chord's 10,000 headers share one)."""
        key = (name, *(options.get(k) for k in ("countdown", "eta", "queue", "priority")))
        if key not in self._tasks:
            eta = options.get("eta")
            self._tasks[key] = registry.get(name).with_options(
                countdown=options.get("countdown"),
                eta=datetime.fromisoformat(eta) if isinstance(eta, str) else eta,
                queue=options.get("queue"),
                priority=options.get("priority"),
            )
        return self._tasks[key]

    def add(self, step: Step) -> int:
        self.steps.append(step)
        return len(self.steps) - 1

    def enqueue(self, *, schedule: tuple[int, Any] | None = None) -> WorkflowHandle:
        if not self.steps:
            raise InvalidTask("This workflow has no task to run.")
        backend = self.steps[0].task.postgres_backend("A workflow (chain, group, chord, callbacks)")
        handles = backend.enqueue_workflow(self.steps, schedule=schedule)
        return WorkflowHandle(
            id=handles[0].workflow_id,
            steps=handles,
            outputs=self.outputs,
            returns_list=self.returns_list,
            backend=backend.alias,
        )


# Options a chain, group or chord passes to its tasks, unless a task sets its own.
INHERITED_OPTIONS = ("queue", "priority", "countdown", "eta", "expires")


@dataclass(frozen=True, slots=True)
class Inputs:
    """Where a canvas placed in a plan starts from."""

    after: tuple[int, ...] = ()  # the steps whose results it receives
    as_list: bool = False  # their results as one list (after a group), or the one result
    args: tuple[Any, ...] = ()  # partial arguments for its first tasks
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    options: Mapping[str, Any] = field(default_factory=dict)  # defaults from enclosing canvases

    def then(self, after: Sequence[int], as_list: bool) -> Inputs:
        """The inputs of what follows: no partial arguments, the same inherited options."""
        return Inputs(tuple(after), as_list, options=self.options)


def place(plan: Plan, canvas: Canvas, inputs: Inputs) -> tuple[list[int], bool]:
    """Add ``canvas`` to ``plan`` after ``inputs.after``. Returns its exit steps and whether
    its output is a list. Callbacks in its options are placed after it."""
    first = len(plan.steps)
    own = canvas.get("options") or {}
    kind = canvas["kind"]
    if kind == "signature":
        exits, as_list = [_place_signature(plan, canvas, inputs)], False
    else:
        inherited = {k: own[k] for k in INHERITED_OPTIONS if own.get(k) is not None}
        inputs = replace(inputs, options={**inputs.options, **inherited})
        if kind == "chain":
            if not canvas["tasks"]:
                raise InvalidTask("A chain needs at least one task.")
            exits, as_list = place(plan, canvas["tasks"][0], inputs)
            for step in canvas["tasks"][1:]:
                exits, as_list = place(plan, step, inputs.then(exits, as_list))
        elif kind == "group":
            exits, as_list = [], True
            for member in canvas["tasks"]:
                exits += place(plan, member, inputs)[0]
        else:  # chord
            header_exits, _ = place(plan, Group(canvas["header"]), inputs)
            exits, as_list = place(plan, canvas["body"], inputs.then(header_exits, True))
    _place_callbacks(plan, own, exits, as_list, list(range(first, len(plan.steps))))
    return exits, as_list


def _place_signature(plan: Plan, sig: Signature, inputs: Inputs) -> int:
    options = {**inputs.options, **(sig.get("options") or {})}
    task = plan.task_for(sig["task"], options)
    if sig.immutable:
        receives, args, kwargs = "", list(sig["args"]), dict(sig["kwargs"])
    else:
        receives = "results" if inputs.as_list else ("result" if inputs.after else "")
        args = [*inputs.args, *sig["args"]]
        kwargs = {**inputs.kwargs, **sig["kwargs"]}
    index = plan.add(
        Step(
            task=task,
            args=args,
            kwargs=kwargs,
            expires=options.get("expires"),
            receives=receives,
            waits_for=[(parent, SUCCEEDED) for parent in inputs.after],
        )
    )
    if task.link or task.link_error:  # the decorator's callbacks, on every enqueue
        declared = {"link": list(task.link), "link_error": list(task.link_error)}
        _place_callbacks(plan, declared, [index], False, [index])
    return index


def _place_callbacks(
    plan: Plan, options: Mapping[str, Any], exits: list[int], as_list: bool, members: list[int]
) -> None:
    """``link`` callbacks after ``exits``; ``link_error`` callbacks after every step of
    ``members``, run at the first that fails. Callbacks inherit no options."""
    for callback in callbacks(options.get("link")):
        place(plan, callback, Inputs(tuple(exits), as_list))
    for errback in callbacks(options.get("link_error")):
        if not isinstance(errback, Signature):
            raise InvalidTask("link_error takes signatures (task.s(...)), not a chain or group.")
        options_of_errback = errback.get("options") or {}
        if options_of_errback.get("link") or options_of_errback.get("link_error"):
            raise InvalidTask("An error callback cannot have callbacks of its own.")
        index = _place_signature(plan, errback, Inputs())
        step = plan.steps[index]
        step.receives = "" if errback.immutable else "error"
        step.waits_for = [(member, FAILED) for member in members]


def plan_for_task(sig: Signature, depends_on: Iterable[Any]) -> Plan:
    """The plan of one ``apply_async`` with ``depends_on``, ``link`` or ``link_error``."""
    plan = Plan()
    plan.outputs, plan.returns_list = place(plan, sig, Inputs())
    main = plan.steps[0]
    for item in depends_on:
        after = item if isinstance(item, After) else After(item)
        after.task_id  # noqa: B018 - refuses what is not a handle or an id, here
        main.waits_for.append((after, after.run_if))
    kinds = {run_if for _, run_if in main.waits_for}
    if FAILED in kinds and kinds != {FAILED}:
        raise InvalidTask(
            "A task that runs when a dependency failed (run_if='failed') cannot also depend "
            "on others that must succeed or finish: enqueue it as its own error callback."
        )
    if kinds == {FAILED}:
        main.receives = "error"
    return plan


# -- the workflow's handle ------------------------------------------------------------------


@dataclass
class WorkflowHandle:
    """A workflow's state: its steps, its output, ``wait()``, ``cancel()``.

    ``result`` is the output's value: the last step's result for a chain or a single task,
    the list of results (in order) for a group, the body's result for a chord."""

    id: str
    steps: list[TaskHandle]
    outputs: list[int]
    returns_list: bool
    backend: str

    @classmethod
    def load(cls, workflow_id: str, *, backend: str = "default") -> WorkflowHandle:
        """The handle of an enqueued workflow, from its id. Its output is the steps no other
        step of it depends on (several: a list)."""
        from django_tasks_q.models import Dependency

        steps = cls._read(workflow_id, backend)
        if not steps:
            raise InvalidTask(f"No workflow with id {workflow_id!r}.")
        ids = [int(step.id) for step in steps]
        with_dependents = set(
            Dependency.objects.using(_backend(backend).database)
            .filter(depends_on_id__in=ids, task_id__in=ids)
            .values_list("depends_on_id", flat=True)
        )
        outputs = [n for n, task_id in enumerate(ids) if task_id not in with_dependents]
        return cls(workflow_id, steps, outputs, len(outputs) > 1, backend)

    @staticmethod
    def _read(workflow_id: str, backend_alias: str) -> list[TaskHandle]:
        from django_tasks_q.models import Task as TaskRow

        backend = _backend(backend_alias)
        rows = (
            TaskRow.objects.using(backend.database).filter(workflow_id=workflow_id).order_by("id")
        )
        return [backend.handle_from_row(row) for row in rows]

    def refresh(self) -> None:
        """Reload every step's state, in one query."""
        fresh = {step.id: step for step in self._read(self.id, self.backend)}
        self.steps = [fresh.get(step.id, step) for step in self.steps]

    @property
    def tasks(self) -> list[TaskHandle]:
        return self.steps

    @property
    def output_steps(self) -> list[TaskHandle]:
        return [self.steps[n] for n in self.outputs]

    def ready(self) -> bool:
        """Whether every step has finished (callbacks included)."""
        return all(step.status in _DONE for step in self.steps)

    def successful(self) -> bool:
        return self.ready() and all(step.status == "SUCCESSFUL" for step in self.output_steps)

    def failed(self) -> bool:
        return any(step.status == "FAILED" for step in self.steps)

    def completed_count(self) -> int:
        """How many of the output steps succeeded (for a group: its tasks)."""
        return sum(step.status == "SUCCESSFUL" for step in self.output_steps)

    @property
    def status(self) -> str:
        """RUNNING while a step is unfinished and one has started; READY or WAITING before;
        once all finished: SUCCESSFUL if the output succeeded, else FAILED if a step failed,
        else CANCELLED."""
        if self.ready():
            if self.successful():
                return "SUCCESSFUL"
            return "FAILED" if self.failed() else "CANCELLED"
        if any(step.status in _DONE | {"RUNNING"} for step in self.steps):
            return "RUNNING"
        return "READY"

    @property
    def results(self) -> list[Any]:
        """The output steps' results, in order (None for one that did not succeed)."""
        return [step.result for step in self.output_steps]

    @property
    def result(self) -> Any:
        return self.results if self.returns_list else self.results[0]

    def wait(self, timeout: float | None = None, *, poll_interval: float = 0.05) -> WorkflowHandle:
        """Block until every step has finished (or ``timeout`` seconds pass); returns self.
        Raises :class:`~django_tasks_q.exceptions.TaskTimeoutError` on timeout. Each look is
        one index lookup, whatever the number of steps; the steps are read once at the end."""
        from django_tasks_q import queue

        if self._any_unfinished():
            queue.refuse_wait_inside_transaction(
                [int(step.id) for step in self.steps],
                f"Workflow {self.id}",
                using=_backend(self.backend).database,
            )
        if not poll_until(lambda: not self._any_unfinished(), timeout, poll_interval):
            self.refresh()
            unfinished = [s for s in self.steps if s.status not in _DONE]
            first = unfinished[0] if unfinished else None
            raise TaskTimeoutError(
                f"Workflow {self.id} still has {len(unfinished)} unfinished step(s) after "
                f"waiting {timeout}s"
                + (f" (first: {first.name} #{first.id}, {first.status})" if first else "")
                + ". Is a worker running?"
            )
        self.refresh()
        return self

    def _any_unfinished(self) -> bool:
        from django_tasks_q.models import Task as TaskRow

        rows = TaskRow.objects.using(_backend(self.backend).database)
        return rows.filter(workflow_id=self.id).exclude(status__in=_DONE).exists()

    def get(self, timeout: float | None = None) -> Any:
        """``wait`` then ``result`` (Celery's spelling)."""
        return self.wait(timeout).result

    def cancel(self, *, terminate: bool = False) -> int:
        """Cancel every step not finished yet (running ones are asked to stop, or killed
        with ``terminate`` on a process pool). Returns how many steps changed."""
        from django_tasks_q import queue
        from django_tasks_q.conf import settings as conf

        backend = _backend(self.backend)
        changed = queue.cancel_workflow(
            self.id, using=backend.database, terminate=terminate, notify=conf.LISTEN_NOTIFY
        )
        self.refresh()
        return len(changed)


def _backend(alias: str) -> Any:
    # Found when asked, as Task.get_backend does (see tests/test_layers.py).
    from django_tasks_q.backend import get_backend

    return get_backend(alias)
