"""runtaskworker as a real process: wake-up, polling, signals, concurrency."""

import re
import time

import pytest
from django.db.models import Count

from django_tasks_q.models import Task, Worker
from tests.conftest import wait_for
from tests.testapp import tasks
from tests.testapp.models import Execution

pytestmark = pytest.mark.django_db(transaction=True)


def worker_ready(worker):
    return wait_for(lambda: "starting" in worker.log(), message="the worker to start")


def test_handle_wait_returns_once_a_worker_ran_the_task(start_worker):
    worker = start_worker("--concurrency", "2")
    handle = tasks.add.delay(40, 2)
    assert handle.wait(timeout=20).result == 42
    assert handle.status == "SUCCESSFUL"
    worker.terminate()
    assert worker.wait() == 0


def test_idle_worker_is_woken_by_notify_not_by_polling(start_worker):
    # A 60 s poll interval: only LISTEN/NOTIFY can start the task within the deadline.
    worker = start_worker("--poll-interval", "60")
    worker_ready(worker)
    wait_for(lambda: "LISTEN" in _pg_listeners(), message="the worker to LISTEN")
    handle = tasks.add.delay(1, 1)
    handle.wait(timeout=10)
    row = Task.objects.get(pk=handle.id)
    assert (row.last_attempted_at - row.enqueued_at).total_seconds() < 5
    worker.terminate()
    assert worker.wait() == 0


def test_without_listen_the_worker_polls(start_worker):
    worker = start_worker("--poll-interval", "0.2", env={"TASKS_Q_LISTEN_NOTIFY": "false"})
    worker_ready(worker)
    handle = tasks.add.delay(2, 2)
    assert handle.wait(timeout=15).result == 4
    assert "LISTEN" not in _pg_listeners()
    worker.terminate()
    assert worker.wait() == 0


def test_sigterm_finishes_the_running_task_returns_unstarted_ones_and_exits_0(start_worker):
    slow = tasks.runs_long.delay("slow", 3)
    waiting = [tasks.record.delay(f"after-{i}") for i in range(3)]
    # One slot, room to prefetch the three quick tasks behind the slow one.
    worker = start_worker("--concurrency", "1", "--prefetch", "5")
    wait_for(lambda: Task.objects.filter(status="RUNNING").count() == 4
             and Execution.objects.filter(key="slow").exists(),
             message="the worker to claim all four tasks and start the slow one")  # fmt: skip
    worker.terminate()
    assert worker.wait(timeout=30) == 0

    assert Task.objects.get(pk=slow.id).status == "SUCCESSFUL"
    assert Execution.objects.filter(key="slow").count() == 1
    for handle in waiting:
        row = Task.objects.get(pk=handle.id)
        assert (row.status, row.attempts) == ("READY", 0)
    assert not Execution.objects.filter(key__startswith="after-").exists()
    returned = re.findall(r"returned (\d+) unstarted tasks to the queue", worker.log())
    assert sum(map(int, returned)) == 3

    # They run later, on the next worker.
    second = start_worker("--burst")
    assert second.wait() == 0
    assert Execution.objects.filter(key__startswith="after-").count() == 3


def test_burst_exits_0_once_no_ready_task_is_left(start_worker):
    tasks.add.enqueue_many([(i, i) for i in range(50)])
    tasks.add.apply_async(args=(0, 0), countdown=3600)
    worker = start_worker("--burst", "--concurrency", "3")
    assert worker.wait() == 0
    assert Task.objects.filter(status="SUCCESSFUL").count() == 50
    assert Task.objects.filter(status="READY").count() == 1


def test_queues_option_only_takes_those_queues(start_worker):
    mine = tasks.add.apply_async(args=(1, 1), queue="emails")
    other = tasks.add.apply_async(args=(1, 1), queue="reports")
    worker = start_worker("--queues", "emails,bulk", "--burst")
    assert worker.wait() == 0
    assert Task.objects.get(pk=mine.id).status == "SUCCESSFUL"
    assert Task.objects.get(pk=other.id).status == "READY"


def test_worker_id_option_is_recorded_on_tasks(start_worker):
    handle = tasks.add.delay(1, 1)
    assert start_worker("--burst", "--worker-id", "reports-1").wait() == 0
    worker_id = Task.objects.get(pk=handle.id).worker_id
    assert worker_id.startswith("reports-1-")  # the name, and this process start's own suffix
    assert Worker.objects.get(pk=worker_id).name == "reports-1"


def test_bad_option_values_are_refused(start_worker):
    worker = start_worker("--concurrency", "0")
    assert worker.wait() != 0
    assert "concurrency must be at least 1" in worker.log()


