"""Tasks written with Django's own API (django.tasks) behave as Django documents, on this
package's backend and worker."""

import subprocess
import sys
from datetime import timedelta

import pytest
from asgiref.sync import async_to_sync
from django.test import override_settings
from django.utils import timezone

from django_tasks_q.backend import PostgresBackend
from django_tasks_q.compat import (
    InvalidTask,
    TaskResultDoesNotExist,
    TaskResultStatus,
    default_task_backend,
    task_backends,
    task_enqueued,
    task_finished,
    task_started,
)
from django_tasks_q.models import Task
from tests.conftest import ROOT, run_burst_worker
from tests.djangoapp import tasks
from tests.testapp.models import Execution

pytestmark = pytest.mark.django_db(transaction=True)


def test_the_default_backend_is_this_one_with_every_feature():
    assert isinstance(task_backends["default"], PostgresBackend)
    assert default_task_backend.supports_defer
    assert default_task_backend.supports_async_task
    assert default_task_backend.supports_get_result
    assert default_task_backend.supports_priority


def test_enqueue_returns_a_ready_result_equal_to_what_get_result_returns():
    result = tasks.echo.enqueue({"b": (1, 2)}, 3)
    assert result.status == TaskResultStatus.READY
    assert result.args == [{"b": [1, 2]}, 3]  # JSON round trip: what a worker will see
    assert (result.task, result.backend) == (tasks.echo, "default")
    fetched = tasks.echo.get_result(result.id)
    assert (fetched.id, fetched.args, fetched.kwargs) == (result.id, result.args, result.kwargs)
    assert fetched.enqueued_at == result.enqueued_at
    row = Task.objects.get(pk=result.id)
    assert (row.queue, row.priority) == ("django-api", 10)


def test_run_after_defers_the_task():
    later = tasks.multiply.using(run_after=timezone.now() + timedelta(hours=1)).enqueue(2, 3)
    now = tasks.multiply.enqueue(4, 5)
    run_burst_worker(concurrency=1)
    later.refresh()
    now.refresh()
    assert (later.status, now.status, now.return_value) == ("READY", "SUCCESSFUL", 20)
    assert later.run_after > timezone.now()


def test_higher_priority_runs_first():
    for name, priority in [("low", -10), ("mid", 0), ("high", 50)]:
        tasks.record_order.using(priority=priority).enqueue(name)
    run_burst_worker(concurrency=1, prefetch=0)
    assert list(Execution.objects.order_by("id").values_list("key", flat=True)) == [
        "high", "mid", "low",
    ]  # fmt: skip


def test_the_context_carries_the_attempt_and_the_result():
    result = tasks.attempt_number.enqueue(fail_until=1)
    run_burst_worker(concurrency=1)
    result.refresh()
    assert result.status == TaskResultStatus.SUCCESSFUL
    assert result.return_value == {"attempt": 1, "id": result.id}
    assert result.attempts == 1 and len(result.worker_ids) == 1 and result.errors == []


@pytest.mark.skipif(not tasks.PASSTHROUGH, reason="Django 6.1 passes task options through")
def test_options_of_this_package_pass_through_djangos_task_decorator():
    assert tasks.attempt_number.max_retries == 2
    result = tasks.attempt_number.enqueue(fail_until=2)
    run_burst_worker(concurrency=1)
    result.refresh()
    assert result.status == TaskResultStatus.SUCCESSFUL
    assert result.return_value == {"attempt": 2, "id": result.id}
    assert result.attempts == 2 and len(result.worker_ids) == 2
    [error] = result.errors
    assert error.exception_class_path == "builtins.RuntimeError"
    assert "attempt 1 fails" in error.traceback


def test_a_failed_task_has_its_error_and_no_return_value():
    result = tasks.breaks.enqueue("no good")
    run_burst_worker(concurrency=1)
    result.refresh()
    assert result.status == TaskResultStatus.FAILED
    assert result.finished_at is not None and result.last_attempted_at is not None
    [error] = result.errors
    assert error.exception_class is ValueError
    assert "ValueError: no good" in error.traceback
    with pytest.raises(ValueError, match="failed"):
        result.return_value


def test_async_enqueue_and_get_result():
    async def enqueue_and_fetch():
        result = await tasks.async_double.aenqueue(21)
        fetched = await default_task_backend.aget_result(result.id)
        return result, fetched

    result, fetched = async_to_sync(enqueue_and_fetch)()
    assert fetched.id == result.id and fetched.status == TaskResultStatus.READY
    run_burst_worker(concurrency=1)
    async_to_sync(result.arefresh)()
    assert result.return_value == 42


def test_get_result_works_from_another_process():
    result = tasks.multiply.enqueue(6, 7)
    run_burst_worker(concurrency=1)
    script = (
        "import django; django.setup()\n"
        "from tests.djangoapp.tasks import multiply\n"
        f"print(multiply.get_result({result.id!r}).return_value)\n"
    )
    from tests.conftest import database_url_for_subprocess

    output = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, check=True,
        env={"DJANGO_SETTINGS_MODULE": "tests.settings", "PATH": "/usr/bin:/bin",
             "DATABASE_URL": database_url_for_subprocess()},
    )  # fmt: skip
    assert output.stdout.strip() == "42"


@pytest.mark.parametrize("unknown", ["999999999", "not-a-number", ""])
def test_an_unknown_id_raises_task_result_does_not_exist(unknown):
    with pytest.raises(TaskResultDoesNotExist):
        default_task_backend.get_result(unknown)
    with pytest.raises(TaskResultDoesNotExist):
        async_to_sync(default_task_backend.aget_result)(unknown)


def test_django_signals_carry_the_backend_and_the_result_and_failures_their_exception():
    import sys as system

    seen = []

    def on_enqueued(sender, task_result, **kwargs):
        seen.append(("enqueued", sender, task_result.status))

    def on_started(sender, task_result, **kwargs):
        seen.append(("started", sender, task_result.status))

    def on_finished(sender, task_result, **kwargs):
        seen.append(("finished", sender, task_result.status, system.exc_info()[0]))

    task_enqueued.connect(on_enqueued)
    task_started.connect(on_started)
    task_finished.connect(on_finished)
    try:
        tasks.breaks.enqueue("signal")
        run_burst_worker(concurrency=1)
    finally:
        task_enqueued.disconnect(on_enqueued)
        task_started.disconnect(on_started)
        task_finished.disconnect(on_finished)
    assert seen == [
        ("enqueued", PostgresBackend, "READY"),
        ("started", PostgresBackend, "RUNNING"),
        # Sent from inside the except block, so Django's logging shows the traceback.
        ("finished", PostgresBackend, "FAILED", ValueError),
    ]


def test_validation_applies_djangos_rules_first_and_says_how_to_fix():
    with pytest.raises(InvalidTask, match=r"priority must be a whole number between -100 and 100"):
        tasks.echo.using(priority=101)
    naive = timezone.now().replace(tzinfo=None) + timedelta(minutes=5)
    with pytest.raises(InvalidTask, match="naive datetime"):
        tasks.echo.using(run_after=naive).enqueue(1)


@override_settings(
    TASKS={"default": {"BACKEND": "django_tasks_q.backend.PostgresBackend",
                       "OPTIONS": {"DATABASE": "missing"}}}
)  # fmt: skip
def test_the_backend_check_reports_an_unknown_database():
    messages = task_backends["default"].check()
    assert [m.id for m in messages] == ["django_tasks_q.backend.E002"]
    assert "'missing'" in messages[0].msg
