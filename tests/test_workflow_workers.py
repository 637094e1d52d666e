"""Workflows run by several real ``runtaskworker`` processes (docs/workflows.md)."""

import os
import signal

import pytest

from django_tasks_q.canvas import chain, chord
from django_tasks_q.models import Task
from tests.conftest import wait_for
from tests.testapp import tasks
from tests.testapp.models import Execution

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]

FAST = {"TASKS_Q_LEASE_SECONDS": "2", "TASKS_Q_HEARTBEAT_INTERVAL": "0.3"}


def executions(key: str) -> int:
    return Execution.objects.filter(key=key).count()


def test_a_chord_of_1000_headers_fires_its_body_exactly_once_across_workers(start_worker):
    # Two process-pool workers and a thread-pool one, all waiting when the chord arrives:
    # headers finish in batches, on different workers, at the same moments.
    workers = [start_worker(), start_worker(), start_worker("--pool", "threads")]
    pids = {worker.pid for worker in workers}

    def all_running_tasks() -> bool:  # each worker's pool has started
        tasks.sleeps_and_says_who.enqueue_many([("warm-up", 0.2)] * 6)
        done = Task.objects.filter(name=tasks.sleeps_and_says_who.name, status="SUCCESSFUL")
        return set(done.values_list("result", flat=True)) == pids

    wait_for(all_running_tasks, timeout=60, interval=0.5, message="three working workers")
    workflow = chord([tasks.add.s(i, 1) for i in range(1000)], tasks.tally.s("chord-body"))
    handle = workflow.apply_async()
    assert handle.get(timeout=120) == [1000, sum(range(1, 1001))]
    assert executions("chord-body") == 1
    finished_by = set(
        Task.objects.filter(name=tasks.add.name, status="SUCCESSFUL").values_list(
            "worker_id", flat=True
        )
    )
    assert len(finished_by) >= 2, "the headers should have been shared between workers"
    for worker in workers:
        worker.terminate()
    for worker in workers:
        assert worker.wait() == 0, worker.log()


def test_a_worker_killed_mid_workflow_and_the_workflow_completes_once(start_worker):
    handle = chain(
        tasks.record.si("before"),
        tasks.sleeps_and_says_who.si("killed-step", 1.0),
        tasks.record.si("after"),
    ).apply_async()
    doomed = start_worker(env=FAST)
    wait_for(lambda: executions("killed-step") == 1, timeout=30, message="the middle step")
    os.kill(doomed.pid, signal.SIGKILL)
    doomed.wait()
    rescuer = start_worker(env=FAST)
    handle.wait(timeout=60)
    assert handle.status == "SUCCESSFUL"
    assert [executions(k) for k in ("before", "killed-step", "after")] == [1, 2, 1]
    middle = handle.steps[1]
    assert middle.attempts == 2 and middle.result == rescuer.pid
    rescuer.terminate()
    assert rescuer.wait() == 0, rescuer.log()
