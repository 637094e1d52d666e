"""Nothing a task returns or raises takes a worker down, in process (the thread pool)."""

import pytest

from django_tasks_q.backend import get_backend
from django_tasks_q.models import Task
from django_tasks_q.queue import Outcome
from django_tasks_q.worker import Worker
from tests.conftest import run_burst_worker
from tests.testapp import tasks

pytestmark = pytest.mark.django_db(transaction=True)


def test_an_executor_thread_survives_an_exception_that_cannot_be_printed():
    unprintable = tasks.raises.delay("unprintable")
    after = tasks.add.delay(2, 3)
    run_burst_worker(concurrency=1)  # one thread: the second task needs it alive
    unprintable.refresh()
    assert unprintable.status == "FAILED"
    assert unprintable.error.type == "tests.testapp.tasks.UnprintableError"
    assert "UnprintableError" in unprintable.error.traceback
    after.refresh()
    assert (after.status, after.result) == ("SUCCESSFUL", 5)


def test_a_batch_with_an_outcome_the_database_refuses_records_the_others():
    good, bad = tasks.add.delay(1, 1), tasks.add.delay(2, 2)
    worker = Worker(backend=get_backend(), concurrency=1, listen=False)
    try:
        claimed = worker.connection.claim(
            worker_id=worker.worker_id, queues=None, limit=2, lease_seconds=60
        )
        worker._held.update(task.id for task in claimed)
        attempts = {task.id: task.attempt for task in claimed}
        # A result PostgreSQL's jsonb refuses (an escaped NUL), whatever produced it.
        worker._deliver(Outcome(id=int(bad.id), attempt=attempts[int(bad.id)],
                                status="SUCCESSFUL", result_json='"\\u0000"'))  # fmt: skip
        worker._deliver(Outcome(id=int(good.id), attempt=attempts[int(good.id)],
                                status="SUCCESSFUL", result_json="2"))  # fmt: skip
        worker.stop()  # claims nothing more
        assert worker._finish_and_claim() is True
    finally:
        worker.connection.close()
        worker.heartbeat.connection.close()
    good.refresh()
    bad.refresh()
    assert (good.status, good.result) == ("SUCCESSFUL", 2)
    assert bad.status == "FAILED"
    assert bad.error.type == "django_tasks_q.exceptions.OutcomeNotStored"
    assert "refused to store" in bad.error.message
    assert not worker._held
    assert not Task.objects.filter(status="RUNNING").exists()
