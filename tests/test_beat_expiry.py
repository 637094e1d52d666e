"""A scheduled task's expiry: the claim cancels a task past it instead of starting it."""

from datetime import timedelta

import pytest

from django_tasks_q import queue
from django_tasks_q.backend import get_backend
from django_tasks_q.models import Task
from django_tasks_q.queue import QueueConnection
from tests.conftest import run_burst_worker
from tests.testapp import tasks
from tests.testapp.models import Execution

pytestmark = pytest.mark.django_db(transaction=True)


def enqueue(expires_in: float | None, *, priority: int = 0, key: str = "k") -> int:
    now = queue.database_now("default")
    expires_at = None if expires_in is None else now + timedelta(seconds=expires_in)
    task = tasks.record.using(priority=priority)
    return int(get_backend().enqueue(task, [key], {}, expires_at=expires_at).id)


@pytest.fixture
def claimer():
    connection = QueueConnection("default")
    yield connection
    connection.close()


@pytest.mark.parametrize("queues", [None, ["default"]])
def test_a_task_past_its_expiry_is_cancelled_by_the_claim_and_not_returned(claimer, queues):
    expired = enqueue(-1)
    claimed = claimer.claim(worker_id="w1", queues=queues, limit=10, lease_seconds=60)
    assert claimed == []
    row = Task.objects.get(pk=expired)
    assert (row.status, row.attempts, row.worker_id) == ("CANCELLED", 0, "")
    assert row.finished_at is not None
    assert row.errors[-1]["type"] == "django_tasks_q.exceptions.TaskExpired"
    assert "not started before it expired at" in row.errors[-1]["message"]


@pytest.mark.parametrize("queues", [None, ["default"]])
def test_tasks_before_their_expiry_or_without_one_are_claimed_as_usual(claimer, queues):
    ids = {enqueue(60), enqueue(None)}
    claimed = claimer.claim(worker_id="w1", queues=queues, limit=10, lease_seconds=60)
    assert {task.id for task in claimed} == ids
    assert set(Task.objects.values_list("status", flat=True)) == {"RUNNING"}


def test_an_expired_task_ahead_in_line_does_not_hold_back_the_others(claimer):
    expired = enqueue(-1, priority=10)
    waiting = enqueue(None)
    claimed = claimer.claim(worker_id="w1", queues=None, limit=2, lease_seconds=60)
    assert [task.id for task in claimed] == [waiting]
    assert Task.objects.get(pk=expired).status == "CANCELLED"


def test_a_worker_never_runs_an_expired_task_and_its_handle_says_why():
    enqueue(-1, key="late")
    enqueue(None, key="on-time")
    run_burst_worker()
    assert list(Execution.objects.values_list("key", flat=True)) == ["on-time"]
    expired = Task.objects.get(status="CANCELLED")
    handle = get_backend().get_result(expired.pk)
    assert handle.status == "CANCELLED"
    assert handle.error.type == "django_tasks_q.exceptions.TaskExpired"


def test_expired_tasks_do_not_make_a_worker_think_the_queue_is_drained():
    for n in range(3):
        enqueue(-1, priority=10, key=f"expired-{n}")  # picked first, cancelled by the claim
    for n in range(2):
        enqueue(None, key=f"live-{n}")
    # A burst worker stops when a claim comes back short; expired tasks must not count as
    # missing rows, or it would stop here with the live tasks still waiting.
    run_burst_worker(concurrency=1, batch_size=3, prefetch=2, poll_interval=60)
    assert set(Execution.objects.values_list("key", flat=True)) == {"live-0", "live-1"}
    assert Task.objects.filter(status="CANCELLED").count() == 3


def test_apply_async_expires_sets_the_expiry_and_a_late_task_is_cancelled(claimer):
    from django.utils import timezone

    fresh = tasks.record.apply_async(("fresh",), expires=60)
    row = Task.objects.get(pk=fresh.id)
    assert timedelta(seconds=55) < row.expires_at - row.enqueued_at <= timedelta(seconds=61)
    stale = tasks.record.apply_async(("stale",), expires=timedelta(seconds=60))
    Task.objects.filter(pk=stale.id).update(expires_at=timezone.now() - timedelta(seconds=1))
    claimed = claimer.claim(worker_id="w1", queues=None, limit=10, lease_seconds=60)
    assert [task.id for task in claimed] == [int(fresh.id)]
    assert Task.objects.get(pk=stale.id).status == "CANCELLED"


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"expires": 0}, "expires must be a positive number of seconds"),
        ({"expires": "soon"}, "expires must be seconds, a timedelta or an aware datetime"),
        ({"expires": 30, "countdown": 60}, "is not after the task may start"),
    ],
)
def test_apply_async_refuses_an_expiry_that_could_never_let_the_task_run(options, message):
    from django_tasks_q import InvalidTask

    with pytest.raises(InvalidTask, match=message):
        tasks.record.apply_async(("x",), **options)
    assert not Task.objects.exists()


def test_aapply_async_takes_the_same_options():
    from asgiref.sync import async_to_sync

    handle = async_to_sync(tasks.record.aapply_async)(("a",), expires=60, priority=3)
    row = Task.objects.get(pk=handle.id)
    assert row.priority == 3 and row.expires_at is not None
