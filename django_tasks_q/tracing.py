"""OpenTelemetry traces from the code that enqueues a task to the task's run, when the
``opentelemetry-api`` package is installed (``pip install "django-tasks-q[opentelemetry]"``)
and an SDK is configured in the process. Without the package every function here is a no-op.

Enqueueing starts a PRODUCER span (``enqueue <task>``) under whatever span is current (the
request's, beat's tick's) and stores its W3C trace context with the task. Each attempt runs in
a CONSUMER span (``run <task>``) whose parent is that context, in whichever process runs it:
retries, workflow steps and callbacks all belong to the trace of the code that enqueued them.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import TYPE_CHECKING, Any

try:
    from opentelemetry import propagate, trace
    from opentelemetry.trace import SpanKind, Status, StatusCode
except ImportError:  # the optional extra is not installed
    trace = None

if TYPE_CHECKING:
    from django_tasks_q.queue import ClaimedTask, Outcome

SYSTEM = "django_tasks_q"
_NOTHING = nullcontext()


def _active() -> bool:
    """Whether spans would be recorded: the API is installed and an SDK's provider is set
    (with the API alone, every span is a no-op: skip them and store no context)."""
    if trace is None:
        return False
    return not isinstance(
        trace.get_tracer_provider(), (trace.ProxyTracerProvider, trace.NoOpTracerProvider)
    )


class Enqueueing:
    """The span of one enqueue and the trace context to store with its tasks."""

    def __init__(self, span: Any) -> None:
        self.span = span
        carrier: dict[str, str] = {}
        propagate.inject(carrier)
        self.context = json.dumps(carrier) if carrier else None

    def enqueued(self, ids: list[int]) -> None:
        if len(ids) == 1:
            self.span.set_attribute("django_tasks_q.task.id", ids[0])
        self.span.set_attribute("django_tasks_q.task.count", len(ids))


@contextmanager
def _enqueue_span(name: str, task_name: str, queue: str) -> Iterator[Enqueueing]:
    tracer = trace.get_tracer(SYSTEM)
    attributes = {"messaging.system": SYSTEM, "messaging.destination.name": queue,
                  "django_tasks_q.task.name": task_name}  # fmt: skip
    with tracer.start_as_current_span(
        f"{name} {task_name}", kind=SpanKind.PRODUCER, attributes=attributes
    ) as span:
        yield Enqueueing(span)


def enqueue_span(
    name: str, task_name: str, queue: str
) -> AbstractContextManager[Enqueueing | None]:
    """``with enqueue_span("enqueue", task.name, queue) as traced:``; ``traced`` is None
    without OpenTelemetry, else its ``context`` goes into the rows' ``trace_context``."""
    if not _active():
        return _NOTHING
    return _enqueue_span(name, task_name, queue)


@contextmanager
def _run_span(claimed: ClaimedTask) -> Iterator[Any]:
    parent = propagate.extract(claimed.trace_context) if claimed.trace_context else None
    attributes = {
        "messaging.system": SYSTEM, "messaging.destination.name": claimed.queue,
        "django_tasks_q.task.name": claimed.name, "django_tasks_q.task.id": claimed.id,
        "django_tasks_q.task.attempt": claimed.attempt,
    }  # fmt: skip
    tracer = trace.get_tracer(SYSTEM)
    with tracer.start_as_current_span(
        f"run {claimed.name}", context=parent, kind=SpanKind.CONSUMER, attributes=attributes,
        record_exception=False, set_status_on_exception=False,
    ) as span:  # fmt: skip
        yield span


@contextmanager
def _tick_span(schedule: str, task_name: str) -> Iterator[Any]:
    tracer = trace.get_tracer(SYSTEM)
    attributes = {"django_tasks_q.schedule": schedule, "django_tasks_q.task.name": task_name}
    with tracer.start_as_current_span(f"tick {schedule}", attributes=attributes) as span:
        yield span


def tick_span(schedule: str, task_name: str) -> AbstractContextManager[Any]:
    """Beat's span for one tick of a schedule: the enqueue inside it is its child."""
    if not _active():
        return _NOTHING
    return _tick_span(schedule, task_name)


def run_span(claimed: ClaimedTask) -> AbstractContextManager[Any]:
    """The span one attempt runs in (None without OpenTelemetry); :func:`ended` records how
    the attempt ended on it."""
    if not _active():
        return _NOTHING
    return _run_span(claimed)


OUTCOMES = {"SUCCESSFUL": "succeeded", "FAILED": "failed", "READY": "retried",
            "CANCELLED": "cancelled"}  # fmt: skip


def ended(span: Any, outcome: Outcome) -> None:
    """Record on an attempt's span how it ended."""
    if span is None:
        return
    name = OUTCOMES.get(str(outcome.status), "other") if outcome.started else "not started"
    span.set_attribute("django_tasks_q.task.outcome", name)
    if outcome.error:
        description = f"{outcome.error.get('type')}: {outcome.error.get('message')}"
        span.add_event("exception", {
            "exception.type": str(outcome.error.get("type")),
            "exception.message": str(outcome.error.get("message")),
            "exception.stacktrace": str(outcome.error.get("traceback") or ""),
        })  # fmt: skip
        if str(outcome.status) != "SUCCESSFUL":
            span.set_status(Status(StatusCode.ERROR, description))
