"""What running a task records: results, errors per attempt, retries, signals, logs.

The worker runs in-process in burst mode; its threads and queue connection are real."""

import logging

import pytest

from django_tasks_q import get_result
from django_tasks_q.models import Task
from django_tasks_q.signals import task_finished, task_retried, task_started
from tests.conftest import run_burst_worker
from tests.testapp import tasks
from tests.testapp.models import Execution

pytestmark = pytest.mark.django_db(transaction=True)


def test_successful_task_stores_its_return_value():
    handle = tasks.add.delay(2, 3)
    worker = run_burst_worker(name="test-worker")
    handle.refresh()
    assert handle.status == "SUCCESSFUL"
    assert handle.result == handle.return_value == 5
    assert handle.attempts == 1
    assert worker.worker_id.startswith("test-worker-")
    assert handle.worker_ids == [worker.worker_id]
    assert handle.started_at <= handle.finished_at
    assert handle.error is None


def test_transient_failures_are_retried_until_success_keeping_every_error():
    handle = tasks.fail_until.delay("k", 3)
    run_burst_worker()
    handle.refresh()
    assert handle.status == "SUCCESSFUL" and handle.result == 3
    assert handle.attempts == 3
    assert [e.message for e in handle.errors] == ["attempt 1 failed", "attempt 2 failed"]
    assert [e.attempt for e in handle.errors] == [1, 2]
    assert handle.errors[0].type == "tests.testapp.tasks.TransientError"
    assert "raise TransientError" in handle.errors[0].traceback
    assert Execution.objects.filter(key="k").count() == 3


def test_exhausted_retries_end_failed_with_one_error_per_attempt():
    handle = tasks.always_fails.delay()
    run_burst_worker()
    handle.refresh()
    assert handle.status == "FAILED"
    assert handle.attempts == 3 == handle.max_attempts
    assert len(handle.errors) == 3
    assert handle.error.message == "it never works"
    assert handle.result is None
    with pytest.raises(ValueError, match="Task failed"):
        handle.return_value


def test_autoretry_for_limits_which_exceptions_retry():
    handle = tasks.permanent_failure.delay()
    run_burst_worker()
    handle.refresh()
    assert (handle.status, handle.attempts) == ("FAILED", 1)
    assert handle.error.type == "tests.testapp.tasks.PermanentError"


def test_context_retry_runs_the_task_again_and_records_the_given_exception():
    handle = tasks.retry_via_context.delay("ctx")
    run_burst_worker()
    handle.refresh()
    assert (handle.status, handle.result) == ("SUCCESSFUL", 3)
    assert list(
        Execution.objects.filter(key="ctx").values_list("attempt", flat=True).order_by("id")
    ) == [1, 2, 3]
    assert [e.message for e in handle.errors] == ["asked on attempt 1", "asked on attempt 2"]


def test_context_retry_on_the_last_attempt_fails_with_the_exception():
    handle = tasks.retry_forever_via_context.delay()
    run_burst_worker()
    handle.refresh()
    assert (handle.status, handle.attempts) == ("FAILED", 2)
    assert handle.error.message == "still not ready"


def test_bound_task_receives_attempt_number_and_task_id():
    handle = tasks.record_attempt.delay("bound")
    run_burst_worker()
    handle.refresh()
    assert handle.result == 1
    assert Execution.objects.get(key="bound").attempt == 1


def test_unregistered_task_name_fails_without_running_anything(settings):
    # A dotted path to a function that is not a task object is never imported and called.
    settings.TASKS_Q = {**settings.TASKS_Q, "UNKNOWN_TASK_GRACE": 0}
    Task.objects.create(name="os.system", args=["echo hacked"])
    run_burst_worker()
    row = Task.objects.get()
    assert row.status == "FAILED"
    assert row.errors[0]["type"] == "django_tasks_q.exceptions.UnknownTaskError"
    assert "No task named 'os.system' is registered" in row.errors[0]["message"]


def test_an_unknown_task_name_is_given_back_without_counting_an_attempt():
    row = Task.objects.create(name="shop.tasks.added_later", args=[])
    run_burst_worker()
    row.refresh_from_db()
    assert (row.status, row.attempts, row.errors) == ("READY", 0, [])
    assert row.run_after > row.enqueued_at  # offered again a little later


def test_arguments_that_no_longer_fit_the_signature_fail_clearly():
    Task.objects.create(name="tests.testapp.tasks.add", args=[1, 2, 3])
    run_burst_worker()
    row = Task.objects.get()
    assert row.status == "FAILED"
    assert "positional arguments but 3 were given" in row.errors[0]["message"]


def test_a_return_value_that_is_not_json_fails_the_task_and_says_why():
    handle = tasks.returns_unserialisable.delay()
    run_burst_worker()
    handle.refresh()
    assert handle.status == "FAILED"
    assert "the return value is of type object" in handle.error.message


