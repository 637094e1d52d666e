"""Workflows run by several real ``runtaskworker`` processes (docs/workflows.md)."""

import contextlib
import logging
import os
import signal
import threading

import pytest
from django.db import DatabaseError, connection, transaction

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


def _blocked_on_a_lock(application_name_prefix: str) -> bool:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
            "AND application_name LIKE %s",
            [application_name_prefix + "%"],
        )
        return cursor.fetchone()[0] > 0


def test_a_worker_whose_statement_deadlocks_records_its_outcomes_again(worker_in_thread, caplog):
    # Another session holds the dependent's row, so the worker's statement that finishes
    # the first step waits for it in the dependency trigger; that session then asks for the
    # first step's row, which the worker's statement holds: a deadlock. PostgreSQL rolls
    # back the statement that waited first, the worker's; it records the outcome again.
    workflow = chain(tasks.add.s(1, 1), tasks.add.s(10)).apply_async()
    first, second = (int(step.id) for step in workflow.steps)
    caplog.set_level(logging.WARNING, logger="django_tasks_q")
    locked, go = threading.Event(), threading.Event()

    def other_session() -> None:
        try:
            with transaction.atomic():
                Task.objects.select_for_update().filter(pk=second).exists()
                locked.set()
                go.wait(30)
                with contextlib.suppress(DatabaseError), transaction.atomic():
                    Task.objects.filter(pk=first).update(priority=1)
        finally:
            connection.close()

    holder = threading.Thread(target=other_session)
    holder.start()
    try:
        assert locked.wait(10)
        worker_in_thread(listen=False)
        wait_for(lambda: _blocked_on_a_lock("django_tasks_q worker"), message="the worker to wait")
    finally:
        go.set()
        holder.join(timeout=30)
    assert workflow.get(timeout=30) == 12
    assert "the queue statement was rolled back (deadlock detected" in caplog.text
    assert executions_of_add() == 2


def executions_of_add() -> int:
    return Task.objects.filter(name=tasks.add.name, status="SUCCESSFUL").count()
