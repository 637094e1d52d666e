"""The handle a caller keeps: refresh, wait, cancel, lookup by id."""

import time

import pytest

from django_tasks_q import TaskResultDoesNotExist, TaskTimeoutError, get_result, registry
from django_tasks_q.backend import get_backend
from django_tasks_q.exceptions import UnknownTaskError
from django_tasks_q.models import Task, TaskStatus
from tests.testapp import tasks

pytestmark = pytest.mark.django_db


@pytest.mark.django_db(transaction=True)
def test_wait_gives_up_with_a_clear_error():
    handle = tasks.add.delay(1, 2)  # committed: no worker runs in this test
    started = time.monotonic()
    with pytest.raises(
        TaskTimeoutError,
        match=r"is still READY after waiting 0.3s\. Is a worker running for queue 'default'",
    ):
        handle.wait(timeout=0.3)
    assert time.monotonic() - started < 2


def test_refresh_sees_changes_made_elsewhere():
    handle = tasks.add.delay(1, 2)
    Task.objects.filter(pk=handle.id).update(status="SUCCESSFUL", result=3, attempts=1)
    handle.refresh()
    assert (handle.status, handle.result, handle.attempts, handle.is_finished) == (
        "SUCCESSFUL",
        3,
        1,
        True,
    )


def test_cancel_a_task_that_has_not_started():
    handle = tasks.add.apply_async(args=(1, 2), countdown=60)
    assert handle.cancel() == "cancelled"
    assert handle.status == TaskStatus.CANCELLED and handle.is_finished
    assert handle.cancel() == "already_finished"  # nothing to do
    assert not handle.cancel()


def test_result_and_return_value_before_the_task_ran():
    handle = tasks.add.delay(1, 2)
    assert handle.result is None
    with pytest.raises(ValueError, match="not finished yet"):
        handle.return_value


def test_get_result_for_an_unknown_id():
    with pytest.raises(TaskResultDoesNotExist, match="No task with id '999999'"):
        get_result("999999")
    with pytest.raises(TaskResultDoesNotExist, match="No task with id 'not-a-number'"):
        get_result("not-a-number")


def test_get_result_keeps_per_call_queue_and_priority():
    handle = tasks.add.apply_async(args=(1, 2), queue="bulk", priority=7)
    again = get_result(handle.id)
    assert (again.queue, again.priority, again.task.queue_name) == ("bulk", 7, "bulk")


def test_return_value_of_a_cancelled_task_says_so():
    handle = tasks.add.delay(1, 2)
    handle.cancel()
    with pytest.raises(ValueError, match="Task was cancelled"):
        handle.return_value


def test_the_handle_of_a_task_removed_from_the_code_still_reads_its_row():
    row = Task.objects.create(
        name="gone.module.old_task", status="RUNNING", args=[7], kwargs={"retry": True},
        queue="bulk", priority=5, attempts=2, max_attempts=3,
        errors=[{"type": "builtins.ValueError", "message": "first try", "attempt": 1}],
    )  # fmt: skip
    handle = get_backend().get_result(str(row.pk))
    assert (handle.status, handle.args, handle.kwargs) == ("RUNNING", [7], {"retry": True})
    assert (handle.task.name, handle.queue, handle.priority) == ("gone.module.old_task", "bulk", 5)
    assert [error.message for error in handle.errors] == ["first try"]

    Task.objects.filter(pk=row.pk).update(status="SUCCESSFUL", result={"total": 3})
    handle.refresh()
    assert (handle.status, handle.result) == ("SUCCESSFUL", {"total": 3})
    assert handle.wait(timeout=1) is handle
    # The stand-in for the task is not registered: no worker takes the name for a known task.
    assert "gone.module.old_task" not in registry.all_tasks()
    assert registry.find("gone.module.old_task") is None


def test_a_task_removed_from_the_code_cannot_be_enqueued_from_its_handle():
    row = Task.objects.create(name="gone.module.old_task", status="FAILED")
    task = get_result(row.pk).task
    with pytest.raises(
        UnknownTaskError, match=r"'gone\.module\.old_task' is no longer in the code"
    ):
        task.enqueue()
    with pytest.raises(UnknownTaskError, match="no longer in the code"):
        task.apply_async(args=(1,), countdown=5)
    with pytest.raises(UnknownTaskError, match="no longer in the code"):
        task()  # nor run here
    assert not Task.objects.exclude(pk=row.pk).exists()
