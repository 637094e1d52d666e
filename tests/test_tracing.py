"""OpenTelemetry: a task's run is part of the trace of the code that enqueued it, through the
stored trace context; checked with the SDK's in-memory exporter on in-process workers."""

import os
import subprocess
import sys
from datetime import timedelta

import pytest
from django.utils import timezone
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from django_tasks_q import tracing
from django_tasks_q.beat import Beat
from django_tasks_q.canvas import chain
from django_tasks_q.models import Schedule, Task
from tests.conftest import ROOT, database_url_for_subprocess, run_burst_worker
from tests.testapp import tasks

pytestmark = pytest.mark.django_db(transaction=True)

_exporter = InMemorySpanExporter()


class _WhileTesting(SimpleSpanProcessor):
    """Keeps spans only during these tests: the provider stays for the rest of the session
    (OpenTelemetry allows setting it once), and other tests' spans must not pile up."""

    recording = False

    def on_end(self, span):
        if self.recording:
            super().on_end(span)


_processor = _WhileTesting(_exporter)


@pytest.fixture
def spans():
    """The spans finished during the test, by name."""
    if not isinstance(trace.get_tracer_provider(), TracerProvider):
        provider = TracerProvider()
        provider.add_span_processor(_processor)
        trace.set_tracer_provider(provider)
    _exporter.clear()
    _processor.recording = True

    def finished(name=None):
        found = list(_exporter.get_finished_spans())
        return [span for span in found if name is None or span.name == name]

    yield finished
    _processor.recording = False
    _exporter.clear()


def request_span():
    return trace.get_tracer("tests").start_as_current_span("GET /orders/7")


def test_a_run_is_a_child_of_its_enqueue_under_the_callers_span(spans):
    with request_span():
        handle = tasks.add.delay(2, 3)
    run_burst_worker()
    [request] = spans("GET /orders/7")
    [enqueue] = spans(f"enqueue {tasks.add.name}")
    [run] = spans(f"run {tasks.add.name}")
    assert enqueue.parent.span_id == request.context.span_id
    assert run.parent.span_id == enqueue.context.span_id
    assert run.context.trace_id == request.context.trace_id
    assert (enqueue.kind, run.kind) == (SpanKind.PRODUCER, SpanKind.CONSUMER)
    assert enqueue.attributes["django_tasks_q.task.id"] == int(handle.id)
    assert dict(run.attributes) == {
        "messaging.system": "django_tasks_q", "messaging.destination.name": "default",
        "django_tasks_q.task.name": tasks.add.name, "django_tasks_q.task.id": int(handle.id),
        "django_tasks_q.task.attempt": 1, "django_tasks_q.task.outcome": "succeeded",
    }  # fmt: skip
    assert Task.objects.get(pk=handle.id).trace_context["traceparent"].startswith("00-")


def test_each_retry_is_a_run_under_the_one_enqueue_and_failures_carry_the_error(spans):
    with request_span():
        tasks.fail_until.delay("traced", 2)
    run_burst_worker()
    [enqueue] = spans(f"enqueue {tasks.fail_until.name}")
    runs = sorted(spans(f"run {tasks.fail_until.name}"),
                  key=lambda span: span.attributes["django_tasks_q.task.attempt"])  # fmt: skip
    assert [span.parent.span_id for span in runs] == [enqueue.context.span_id] * 2
    assert [span.attributes["django_tasks_q.task.outcome"] for span in runs] == [
        "retried", "succeeded"]  # fmt: skip
    failed = runs[0]
    assert failed.status.status_code == StatusCode.ERROR
    [event] = failed.events
    assert event.name == "exception"
    assert "attempt 1 failed" in event.attributes["exception.message"]
    assert "Traceback" in event.attributes["exception.stacktrace"]
    assert runs[1].status.status_code == StatusCode.UNSET


def test_workflow_steps_and_batches_belong_to_the_trace_that_enqueued_them(spans):
    with request_span():
        chain(tasks.add.s(1, 2), tasks.add.s(3)).apply_async()
        tasks.record.enqueue_many([("batch-1",), ("batch-2",)])
    run_burst_worker()
    [request] = spans("GET /orders/7")
    [workflow] = spans(f"enqueue workflow {tasks.add.name}")
    [batch] = spans(f"enqueue_many {tasks.record.name}")
    assert workflow.parent.span_id == batch.parent.span_id == request.context.span_id
    assert batch.attributes["django_tasks_q.task.count"] == 2
    steps = spans(f"run {tasks.add.name}")
    assert [span.parent.span_id for span in steps] == [workflow.context.span_id] * 2
    records = spans(f"run {tasks.record.name}")
    assert [span.parent.span_id for span in records] == [batch.context.span_id] * 2


def test_a_beat_tick_starts_the_trace_its_task_runs_in(spans):
    schedule = Schedule(
        name="hourly-report", task=tasks.record.name, args=["tick"], cron="0 * * * *"
    )
    schedule.full_clean()
    schedule.save()
    Schedule.objects.filter(pk=schedule.pk).update(
        next_run_at=timezone.now() - timedelta(seconds=1)
    )
    Beat(listen=False, sync=False).run_once()
    run_burst_worker()
    [tick] = spans("tick hourly-report")
    [enqueue] = spans(f"enqueue {tasks.record.name}")
    [run] = spans(f"run {tasks.record.name}")
    assert tick.parent is None
    assert enqueue.parent.span_id == tick.context.span_id
    assert run.parent.span_id == enqueue.context.span_id


def test_without_opentelemetry_nothing_is_traced_or_stored(spans, monkeypatch):
    monkeypatch.setattr(tracing, "trace", None)  # as when the package is not installed
    with request_span():
        handle = tasks.add.delay(1, 1)
    run_burst_worker()
    assert Task.objects.get(pk=handle.id).trace_context is None
    assert [span.name for span in spans()] == ["GET /orders/7"]
    assert handle.wait(timeout=5).result == 2


def test_with_the_api_but_no_sdk_configured_no_context_is_stored():
    """A process that never configured OpenTelemetry (a subprocess: this one has by now)."""
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "tests.settings",
           "DATABASE_URL": database_url_for_subprocess()}  # fmt: skip
    code = "from tests.testapp import tasks; print(tasks.add.delay(1, 1).id)"
    done = subprocess.run([sys.executable, str(ROOT / "manage.py"), "shell", "-c", code],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)  # fmt: skip
    assert done.returncode == 0, done.stderr
    task_id = int(done.stdout.split()[-1])
    assert Task.objects.get(pk=task_id).trace_context is None
