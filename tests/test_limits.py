"""Concurrency and rate limits across every worker (docs/flow-control.md).

Limits are counted from the database: a claimed task is RUNNING there from its claim to its
outcome, so the tests measure the same thing, from each task's row (the interval its attempt
held a slot) and by sampling the table while the workers run.
"""

import signal
import threading
from datetime import datetime, timedelta

import pytest
from django.core.management import call_command
from django.db import connection, transaction
from django.test import override_settings
from django.utils import timezone

from django_tasks_q import InvalidTask, background_task, pause, resume
from django_tasks_q.canvas import chain
from django_tasks_q.exceptions import LimitError
from django_tasks_q.limits import parse_rate
from django_tasks_q.models import Task
from tests.conftest import run_burst_worker, wait_for
from tests.testapp import tasks
from tests.testapp.models import Execution

pytestmark = pytest.mark.django_db(transaction=True)

ACME = f"task:{tasks.one_per_customer.name}:acme"


def most_at_once(rows) -> int:
    """The most attempts that held a slot at the same instant: a sweep over each row's
    [last_attempted_at, finished_at] (database times)."""
    events = []
    for row in rows:
        events.append((row.last_attempted_at, 1))
        events.append((row.finished_at, -1))
    running = most = 0
    for _, change in sorted(events, key=lambda event: (event[0], event[1])):
        running += change
        most = max(most, running)
    return most


class RunningSampler:
    """Counts, every few milliseconds, the RUNNING tasks holding each limit key, from another
    connection: the most seen per key."""

    def __init__(self, keys: list[str]) -> None:
        self.keys = keys
        self.most = dict.fromkeys(keys, 0)
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> "RunningSampler":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _run(self) -> None:
        try:
            with connection.cursor() as cursor:
                while not self._stop.is_set():
                    cursor.execute(
                        "SELECT key, count(*) FROM django_tasks_q_task, "
                        "jsonb_object_keys(concurrency_limits) AS key "
                        "WHERE status = 'RUNNING' AND key = ANY(%s) GROUP BY key",
                        [self.keys],
                    )
                    for key, count in cursor.fetchall():
                        self.most[key] = max(self.most[key], count)
                    self.samples += 1
                    self._stop.wait(0.005)
        finally:
            connection.close()


def stop(*workers) -> None:
    for worker in workers:
        worker.terminate()
    for worker in workers:
        assert worker.wait() == 0, worker.log()


@pytest.mark.slow
def test_three_workers_never_run_more_than_the_task_concurrency(start_worker):
    key = f"task:{tasks.two_at_a_time.name}"
    handles = tasks.two_at_a_time.enqueue_many([(f"c{i}", 0.05) for i in range(60)])
    with RunningSampler([key]) as sampler:
        workers = [start_worker() for _ in range(3)]  # runtaskworker with no flags
        wait_for(lambda: Execution.objects.count() == 60, timeout=120, message="every task")
    stop(*workers)
    rows = list(Task.objects.filter(pk__in=[h.id for h in handles]))
    assert {row.status for row in rows} == {"SUCCESSFUL"}
    assert {row.attempts for row in rows} == {1}  # being held back uses no attempt
    assert most_at_once(rows) == 2  # the limit, reached, never passed
    assert sampler.samples > 50 and sampler.most[key] == 2


@pytest.mark.slow
def test_a_limit_per_key_runs_one_per_customer_and_customers_side_by_side(start_worker):
    handles = [
        tasks.one_per_customer.delay(customer, f"{customer}-{n}", seconds=0.03)
        for n in range(8)
        for customer in ("acme", "globex", "initech", "umbrella")
    ]
    keys = [f"task:{tasks.one_per_customer.name}:{c}" for c in ("acme", "globex", "initech")]
    with RunningSampler(keys) as sampler:
        workers = [start_worker() for _ in range(2)]
        wait_for(lambda: Execution.objects.count() == 32, timeout=120, message="every task")
    stop(*workers)
    rows = list(Task.objects.filter(pk__in=[h.id for h in handles]))
    for customer in ("acme", "globex", "initech", "umbrella"):
        mine = [row for row in rows if row.args[0] == customer]
        assert most_at_once(mine) == 1, customer
    assert most_at_once(rows) > 1  # other customers were not held back
    assert set(sampler.most.values()) == {1}


