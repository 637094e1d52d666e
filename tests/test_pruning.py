"""Finished tasks are deleted once past their retention, by every worker, in batches."""

from datetime import timedelta

import pytest
from django.utils import timezone

from django_tasks_q.models import Task
from django_tasks_q.queue import QueueConnection
from django_tasks_q.worker.pruner import Pruner
from tests.conftest import wait_for
from tests.testapp import tasks

pytestmark = pytest.mark.django_db(transaction=True)

DAY = 24 * 3600


def finished(status: str, days_ago: float) -> int:
    row = Task.objects.create(name=tasks.add.name, status=status, attempts=1)
    when = timezone.now() - timedelta(days=days_ago)
    Task.objects.filter(pk=row.pk).update(finished_at=when, enqueued_at=when, run_after=when)
    return row.pk


@pytest.fixture
def connection():
    connection = QueueConnection("default")
    yield connection
    connection.close()


def test_finished_tasks_past_their_retention_are_deleted_and_nothing_else(connection):
    doomed = {finished("SUCCESSFUL", 8), finished("FAILED", 40), finished("CANCELLED", 31)}
    kept = {finished("SUCCESSFUL", 6), finished("FAILED", 20), finished("CANCELLED", 29)}
    waiting = Task.objects.create(name=tasks.add.name, status="READY")
    running = Task.objects.create(name=tasks.add.name, status="RUNNING", attempts=1)
    old = timezone.now() - timedelta(days=365)
    Task.objects.filter(pk__in=[waiting.pk, running.pk]).update(enqueued_at=old, run_after=old)

    pruner = Pruner(connection=connection, keep_successful=7 * DAY, keep_failed=30 * DAY)
    assert pruner.run_once() == 3
    remaining = set(Task.objects.values_list("pk", flat=True))
    assert remaining == kept | {waiting.pk, running.pk}
    assert not remaining & doomed


def test_none_keeps_that_kind_of_task_for_good(connection):
    old_success, old_failure = finished("SUCCESSFUL", 400), finished("FAILED", 400)
    assert Pruner(connection=connection, keep_successful=None, keep_failed=None).run_once() == 0
    assert Pruner(connection=connection, keep_successful=None, keep_failed=DAY).run_once() == 1
    assert set(Task.objects.values_list("pk", flat=True)) == {old_success}
    assert old_failure not in set(Task.objects.values_list("pk", flat=True))


def test_a_backlog_is_deleted_in_batches_until_none_is_full(connection):
    for _ in range(7):
        finished("SUCCESSFUL", 10)
    pruner = Pruner(connection=connection, keep_successful=DAY, keep_failed=None, batch_size=2)
    assert pruner.run_once() == 7
    assert not pruner.behind and not Task.objects.exists()


def test_a_backlog_left_over_the_time_budget_is_picked_up_at_the_next_beat(connection):
    for _ in range(5):
        finished("SUCCESSFUL", 10)
    pruner = Pruner(
        connection=connection, keep_successful=DAY, keep_failed=None, batch_size=2, time_budget=0
    )
    assert pruner.run_once() == 2 and pruner.behind
    assert pruner.run_once() == 2 and pruner.behind
    assert pruner.run_once() == 1 and not pruner.behind


def test_bad_retention_values_are_refused(connection):
    with pytest.raises(ValueError, match="keep_failed must be None or > 0 seconds"):
        Pruner(connection=connection, keep_successful=None, keep_failed=0)


@pytest.mark.slow
def test_a_running_worker_prunes_what_its_tasks_leave_behind(start_worker):
    handle = tasks.add.delay(1, 2)
    worker = start_worker(
        "--concurrency", "1",
        env={"TASKS_Q_KEEP_SUCCESSFUL": "1", "TASKS_Q_HEARTBEAT_INTERVAL": "0.3",
             "TASKS_Q_LEASE_SECONDS": "2"},
    )  # fmt: skip
    assert handle.wait(timeout=30).result == 3
    wait_for(lambda: not Task.objects.filter(pk=handle.id).exists(), timeout=30,
             message="the worker to delete the finished task")  # fmt: skip
    assert "Deleted 1 finished tasks past their retention" in worker.log()
    worker.terminate()
    assert worker.wait() == 0
