"""The worker's main loop: when outcomes are recorded, and when it looks for tasks without a
notification. Workers run in a thread of the test process (thread pool)."""

import time

import pytest

from django_tasks_q.models import Task
from tests.conftest import wait_for
from tests.testapp import tasks
from tests.testapp.models import Execution

pytestmark = pytest.mark.django_db(transaction=True)


def test_a_result_is_recorded_at_once_while_the_workers_other_tasks_still_run(worker_in_thread):
    long = tasks.runs_long.delay("long", 10)
    worker_in_thread(concurrency=2, poll_interval=0.05)
    wait_for(lambda: Execution.objects.filter(key="long").exists(), message="the long task")
    short = tasks.add.delay(2, 3)
    # Recorded within milliseconds of its end (RECORD_WITHIN), not when the long task ends.
    assert short.wait(timeout=5).result == 5
    assert Task.objects.get(pk=long.id).status == "RUNNING"


def test_without_notifications_a_worker_polls_on_time_while_its_tasks_keep_finishing(
    worker_in_thread,
):
    # Tasks that end every 0.6 s, more often than the 1 s poll, for 3 s: each end wakes the
    # worker, and none of those wake-ups may put the next poll off.
    for index in range(1, 6):
        tasks.runs_long.delay(f"busy-{index}", 0.6 * index)
    worker = worker_in_thread(concurrency=8, prefetch=0, poll_interval=1.0, listen=False)
    wait_for(lambda: Execution.objects.filter(key__startswith="busy").count() == 5,
             message="the busy tasks to start")  # fmt: skip
    wait_for(lambda: not worker._maybe_ready, message="the worker to find the queue empty")
    enqueued = time.monotonic()
    tasks.record.delay("late")
    wait_for(lambda: Execution.objects.filter(key="late").exists(), timeout=10,
             message="the task enqueued without a notification")  # fmt: skip
    assert time.monotonic() - enqueued < 2.5  # one poll interval, and slack for a busy machine