@pytest.mark.slow
def test_four_workers_execute_each_of_10000_tasks_exactly_once(start_worker):
    total = 10_000
    workers = [start_worker("--concurrency", "2", "--poll-interval", "0.2") for _ in range(4)]
    for chunk in range(0, total, 1000):
        tasks.record.enqueue_many([(f"t{i}",) for i in range(chunk, chunk + 1000)])
    wait_for(
        lambda: not Task.objects.filter(status__in=["READY", "RUNNING"]).exists(),
        timeout=120, interval=0.2, message="all tasks to finish",
    )  # fmt: skip
    for worker in workers:
        worker.terminate()
    assert [worker.wait() for worker in workers] == [0, 0, 0, 0]

    assert Task.objects.filter(status="SUCCESSFUL").count() == total
    assert Execution.objects.count() == total
    assert Execution.objects.values("key").distinct().count() == total
    # The work was shared: every worker ran some of it, on each of its two child processes.
    per_worker = Task.objects.values("worker_id").annotate(n=Count("id"))
    assert len(per_worker) == 4, list(per_worker)
    per_process = Execution.objects.values("worker").annotate(n=Count("id"))
    assert len(per_process) == 4 * 2, list(per_process)


def _pg_listeners() -> str:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT string_agg(query, ' ') FROM pg_stat_activity "
            "WHERE datname = current_database() AND query ILIKE 'LISTEN%%'"
        )
        return cursor.fetchone()[0] or ""


def test_latency_helper_is_monotonic():
    # Guards the deadline helper the other tests rely on: it must give up, not hang.
    start = time.monotonic()
    with pytest.raises(pytest.fail.Exception):
        wait_for(lambda: False, timeout=0.1)
    assert time.monotonic() - start < 2


def _terminate_worker_connections() -> int:
    """Every connection to the test database but this one: the worker's queue, listener and
    heartbeat connections, and those its tasks are using."""
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )
        return cursor.fetchone()[0]


def test_worker_survives_losing_its_connections_and_loses_no_task(start_worker):
    """Default task options: an attempt whose connection was cut is lost, not failed."""
    total = 300
    tasks.sleep_then_record.enqueue_many([(f"k{i}", 0.005) for i in range(total)])
    worker = start_worker("--concurrency", "2", "--poll-interval", "0.2")
    wait_for(lambda: Execution.objects.count() >= 20, message="the worker to get going")
    # Cut the worker's connections and its tasks', twice, while it works.
    assert _terminate_worker_connections() >= 2
    wait_for(lambda: "lost the database" in worker.log(), message="the worker to notice")
    wait_for(lambda: Execution.objects.count() >= 150, timeout=60, message="the worker to resume")
    assert _terminate_worker_connections() >= 1
    wait_for(
        lambda: not Task.objects.exclude(status="SUCCESSFUL").exists(),
        timeout=60, message="every task to succeed",
    )  # fmt: skip
    worker.terminate()
    assert worker.wait() == 0
    assert Execution.objects.values("key").distinct().count() == total
    # Only attempts in flight when connections were cut (at most one per slot, twice) ran
    # twice: the rest ran once.
    assert Execution.objects.count() - total <= 2 * 2


def test_ctrl_c_stops_an_idle_worker_cleanly(start_worker):
    import signal

    worker = start_worker()
    worker_ready(worker)
    worker.process.send_signal(signal.SIGINT)
    assert worker.wait() == 0
    assert "got SIGINT" in worker.log()


def test_batch_size_one_still_runs_everything_in_priority_order(start_worker):
    for i in range(5):
        tasks.record.apply_async(args=(f"p{i}",), priority=i)
    assert (
        start_worker("--burst", "--concurrency", "1", "--batch-size", "1", "--prefetch", "0").wait()
        == 0
    )
    assert list(Execution.objects.order_by("id").values_list("key", flat=True)) == [
        f"p{i}" for i in (4, 3, 2, 1, 0)
    ]


def test_a_worker_on_an_unmigrated_database_says_to_migrate(start_worker):
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("ALTER TABLE django_tasks_q_worker RENAME TO django_tasks_q_worker_hidden")
    try:
        worker = start_worker("--burst")
        assert worker.wait() != 0
    finally:
        with connection.cursor() as cursor:
            cursor.execute(
                "ALTER TABLE django_tasks_q_worker_hidden RENAME TO django_tasks_q_worker"
            )
    assert "Run `python manage.py migrate`" in worker.log()
    assert "Traceback" not in worker.log()