def test_ignore_result_stores_no_result():
    handle = tasks.result_ignored.delay()
    run_burst_worker()
    handle.refresh()
    assert handle.status == "SUCCESSFUL" and handle.result is None
    assert Task.objects.get(pk=handle.id).result is None


def test_lifecycle_signals_are_sent_with_the_outcome():
    events = []

    def on_started(sender, task_result, **kwargs):
        events.append(("started", task_result.id, task_result.status))

    def on_finished(sender, task_result, **kwargs):
        events.append(("finished", task_result.id, task_result.status))

    def on_retried(sender, task_result, error, delay, **kwargs):
        events.append(("retried", task_result.id, type(error).__name__, delay))

    task_started.connect(on_started)
    task_finished.connect(on_finished)
    task_retried.connect(on_retried)
    try:
        handle = tasks.fail_until.delay("sig", 2)
        run_burst_worker(concurrency=1)
    finally:
        task_started.disconnect(on_started)
        task_finished.disconnect(on_finished)
        task_retried.disconnect(on_retried)
    assert events == [
        ("started", handle.id, "RUNNING"),
        ("retried", handle.id, "TransientError", 0.0),
        ("started", handle.id, "RUNNING"),
        ("finished", handle.id, "SUCCESSFUL"),
    ]


def test_each_task_logs_its_outcome_at_info_and_its_start_at_debug(caplog):
    handle = tasks.add.delay(1, 1)
    with caplog.at_level(logging.INFO, logger="django_tasks_q.worker"):
        run_burst_worker()
    lines = [r for r in caplog.records if getattr(r, "task_id", None) == int(handle.id)]
    assert [(r.levelname, r.outcome) for r in lines] == [("INFO", "succeeded")]
    assert lines[0].duration >= 0 and lines[0].task_name == "tests.testapp.tasks.add"

    caplog.clear()
    handle = tasks.add.delay(2, 2)
    with caplog.at_level(logging.DEBUG, logger="django_tasks_q.worker"):
        run_burst_worker()
    lines = [r for r in caplog.records if getattr(r, "task_id", None) == int(handle.id)]
    assert [(r.levelname, r.outcome) for r in lines] == [
        ("DEBUG", "started"),
        ("INFO", "succeeded"),
    ]
    assert lines[0].getMessage() == f"Task started tests.testapp.tasks.add #{handle.id} attempt 1/1"


def test_higher_priority_tasks_run_first():
    for i in range(5):
        tasks.record.apply_async(args=(f"low-{i}",), priority=-10)
    tasks.record.apply_async(args=("high",), priority=90)
    run_burst_worker(concurrency=1, batch_size=1, prefetch=0)
    assert Execution.objects.order_by("id").first().key == "high"


def test_get_result_rebuilds_a_handle_from_an_id():
    handle = tasks.add.delay(20, 22)
    run_burst_worker()
    again = get_result(handle.id)
    assert (again.status, again.result, again.args) == ("SUCCESSFUL", 42, [20, 22])
    assert tasks.add.get_result(handle.id).id == handle.id


def test_a_task_raising_system_exit_fails_and_the_worker_carries_on():
    bad = tasks.exits_the_process.delay()
    good = tasks.add.delay(1, 1)
    run_burst_worker(concurrency=1)
    bad.refresh()
    good.refresh()
    assert (bad.status, bad.attempts, bad.error.type) == ("FAILED", 1, "builtins.SystemExit")
    assert good.status == "SUCCESSFUL"


def test_a_signal_receiver_that_raises_does_not_disturb_the_task(caplog):
    def broken(sender, **kwargs):
        raise RuntimeError("receiver bug")

    task_started.connect(broken)
    try:
        handle = tasks.add.delay(1, 2)
        with caplog.at_level(logging.ERROR, logger="django_tasks_q.worker"):
            run_burst_worker()
    finally:
        task_started.disconnect(broken)
    handle.refresh()
    assert (handle.status, handle.result) == ("SUCCESSFUL", 3)
    assert any("Signal receiver" in r.getMessage() for r in caplog.records)


def test_context_retry_beyond_its_own_max_retries_fails_without_retrying():
    handle = tasks.gives_up_early.delay()
    run_burst_worker()
    handle.refresh()
    assert (handle.status, handle.attempts) == ("FAILED", 1)
    assert handle.error.type == "django_tasks_q.exceptions.MaxRetriesExceededError"


def test_error_timestamps_are_datetimes():
    handle = tasks.always_fails.delay()
    run_burst_worker()
    handle.refresh()
    assert all(error.failed_at.tzinfo is not None for error in handle.errors)
    assert handle.errors[0].failed_at <= handle.errors[-1].failed_at
