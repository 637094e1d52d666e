"""runtaskworker --beat: the beat inside a worker process."""

from datetime import timedelta
from itertools import pairwise

import pytest

from django_tasks_q.models import Schedule, Task
from tests.conftest import wait_for
from tests.testapp import tasks

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]


def test_two_workers_with_beat_enqueue_each_tick_once_and_run_it(start_worker):
    schedule = Schedule.objects.create(
        name="embedded", task=tasks.record.name, args=["tick"], interval=timedelta(seconds=1)
    )
    workers = [start_worker("--beat", "--concurrency", "1") for _ in range(2)]

    def ticks():
        return Task.objects.filter(schedule=schedule, status="SUCCESSFUL").count()

    wait_for(lambda: ticks() >= 4, timeout=30, message="four ticks to run")
    for worker in workers:
        worker.terminate()
    assert [worker.wait() for worker in workers] == [0, 0]

    when = list(Task.objects.filter(schedule=schedule).values_list("scheduled_for", flat=True))
    assert len(when) == len(set(when)), "a tick was enqueued twice"
    ordered = sorted(when)
    log = workers[0].log() + workers[1].log()
    # On the one-second grid; a beat held up past a tick enqueues only the latest and says so.
    assert all((b - a) % timedelta(seconds=1) == timedelta(0) for a, b in pairwise(ordered))
    if any(b - a != timedelta(seconds=1) for a, b in pairwise(ordered)):
        assert "missed its ticks" in log
    assert "Beat" in log and "stopped after enqueueing" in log
