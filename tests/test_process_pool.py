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
    # The task ended its own process: a failure (retry policy applies), not a lost attempt.
    assert {e.type for e in handle.errors} == {"django_tasks_q.exceptions.ProcessDied"}
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


def test_a_child_that_grew_past_the_memory_limit_is_replaced_after_its_task(start_worker):
    worker = start_worker(
        "--pool", "processes", "--concurrency", "1", "--max-memory-per-child", "250"
    )
    before = tasks.record.delay("before")
    assert before.wait(timeout=30).status == "SUCCESSFUL"
    grown = tasks.grows.delay("grown", 300)
    assert grown.wait(timeout=30).status == "SUCCESSFUL"
    # Nothing else is queued: the child must not idle on with its memory.
    after = tasks.record.delay("after")
    assert after.wait(timeout=30).status == "SUCCESSFUL"
    pids = dict(Execution.objects.values_list("key", "worker"))
    assert pids["before"] == pids["grown"] != pids["after"]
    worker.terminate()
    assert worker.wait() == 0


def test_a_large_result_crosses_the_pipe_whole_between_small_ones(start_worker):
    small = [tasks.add.delay(n, n) for n in range(5)]
    large = tasks.returns_large.delay("big:", 3_000_000)
    more = [tasks.add.delay(n, 1) for n in range(5)]
    worker = start_worker("--pool", "processes", "--concurrency", "2")
    result = large.wait(timeout=60).result
    assert (len(result), result[:4], set(result[4:])) == (3_000_004, "big:", {"x"})
    assert [h.wait(timeout=30).result for h in small] == [0, 2, 4, 6, 8]
    assert [h.wait(timeout=30).result for h in more] == [1, 2, 3, 4, 5]
    worker.terminate()
    assert worker.wait() == 0


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
    assert stubborn.cancel(terminate=True) == "stop_requested"
    stubborn.wait(timeout=20)
    assert time.monotonic() - asked < 15
    assert stubborn.status == "CANCELLED"
    assert "process running it was killed" in stubborn.error.message
    assert tasks.add.delay(3, 4).wait(timeout=30).result == 7  # on a fresh child
    worker.terminate()
    assert worker.wait() == 0


def test_threads_per_child_run_tasks_side_by_side_in_one_process(start_worker):
    handles = [tasks.waits_for_siblings.delay("side", 3) for _ in range(3)]
    worker = start_worker("--concurrency", "1", "--threads", "3")
    for handle in handles:
        assert handle.wait(timeout=30).status == "SUCCESSFUL", handle.error
    assert Execution.objects.filter(key="side").values("worker").distinct().count() == 1
    worker.terminate()
    assert worker.wait() == 0


def test_the_soft_time_limit_reaches_tasks_on_every_thread_of_a_child(start_worker):
    handles = [tasks.cleans_up_at_the_soft_limit_in_steps.delay(f"soft-{i}") for i in range(2)]
    worker = start_worker("--concurrency", "1", "--threads", "2")
    assert [h.wait(timeout=30).result for h in handles] == ["cleaned up", "cleaned up"]
    assert (
        Execution.objects.filter(key__startswith="soft-").values("worker").distinct().count() == 1
    )
    worker.terminate()
    assert worker.wait() == 0


def test_a_time_limit_kill_loses_the_other_tasks_of_that_child_and_they_run_again(start_worker):
    sibling = tasks.hangs_once.delay("sibling")  # default options: no retries of its own
    worker = start_worker("--concurrency", "1", "--threads", "2")
    wait_for(lambda: Execution.objects.filter(key="sibling").exists(), message="the sibling")
    overrun = tasks.overruns_its_time_limit.delay("overrun")
    overrun.wait(timeout=30)
    sibling.wait(timeout=30)
    assert overrun.error.type == "django_tasks_q.exceptions.TimeLimitExceeded"
    assert (sibling.status, sibling.result, sibling.attempts) == ("SUCCESSFUL", 2, 2)
    [lost] = sibling.errors
    assert lost.type == "django_tasks_q.exceptions.WorkerLost"
    assert f"task {overrun.task.name} #{overrun.id} in it had to be stopped" in lost.message
    assert tasks.add.delay(1, 2).wait(timeout=30).result == 3
    worker.terminate()
    assert worker.wait() == 0


def test_children_of_a_killed_worker_exit_instead_of_running_on(start_worker):
    import os
    import signal

    tasks.runs_long.delay("orphan", 60)
    worker = start_worker("--concurrency", "1")
    execution = wait_for(lambda: Execution.objects.filter(key="orphan").first(),
                         message="the task to start")  # fmt: skip
    child_pid = int(execution.worker)
    assert child_pid != worker.pid
    worker.process.send_signal(signal.SIGKILL)
    worker.process.wait(timeout=10)

    def child_gone():
        try:
            os.kill(child_pid, 0)
        except ProcessLookupError:
            return True
        return False

    wait_for(child_gone, timeout=10, message="the orphaned child to exit")


def test_a_worker_whose_children_cannot_start_exits_with_an_error(start_worker):
    handle = tasks.add.delay(1, 1)
    worker = start_worker("--concurrency", "1", env={"TASKS_Q_TEST_BREAK_CHILDREN": "true"})
    assert worker.wait(timeout=60) == 1
    log = worker.log()
    assert "settings refuse to load in a child process" in log
    assert "3 child processes in a row died while starting" in log
    assert Task.objects.get(pk=handle.id).status == "READY"  # never claimed


def test_the_thread_pool_refuses_threads_per_child(start_worker):
    worker = start_worker("--pool", "threads", "--threads", "2")
    assert worker.wait() != 0
    assert "threads per child is for the process pool" in worker.log()


def test_outcomes_are_recorded_while_a_long_task_runs_after_short_ones(start_worker):
    # Short tasks first, so the pool queues work in its one child; the long one is queued
    # behind them. The outcomes before it must not wait for it to end.
    short = [tasks.add.delay(n, n) for n in range(60)]
    long = tasks.runs_long.delay("long", 60)
    worker = start_worker("--concurrency", "1")
    wait_for(lambda: Execution.objects.filter(key="long").exists(), message="the long task")
    wait_for(
        lambda: (
            Task.objects.filter(pk__in=[h.id for h in short], status="SUCCESSFUL").count()
            == len(short)
        ),
        timeout=10,
        message="the short tasks' outcomes, while the long task runs",
    )
    assert Task.objects.get(pk=long.id).status == "RUNNING"
    assert long.cancel(terminate=True) == "stop_requested"
    assert long.wait(timeout=30).status == "CANCELLED"
    worker.terminate()
    assert worker.wait() == 0


def test_a_task_that_crashes_its_child_leaves_the_tasks_around_it_unharmed(start_worker):
    # Short tasks before and after it in one child: the child holds some of them queued, and
    # the one just before it has ended when the crash comes.
    before = [tasks.add.delay(n, 1) for n in range(40)]
    crash = tasks.ends_its_process_at_once.delay()
    after = [tasks.add.delay(n, 2) for n in range(40)]
    worker = start_worker("--concurrency", "1")
    assert (crash.wait(timeout=60).status, crash.attempts) == ("FAILED", 1)
    for handle in before + after:
        handle.wait(timeout=30)
        assert (handle.status, handle.errors, handle.attempts) == ("SUCCESSFUL", [], 1)
    assert {e.type for e in crash.errors} == {"django_tasks_q.exceptions.ProcessDied"}
    worker.terminate()
    assert worker.wait() == 0