@pytest.mark.slow
def test_a_worker_killed_mid_task_frees_its_slot_through_the_recovery(start_worker):
    # The default 60 s lease: the restarted worker recovers its predecessor's task at once.
    first_handle = tasks.hangs_once_per_customer.delay("acme", "hang-1")
    doomed = start_worker("--worker-id", "limits-1")
    wait_for(lambda: Execution.objects.filter(key="hang-1").exists(), message="the hang")
    second_handle = tasks.hangs_once_per_customer.delay("acme", "hang-2")
    # Held back by the limit while the first hangs: WAITING, no attempt used.
    wait_for(lambda: Task.objects.get(pk=second_handle.id).status == "WAITING",
             message="the second task held back")  # fmt: skip
    doomed.process.send_signal(signal.SIGKILL)
    doomed.process.wait(timeout=10)
    assert Task.objects.get(pk=second_handle.id).attempts == 0

    survivor = start_worker("--worker-id", "limits-1")
    first_handle.wait(timeout=30)
    second_handle.wait(timeout=30)
    stop(survivor)
    rows = list(Task.objects.filter(pk__in=[first_handle.id, second_handle.id]))
    assert [row.status for row in rows] == ["SUCCESSFUL", "SUCCESSFUL"]
    # The second started only once the first's lost attempt had been recorded.
    first, second = sorted(rows, key=lambda row: row.id)
    lost_at = datetime.fromisoformat(first.errors[0]["at"])
    assert second.started_at >= lost_at
    assert second.attempts == 1
    assert Execution.objects.filter(key="hang-1").count() == 2


def test_tasks_held_back_keep_their_order_and_use_no_attempt():
    handles = [tasks.one_per_customer.delay("acme", f"o{i}") for i in range(5)]
    run_burst_worker(concurrency=4)
    assert list(Execution.objects.order_by("id").values_list("key", flat=True)) == [
        f"o{i}" for i in range(5)
    ]
    assert {Task.objects.get(pk=h.id).attempts for h in handles} == {1}


def test_a_queue_limit_from_settings_applies_to_every_task_of_the_queue():
    with override_settings(TASKS_Q={"QUEUE_LIMITS": {"mail": {"concurrency": 1}}}):
        handles = [
            tasks.sleep_then_record.using(queue_name="mail").delay(f"m{i}", 0.02) for i in range(4)
        ] + [tasks.record.using(queue_name="mail").delay("r")]
        free = tasks.sleep_then_record.delay("free", 0.0)
    assert Task.objects.get(pk=handles[0].id).concurrency_limits == {"queue:mail": 1}
    assert Task.objects.get(pk=free.id).concurrency_limits is None
    run_burst_worker(concurrency=4)
    rows = list(Task.objects.filter(pk__in=[h.id for h in handles]))
    assert {row.status for row in rows} == {"SUCCESSFUL"}
    assert most_at_once(rows) == 1


def test_enqueue_many_and_a_function_key_give_each_task_its_own_key():
    name = tasks.one_per_shop.name
    handles = tasks.one_per_shop.enqueue_many(
        [({"shop": "a"}, "1"), ({"shop": "b"}, "2"), ({"shop": "a"}, "3")]
    )
    assert [Task.objects.get(pk=h.id).concurrency_limits for h in handles] == [
        {f"task:{name}:a": 1}, {f"task:{name}:b": 1}, {f"task:{name}:a": 1},
    ]  # fmt: skip
    run_burst_worker(concurrency=4)
    assert Execution.objects.count() == 3


