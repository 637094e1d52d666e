"""--pool processes: hard time limits, crashing tasks, recycled children."""

import pytest
from django.db.models import Count

from django_tasks_q.models import Task
from tests.conftest import wait_for
from tests.testapp import tasks
from tests.testapp.models import Execution

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]


def test_a_task_over_its_time_limit_is_killed_and_the_worker_keeps_serving(start_worker):
    slow = tasks.overruns_its_time_limit.delay("slow")
    worker = start_worker("--pool", "processes", "--concurrency", "1")
    slow.wait(timeout=30)
    assert slow.status == "FAILED"
    assert slow.error.type == "django_tasks_q.exceptions.TimeLimitExceeded"
    assert "time limit of 1.0s" in slow.error.message
    after = tasks.add.delay(2, 3)
    assert after.wait(timeout=30).result == 5  # on a fresh child
    worker.terminate()
    assert worker.wait() == 0


def test_a_task_that_kills_its_process_fails_after_its_retries(start_worker):
    handle = tasks.kills_its_process.delay("crash")
    worker = start_worker("--pool", "processes", "--concurrency", "1")
    handle.wait(timeout=60)
    assert (handle.status, handle.attempts) == ("FAILED", 3)
    assert {e.type for e in handle.errors} == {"django_tasks_q.exceptions.WorkerLost"}
    assert "exit status 1" in handle.error.message
    assert Execution.objects.filter(key="crash").count() == 3
    assert tasks.add.delay(1, 1).wait(timeout=30).result == 2  # the worker is fine
    worker.terminate()
    assert worker.wait() == 0


def test_children_are_recycled_after_max_tasks(start_worker):
    tasks.record.enqueue_many([(f"r{i}",) for i in range(100)])
    worker = start_worker(
        "--pool", "processes", "--concurrency", "2", "--max-tasks-per-child", "10"
    )
    wait_for(lambda: not Task.objects.exclude(status="SUCCESSFUL").exists(), timeout=120,
             message="all tasks to finish")  # fmt: skip
    worker.terminate()
    assert worker.wait() == 0
    per_child = dict(Execution.objects.values_list("worker").annotate(n=Count("id")))
    assert sum(per_child.values()) == 100
    assert len(per_child) >= 10 and max(per_child.values()) <= 10


def test_the_soft_time_limit_raises_inside_the_task_first(start_worker):
    handle = tasks.cleans_up_at_the_soft_limit.delay("soft")
    worker = start_worker("--pool", "processes", "--concurrency", "1")
    assert handle.wait(timeout=30).result == "cleaned up"
    assert Execution.objects.filter(key="soft").count() == 1
    worker.terminate()
    assert worker.wait() == 0


def test_cancel_with_terminate_kills_a_task_that_does_not_stop(start_worker):
    import time

    from tests.test_recovery import FAST

    stubborn = tasks.runs_long.delay("stubborn", 60)  # never checks for cancellation
    worker = start_worker("--pool", "processes", "--concurrency", "1", env=FAST)
    wait_for(lambda: Execution.objects.filter(key="stubborn").exists(), message="the task to start")
    asked = time.monotonic()
    assert stubborn.cancel(terminate=True) is True
    stubborn.wait(timeout=20)
    assert time.monotonic() - asked < 15
    assert stubborn.status == "CANCELLED"
    assert "process running it was killed" in stubborn.error.message
    assert tasks.add.delay(3, 4).wait(timeout=30).result == 7  # on a fresh child
    worker.terminate()
    assert worker.wait() == 0
