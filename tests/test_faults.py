"""The fault suite: what happens to tasks when workers, processes and the database fail.

Real ``runtaskworker`` processes against the test database, default task options unless a
fault needs one, polls with deadlines. docs/reliability.md names each test next to the
guarantee it proves.
"""

import os
import signal
import time

import pytest

from django_tasks_q.models import Task, Worker
from tests.conftest import wait_for
from tests.testapp import tasks
from tests.testapp.models import Execution

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]

# Short leases so that recovery by lease expiry is seen within seconds.
FAST = {"TASKS_Q_LEASE_SECONDS": "2", "TASKS_Q_HEARTBEAT_INTERVAL": "0.3"}
WORKER_LOST = "django_tasks_q.exceptions.WorkerLost"


def executions(key: str) -> int:
    return Execution.objects.filter(key=key).count()


def stop(*workers) -> None:
    for worker in workers:
        worker.terminate()
    for worker in workers:
        assert worker.wait() == 0, worker.log()


def test_kill_9_mid_task_with_default_options_runs_it_again_once(start_worker):
    handle = tasks.hangs_once.delay("k9")
    doomed = start_worker(env=FAST)
    wait_for(lambda: executions("k9") == 1, message="the first attempt")
    doomed.process.send_signal(signal.SIGKILL)
    doomed.process.wait(timeout=10)

    survivor = start_worker(env=FAST)
    handle.wait(timeout=30)
    assert (handle.status, handle.result, handle.attempts) == ("SUCCESSFUL", 2, 2)
    assert executions("k9") == 2
    [lost] = handle.errors
    assert (lost.type, lost.attempt) == (WORKER_LOST, 1)
    assert "stopped heartbeating" in lost.message
    row = Task.objects.get(pk=handle.id)
    assert (row.lost_attempts, row.max_attempts) == (1, 2)  # its own retry budget untouched
    stop(survivor)


def test_a_worker_restarted_under_its_name_recovers_its_predecessors_tasks_at_once(
    start_worker,
):
    # The default 60 s lease: recovery that waited for it would time out below.
    handle = tasks.hangs_once.delay("restart")
    first = start_worker("--worker-id", "web-1")
    wait_for(lambda: executions("restart") == 1, message="the first attempt")
    first.process.send_signal(signal.SIGKILL)
    first.process.wait(timeout=10)

    began = time.monotonic()
    second = start_worker("--worker-id", "web-1")
    handle.wait(timeout=20)
    assert time.monotonic() - began < 20
    assert (handle.status, handle.attempts) == ("SUCCESSFUL", 2)
    [lost] = handle.errors
    assert lost.type == WORKER_LOST and "replaced by" in lost.message
    workers = list(Worker.objects.filter(name="web-1").order_by("started_at"))
    assert len(workers) == 2 and workers[0].id != workers[1].id
    assert [w.state for w in workers] == ["STOPPED", "RUNNING"]
    assert handle.worker_ids == [workers[0].id, workers[1].id]
    stop(second)


def test_a_frozen_worker_that_wakes_up_late_changes_nothing(start_worker):
    handle = tasks.sleeps_and_says_who.delay("frozen", 1.5)
    frozen = start_worker("--concurrency", "1", env=FAST)
    wait_for(lambda: executions("frozen") == 1, message="the first attempt")
    os.kill(frozen.pid, signal.SIGSTOP)  # its heartbeat stops; its child finishes the task
    try:
        rescuer = start_worker("--concurrency", "1", env=FAST)
        handle.wait(timeout=30)
    finally:
        os.kill(frozen.pid, signal.SIGCONT)
    assert (handle.status, handle.attempts) == ("SUCCESSFUL", 2)
    assert handle.result == rescuer.pid  # the rescuer's run, not the frozen worker's
    wait_for(lambda: "no longer held tasks" in frozen.log(), message="the late outcome")
    handle.refresh()
    assert (handle.status, handle.result, handle.attempts) == ("SUCCESSFUL", rescuer.pid, 2)
    stop(frozen, rescuer)


