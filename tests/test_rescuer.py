"""The rescuer and the retry policy for lost attempts, stepped directly (run_once)."""

from datetime import timedelta

import pytest
from django.utils import timezone

from django_tasks_q.backend import get_backend
from django_tasks_q.models import Task
from django_tasks_q.queue import Outcome, QueueConnection
from django_tasks_q.retry import after_lost
from django_tasks_q.signals import task_finished, task_retried
from django_tasks_q.worker.rescuer import Rescuer
from django_tasks_q.worker.runner import Runner
from tests.conftest import run_burst_worker
from tests.testapp import tasks

pytestmark = pytest.mark.django_db(transaction=True)

WORKER_LOST = "django_tasks_q.exceptions.WorkerLost"


@pytest.fixture
def connection():
    conn = QueueConnection("default")
    yield conn
    conn.close()


@pytest.fixture
def signals():
    received = []

    def on_finished(sender, task_result, **kwargs):
        received.append(("finished", task_result.id, task_result.status))

    def on_retried(sender, task_result, **kwargs):
        received.append(("retried", task_result.id, task_result.status))

    task_finished.connect(on_finished)
    task_retried.connect(on_retried)
    yield received
    task_finished.disconnect(on_finished)
    task_retried.disconnect(on_retried)


def rescuer(connection, name="rescuer"):
    runner = Runner(worker_id=f"{name}-000000", backend=get_backend())
    return Rescuer(connection=connection, worker_id=f"{name}-000000", name=name, runner=runner)


def running_row(**fields):
    defaults = {
        "name": "tests.testapp.tasks.add", "args": [1, 2], "status": "RUNNING", "attempts": 1,
        "max_attempts": 1, "worker_id": "gone-123456",
        "lease_expires_at": timezone.now() - timedelta(seconds=5),
    }  # fmt: skip
    return Task.objects.create(**{**defaults, **fields})


def test_a_lost_attempt_runs_again_without_spending_the_tasks_retries(connection, signals):
    row = running_row()  # max_retries=0: one attempt of its own
    assert rescuer(connection).run_once() == 1
    row.refresh_from_db()
    assert (row.status, row.lost_attempts, row.max_attempts, row.attempts) == ("READY", 1, 2, 1)
    assert row.lease_expires_at is None
    [entry] = row.errors
    assert (entry["type"], entry["attempt"], entry["worker_id"]) == (WORKER_LOST, 1, "gone-123456")
    assert "stopped heartbeating" in entry["message"]
    assert signals == [("retried", str(row.pk), "READY")]
    run_burst_worker()
    row.refresh_from_db()
    assert (row.status, row.result, row.attempts) == ("SUCCESSFUL", 3, 2)


def test_the_lost_attempt_that_reaches_the_cap_fails_the_task(connection, signals):
    row = running_row(lost_attempts=2, max_lost_attempts=3, attempts=3, max_attempts=3)
    rescuer(connection).run_once()
    row.refresh_from_db()
    assert (row.status, row.lost_attempts) == ("FAILED", 3)
    assert row.finished_at is not None
    assert signals == [("finished", str(row.pk), "FAILED")]


def test_a_lost_attempt_of_a_task_asked_to_cancel_ends_cancelled(connection, signals):
    row = running_row(cancel_requested_at=timezone.now())
    rescuer(connection).run_once()
    row.refresh_from_db()
    assert row.status == "CANCELLED"
    assert signals == [("finished", str(row.pk), "CANCELLED")]


def test_a_live_lease_is_not_recovered(connection, signals):
    row = running_row(lease_expires_at=timezone.now() + timedelta(seconds=30))
    assert rescuer(connection).run_once() == 0
    row.refresh_from_db()
    assert (row.status, row.errors) == ("RUNNING", [])
    assert signals == []


def test_a_worker_recovers_what_earlier_processes_of_its_name_held_and_nothing_else(
    connection,
):
    from django_tasks_q.models import Worker

    Worker.objects.create(id="web-1-aaaaaa", name="web-1", hostname="h", pid=1, concurrency=1)
    Worker.objects.create(id="web-2-bbbbbb", name="web-2", hostname="h", pid=2, concurrency=1)
    far = timezone.now() + timedelta(minutes=5)
    mine = running_row(worker_id="web-1-aaaaaa", lease_expires_at=far)
    other = running_row(worker_id="web-2-bbbbbb", lease_expires_at=far)
    assert rescuer(connection, "web-1").recover_predecessors() == 1
    mine.refresh_from_db()
    other.refresh_from_db()
    assert (mine.status, other.status) == ("READY", "RUNNING")
    assert "replaced by web-1-000000" in mine.errors[-1]["message"]
    assert Worker.objects.get(pk="web-1-aaaaaa").state == "STOPPED"
    assert Worker.objects.get(pk="web-2-bbbbbb").state == "RUNNING"


def test_a_late_outcome_of_a_recovered_attempt_is_dropped(connection):
    handle = tasks.add.delay(1, 1)
    [claimed] = connection.claim(worker_id="slow-1", queues=None, limit=1, lease_seconds=60)
    Task.objects.filter(pk=claimed.id).update(lease_expires_at=timezone.now())
    rescuer(connection).run_once()
    late = Outcome(id=claimed.id, attempt=claimed.attempt, status="SUCCESSFUL", result_json="7")
    assert connection.finish(worker_id="slow-1", outcomes=[late]) == set()
    handle.refresh()
    assert (handle.status, handle.result) == ("READY", None)


@pytest.mark.parametrize(
    ("lost_before", "cap", "status", "max_attempts"),
    [(0, 3, "READY", 2), (1, 3, "READY", 2), (2, 3, "FAILED", 1), (0, 1, "FAILED", 1)],
)
def test_after_lost_policy(lost_before, cap, status, max_attempts):
    decision = after_lost(
        max_attempts=1, lost_attempts=lost_before, max_lost_attempts=cap, cancel_requested=False
    )
    assert (decision.status, decision.max_attempts) == (status, max_attempts)


def test_expired_tasks_send_task_finished(signals):
    handle = tasks.add.apply_async(args=(1, 1), expires=60)
    Task.objects.filter(pk=handle.id).update(expires_at=timezone.now() - timedelta(seconds=1))
    run_burst_worker()
    handle.refresh()
    assert handle.status == "CANCELLED"
    assert signals == [("finished", handle.id, "CANCELLED")]


def test_a_lost_attempt_does_not_eat_into_the_tasks_own_retries(connection):
    handle = tasks.fail_until.delay("lost-then-retry", 3)  # max_retries=3: fails twice
    [claimed] = connection.claim(worker_id="gone-1", queues=None, limit=1, lease_seconds=60)
    Task.objects.filter(pk=claimed.id).update(lease_expires_at=timezone.now())
    rescuer(connection).run_once()
    run_burst_worker()
    handle.refresh()
    assert (handle.status, handle.attempts, handle.lost_attempts) == ("SUCCESSFUL", 4, 1)


def test_context_retry_with_max_retries_counts_only_the_tasks_own_attempts(connection):
    handle = tasks.gives_up_after_one_retry.delay("lost-then-context")
    [claimed] = connection.claim(worker_id="gone-2", queues=None, limit=1, lease_seconds=60)
    Task.objects.filter(pk=claimed.id).update(lease_expires_at=timezone.now())
    rescuer(connection).run_once()
    run_burst_worker()
    handle.refresh()
    # Attempt 1 lost; attempts 2 and 3 are its own: the first retries (max_retries=1), the
    # second fails for good.
    assert (handle.status, handle.attempts, handle.lost_attempts) == ("FAILED", 3, 1)