def test_a_key_function_that_fails_is_a_clear_error_and_nothing_is_enqueued():
    with pytest.raises(LimitError, match=r"limit_by raised KeyError: 'shop' \(nothing was"):
        tasks.one_per_shop.delay({"name": "no shop"}, "x")
    with pytest.raises(LimitError, match="a key must be a string, an int or a UUID"):
        tasks.one_per_shop.delay({"shop": ["a", "list"]}, "x")
    with pytest.raises(LimitError, match="gives no value for 'customer_id'"):
        tasks.one_per_customer.delay(key="x")
    with transaction.atomic():
        tasks.record.delay("kept")
        with pytest.raises(LimitError):
            tasks.one_per_shop.enqueue_many([({"shop": "a"}, "1"), ({}, "2")])
    assert list(Task.objects.values_list("name", flat=True)) == [tasks.record.name]


def test_a_workflow_step_is_limited_by_what_it_is_given_not_by_what_it_receives():
    handle = chain(tasks.add.s(1, 2), tasks.one_per_customer.si("acme", "chained")).apply_async()
    step = Task.objects.get(pk=handle.steps[1].id)
    assert step.concurrency_limits == {f"task:{tasks.one_per_customer.name}:acme": 1}
    with pytest.raises(InvalidTask, match="cannot be limited by it"):
        chain(tasks.add.s(1, 2), tasks.first_is_the_customer.s("note")).apply_async()


def test_a_task_let_go_while_its_queue_is_paused_waits_for_the_resume():
    first = tasks.one_per_customer.using(queue_name="mail").delay("acme", "p1")
    second = tasks.one_per_customer.using(queue_name="mail").delay("acme", "p2")
    # The first is claimed, the second held back by the limit; then the queue is paused.
    Task.objects.filter(pk=first.id).update(status="RUNNING", attempts=1, worker_id="w")
    run_burst_worker()
    held = Task.objects.get(pk=second.id)
    assert (held.status, held.held_by) in {
        ("WAITING", f"limit:task:{tasks.one_per_customer.name}:acme"),
        ("READY", None),
    }
    pause("mail")
    Task.objects.filter(pk=first.id).update(status="SUCCESSFUL")  # its slot is free
    assert Task.objects.get(pk=second.id).held_by == "queue:mail"
    resume("mail")
    run_burst_worker()
    assert Task.objects.get(pk=second.id).status == "SUCCESSFUL"


def test_a_rate_limited_task_starts_at_most_at_its_rate(worker_in_thread):
    handles = tasks.ten_per_second.enqueue_many([(f"r{i}",) for i in range(12)])
    worker_in_thread(concurrency=4)
    wait_for(lambda: Execution.objects.count() == 12, message="every task")
    starts = sorted(Task.objects.get(pk=h.id).last_attempted_at for h in handles)
    # One start every 0.1 s is reserved in the database; a start may come later than its
    # reservation (its worker looked late), never sooner.
    for n, start in enumerate(starts):
        assert (start - starts[0]).total_seconds() >= n * 0.1 - 0.001, (n, starts)
    rows = Task.objects.filter(pk__in=[h.id for h in handles])
    assert {(row.status, row.attempts) for row in rows} == {("SUCCESSFUL", 1)}


@pytest.mark.slow
def test_two_workers_keep_a_rate_limit_within_ten_percent_over_twenty_seconds(start_worker):
    tasks.ten_per_second.enqueue_many([(f"m{i}",) for i in range(300)])
    workers = [start_worker() for _ in range(2)]
    wait_for(lambda: Task.objects.filter(status="SUCCESSFUL").exists(), message="a first start")
    first = Task.objects.exclude(last_attempted_at=None).order_by("last_attempted_at").first()
    window_end = first.last_attempted_at + timedelta(seconds=20)
    wait_for(lambda: Task.objects.filter(last_attempted_at__gt=window_end).exists(),
             timeout=60, message="the window to pass")  # fmt: skip
    stop(*workers)
    started = Task.objects.filter(
        last_attempted_at__gte=first.last_attempted_at, last_attempted_at__lt=window_end
    ).count()
    assert 180 <= started <= 220  # 10/s over 20 s, within ±10 %


