"""Leases, heartbeats and recovery, with real worker processes killed for real."""

import signal

import pytest

from django_tasks_q.models import Task, Worker
from tests.conftest import wait_for
from tests.testapp import tasks
from tests.testapp.models import Execution

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]

# Short leases so recovery is seen within seconds.
FAST = {"TASKS_Q_LEASE_SECONDS": "2", "TASKS_Q_HEARTBEAT_INTERVAL": "0.3"}


def test_a_task_whose_worker_was_killed_runs_again_exactly_once(start_worker):
    handle = tasks.hangs_on_first_attempt.delay("k")
    doomed = start_worker("--concurrency", "1", env=FAST)
    wait_for(lambda: Execution.objects.filter(key="k").exists(), message="the first attempt")
    doomed.process.send_signal(signal.SIGKILL)
    doomed.process.wait(timeout=10)

    survivor = start_worker("--concurrency", "1", env=FAST)
    handle.wait(timeout=30)
    assert (handle.status, handle.result, handle.attempts) == ("SUCCESSFUL", 2, 2)
    assert list(Execution.objects.filter(key="k").values_list("attempt", flat=True)) == [1, 2]
    [lost] = handle.errors
    assert lost.type == "django_tasks_q.exceptions.WorkerLost"
    assert "stopped heartbeating" in lost.message and lost.attempt == 1
    survivor.terminate()
    assert survivor.wait() == 0


def test_a_task_that_keeps_losing_its_worker_ends_failed(start_worker):
    row = Task.objects.create(
        name="tests.testapp.tasks.add", args=[1, 2], status="RUNNING", attempts=3,
        max_attempts=3, worker_id="gone-for-good", lease_expires_at="2000-01-01T00:00:00Z",
        lost_attempts=2, max_lost_attempts=3,
    )  # fmt: skip
    worker = start_worker(env=FAST)
    wait_for(lambda: Task.objects.get(pk=row.pk).status == "FAILED", message="the recovery")
    row.refresh_from_db()
    assert row.errors[-1]["type"] == "django_tasks_q.exceptions.WorkerLost"
    assert row.finished_at is not None
    worker.terminate()
    assert worker.wait() == 0


def test_a_task_running_far_longer_than_the_lease_is_never_taken_away(start_worker):
    handle = tasks.runs_long.delay("long", 6)  # three times the 2 s lease
    first = start_worker("--concurrency", "1", env=FAST)
    wait_for(lambda: Execution.objects.filter(key="long").exists(), message="the task to start")
    second = start_worker("--concurrency", "1", env=FAST)  # would recover it if it looked lost
    handle.wait(timeout=30)
    assert (handle.status, handle.attempts, handle.errors) == ("SUCCESSFUL", 1, [])
    assert Execution.objects.filter(key="long").count() == 1
    for worker in (first, second):
        worker.terminate()
        assert worker.wait() == 0


def test_workers_register_heartbeat_and_say_when_they_stop(start_worker):
    worker = start_worker(
        "--worker-id", "w-visible", "--queues", "a,b", "--concurrency", "3", env=FAST
    )
    row = wait_for(lambda: Worker.objects.filter(name="w-visible").first(), message="registration")
    assert row.id.startswith("w-visible-")
    assert (row.state, row.queues, row.concurrency, row.pid) == (
        "RUNNING",
        ["a", "b"],
        3,
        worker.pid,
    )
    first_beat = row.last_heartbeat_at
    wait_for(
        lambda: Worker.objects.get(pk=row.id).last_heartbeat_at > first_beat,
        message="a heartbeat",
    )
    tasks.add.apply_async(args=(1, 1), queue="a")
    tasks.always_fails.apply_async(queue="b")
    wait_for(lambda: not Task.objects.exclude(status__in=["SUCCESSFUL", "FAILED"]).exists(),
             message="both tasks to finish")  # fmt: skip
    worker.terminate()
    assert worker.wait() == 0
    row = Worker.objects.get(pk=row.id)
    assert (row.state, row.tasks_succeeded, row.tasks_failed) == ("STOPPED", 1, 1)
    assert row.stopped_at is not None


def test_after_the_grace_period_the_worker_exits_and_its_task_is_recovered(start_worker):
    import time

    handle = tasks.hangs_on_first_attempt.delay("grace")
    worker = start_worker("--concurrency", "1", "--grace-period", "1", env=FAST)
    wait_for(lambda: Execution.objects.filter(key="grace").exists(), message="the first attempt")
    stopped_at = time.monotonic()
    worker.terminate()
    assert worker.wait(timeout=15) == 1
    assert time.monotonic() - stopped_at < 10
    assert "grace period of 1.0s is over, stopping 1 running tasks" in worker.log()

    survivor = start_worker("--concurrency", "1", env=FAST)
    handle.wait(timeout=30)
    assert (handle.status, handle.attempts) == ("SUCCESSFUL", 2)
    survivor.terminate()
    assert survivor.wait() == 0


def test_cancelling_a_running_task_stops_it_cooperatively(start_worker):
    handle = tasks.cooperative.delay("coop")
    other = tasks.add.delay(2, 2)
    worker = start_worker("--concurrency", "2", env=FAST)
    wait_for(lambda: Execution.objects.filter(key="coop").exists(), message="the task to start")
    assert handle.cancel() == "stop_requested"
    handle.wait(timeout=15)
    assert handle.status == "CANCELLED"
    assert handle.error.type == "django_tasks_q.exceptions.TaskCancelled"
    assert other.wait(timeout=10).result == 4  # nothing else affected
    worker.terminate()
    assert worker.wait() == 0