def test_a_task_that_kills_every_worker_it_lands_on_stops_after_the_lost_cap(start_worker):
    handle = tasks.kills_its_worker.delay("poison")

    def failed() -> bool:
        return Task.objects.filter(pk=handle.id, status="FAILED").exists()

    for _ in range(6):
        worker = start_worker("--worker-id", "poison-victim", env=FAST)
        wait_for(lambda w=worker: w.process.poll() is not None or failed(), timeout=30,
                 message="the worker to be killed, or the task to fail")  # fmt: skip
        if worker.process.poll() is None:  # it recovered the last lost attempt: FAILED
            stop(worker)
            break
        assert worker.process.returncode == -signal.SIGKILL
    handle.refresh()
    assert handle.status == "FAILED"
    assert executions("poison") == 3  # TASKS_Q["MAX_LOST_ATTEMPTS"]
    assert [e.type for e in handle.errors] == [WORKER_LOST] * 3
    assert Task.objects.get(pk=handle.id).lost_attempts == 3


def test_a_child_killed_under_its_task_is_a_lost_attempt_and_runs_again(start_worker):
    handle = tasks.kills_its_own_process.delay("sigkill-child")
    other = tasks.add.delay(1, 2)
    worker = start_worker("--concurrency", "2")
    handle.wait(timeout=30)
    assert (handle.status, handle.result, handle.attempts) == ("SUCCESSFUL", 2, 2)
    [lost] = handle.errors
    assert lost.type == WORKER_LOST and "killed by SIGKILL" in lost.message
    assert other.wait(timeout=10).result == 3
    stop(worker)


def test_a_task_whose_database_connection_dies_runs_again_with_default_options(start_worker):
    handle = tasks.loses_its_database_once.delay("db-gone")
    after = tasks.add.delay(2, 2)
    worker = start_worker("--concurrency", "1")
    handle.wait(timeout=30)
    assert (handle.status, handle.result, handle.attempts) == ("SUCCESSFUL", 2, 2)
    [lost] = handle.errors
    assert lost.type == WORKER_LOST and "database connection was lost" in lost.message
    assert "OperationalError" in lost.message
    # The same child ran the next task on a fresh connection.
    assert after.wait(timeout=10).result == 4
    stop(worker)


@pytest.mark.parametrize("pool", ["processes", "threads"])
def test_unstorable_outcomes_fail_their_own_task_and_nothing_else(start_worker, pool):
    nasty = [
        tasks.returns_unstorable_text.delay("nul"),
        tasks.returns_unstorable_text.delay("surrogate"),
        tasks.raises.delay("nul"),
        tasks.raises.delay("unprintable"),
        tasks.returns_self_referencing_list.delay(),
    ]
    fine = [tasks.add.delay(i, i) for i in range(20)]
    worker = start_worker("--pool", pool, "--concurrency", "2")
    for handle in fine:
        assert handle.wait(timeout=30).result == 2 * int(handle.args[0])
    for handle in nasty:
        handle.wait(timeout=30)
        assert handle.status == "FAILED", handle.errors
        assert handle.attempts == 1
    nul, surrogate, raised_nul, unprintable, recursive = (h.error for h in nasty)
    assert "NUL" in nul.message and "could not be stored" in nul.message
    assert "surrogate" in surrogate.message and "could not be stored" in surrogate.message
    assert raised_nul.type == "builtins.ValueError"
    assert "\x00" not in raised_nul.message and "\ufffd" in raised_nul.message
    assert unprintable.type == "tests.testapp.tasks.UnprintableError"
    assert "unprintable" in unprintable.message.lower()
    assert "could not be stored" in recursive.message
    assert worker.process.poll() is None  # still serving
    assert tasks.add.delay(5, 5).wait(timeout=10).result == 10
    stop(worker)