def test_limits_are_checked_when_the_task_is_declared():
    def f(customer_id):
        return customer_id

    cases = {
        "concurrency must be a whole number >= 1": {"concurrency": 0},
        "rate_limit must be like '10/s'": {"rate_limit": "ten a second"},
        "rate_limit must allow at least one start": {"rate_limit": "0/m"},
        "limit_by='customer' is not a parameter": {"concurrency": 1, "limit_by": "customer"},
        "there is no limit": {"limit_by": "customer_id"},
        "limit_by must be the name of a parameter or a function": {
            "concurrency": 1, "limit_by": 3,
        },
    }  # fmt: skip
    for message, options in cases.items():
        with pytest.raises(InvalidTask, match=message):
            background_task(**options)(f)
    assert parse_rate("100/m", "x") == pytest.approx(0.6)
    assert parse_rate("1000/h", "x") == pytest.approx(3.6)
    assert parse_rate(20, "x") == pytest.approx(0.05)


def test_bad_queue_limits_fail_the_system_checks():
    from django.core.management.base import SystemCheckError

    bad = {"mail": {"concurrency": -1}, "sms": {"rate_limit": "fast"}, "push": {"limt": 1}}
    with (
        override_settings(TASKS_Q={"QUEUE_LIMITS": bad}),
        pytest.raises(SystemCheckError) as caught,
    ):
        call_command("check")
    message = str(caught.value)
    assert message.count("django_tasks_q.E020") == 3
    assert "QUEUE_LIMITS']['mail']: concurrency must be a whole number" in message
    assert "unknown keys ['limt']" in message


def test_a_deleted_running_task_frees_its_slot():
    first = tasks.one_per_customer.delay("acme", "d1")
    second = tasks.one_per_customer.delay("acme", "d2")
    Task.objects.filter(pk=first.id).update(status="RUNNING", attempts=1, worker_id="w")
    Task.objects.filter(pk=second.id).update(status="WAITING", held_by=f"limit:{ACME}")
    Task.objects.filter(pk=first.id).delete()
    assert Task.objects.get(pk=second.id).status == "READY"


def test_the_dashboard_and_the_gauges_show_limits_running_and_held(admin_client):
    dashboard = "/admin/django_tasks_q/dashboard/"
    assert "tasks-q-limits" not in admin_client.get(dashboard).content.decode()
    running = tasks.one_per_customer.delay("acme", "a")
    held = [tasks.one_per_customer.delay("acme", k) for k in ("b", "c")]
    Task.objects.filter(pk=running.id).update(status="RUNNING", attempts=1, worker_id="w")
    Task.objects.filter(pk__in=[h.id for h in held]).update(
        status="WAITING", held_by=f"limit:{ACME}"
    )
    throttled = tasks.ten_per_second.delay("t")
    Task.objects.filter(pk=throttled.id).update(
        run_after=timezone.now() + timedelta(seconds=30),
        throttled_until=timezone.now() + timedelta(seconds=30),
    )
    page = admin_client.get(dashboard).content.decode()
    assert 'id="tasks-q-limits"' in page and ACME in page and "1 running" in page
    assert 'data-cell="limit-running:1">1</td>' in page
    assert 'data-cell="limit-held:1">2</td>' in page
    assert f"task:{tasks.ten_per_second.name}" in page and "1 start every" in page
    # The task's page says what holds it back.
    detail = admin_client.get(f"/admin/django_tasks_q/task/{held[0].id}/change/").content.decode()
    assert "Flow control" in detail and f"limit:{ACME}" in detail

    from tests.test_metrics import scrape_view

    found = scrape_view()
    customer = (("queue", "default"), ("task", tasks.one_per_customer.name))
    rate = (("queue", "default"), ("task", tasks.ten_per_second.name))
    assert found["django_tasks_q_limited_running_tasks", customer] == 1
    assert found["django_tasks_q_limited_held_tasks", customer] == 2
    assert found["django_tasks_q_throttled_tasks", rate] == 1