def test_old_workers_give_back_tasks_they_do_not_know_until_a_new_one_runs_them(start_worker):
    handle = tasks.added_in_new_release.delay("skew")
    old = start_worker("--concurrency", "1", env={"TESTAPP_OLD_RELEASE": "1"})
    wait_for(lambda: "does not know task" in old.log(), message="the old worker to see it")
    wait_for(lambda: old.log().count("does not know task") == 1 and Task.objects.filter(
        pk=handle.id, status="READY").exists(), message="the task to be given back")  # fmt: skip
    row = Task.objects.get(pk=handle.id)
    assert (row.attempts, row.errors) == (0, [])  # no attempt counted
    new = start_worker("--concurrency", "1")
    handle.wait(timeout=30)
    assert (handle.status, handle.result, handle.attempts) == ("SUCCESSFUL", "skew", 1)
    assert executions("skew") == 1
    assert old.log().count("does not know task") == 1  # warned once per name
    stop(old, new)


def test_a_task_no_worker_knows_fails_after_the_grace_period(start_worker):
    handle = tasks.added_in_new_release.delay("never")
    old = start_worker(env={"TESTAPP_OLD_RELEASE": "1", "TASKS_Q_UNKNOWN_TASK_GRACE": "1"})
    handle.wait(timeout=30)
    assert handle.status == "FAILED"
    assert handle.error.type == "django_tasks_q.exceptions.UnknownTaskError"
    assert "UNKNOWN_TASK_GRACE" in handle.error.message
    assert executions("never") == 0
    stop(old)


def test_a_prefetched_task_cancelled_before_it_starts_never_starts(start_worker):
    blocker = tasks.runs_long.apply_async(args=("blocker", 2), priority=10)
    target = tasks.record.apply_async(args=("target",), priority=0)
    worker = start_worker("--concurrency", "1", "--prefetch", "5")
    wait_for(lambda: executions("blocker") == 1, message="the blocker to start")
    wait_for(lambda: Task.objects.get(pk=target.id).status == "RUNNING",
             message="the target to be prefetched")  # fmt: skip
    assert target.cancel() == "stop_requested"
    target.wait(timeout=30)
    assert target.status == "CANCELLED"
    assert target.error.type == "django_tasks_q.exceptions.TaskCancelled"
    assert "before it started" in target.error.message
    assert blocker.wait(timeout=30).status == "SUCCESSFUL"
    assert executions("target") == 0
    stop(worker)


def test_a_task_that_raises_after_its_cancellation_ends_cancelled_without_retry(start_worker):
    handle = tasks.raises_once_cancelled.delay("cancel-raise")  # max_retries=3
    worker = start_worker("--concurrency", "1")
    wait_for(lambda: executions("cancel-raise") == 1, message="the task to start")
    assert handle.cancel() == "stop_requested"
    handle.wait(timeout=30)
    assert (handle.status, handle.attempts) == ("CANCELLED", 1)
    assert executions("cancel-raise") == 1
    stop(worker)


def test_after_the_grace_period_stopped_tasks_are_recovered_at_once(start_worker):
    # The default 60 s lease: recovery that waited for it would time out below.
    handle = tasks.hangs_once.delay("grace-now")
    worker = start_worker("--concurrency", "1", "--grace-period", "1")
    wait_for(lambda: executions("grace-now") == 1, message="the first attempt")
    worker.terminate()
    assert worker.wait(timeout=20) == 1
    assert "stopping 1 running tasks" in worker.log()
    row = Task.objects.get(pk=handle.id)
    assert (row.status, row.lost_attempts) == ("READY", 1)
    assert "grace period" in row.errors[-1]["message"]
    survivor = start_worker("--concurrency", "1")
    handle.wait(timeout=20)
    assert (handle.status, handle.attempts) == ("SUCCESSFUL", 2)
    stop(survivor)
