"""Prometheus metrics: queue gauges from the database, counters of enqueues and of a worker."""

import socket
import urllib.request
from datetime import timedelta

import pytest
from django.core.exceptions import ImproperlyConfigured
from django.test import RequestFactory
from django.utils import timezone
from prometheus_client.parser import text_string_to_metric_families

from django_tasks_q import metrics
from django_tasks_q.models import Task
from tests.conftest import wait_for
from tests.testapp import tasks


def samples(text: str) -> dict[tuple[str, tuple], float]:
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[sample.name, tuple(sorted(sample.labels.items()))] = sample.value
    return found


def scrape_view() -> dict[tuple[str, tuple], float]:
    response = metrics.metrics_view(RequestFactory().get("/metrics"))
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/plain")
    return samples(response.content.decode())


@pytest.mark.django_db
def test_the_view_reports_the_queue_from_the_database():
    now = timezone.now()
    Task.objects.create(name="a", queue="mail", run_after=now - timedelta(seconds=90))
    Task.objects.create(name="a", queue="mail", run_after=now)
    Task.objects.create(name="a", queue="mail", run_after=now + timedelta(hours=1))
    Task.objects.create(name="a", queue="reports", status="RUNNING", attempts=1)
    Task.objects.create(name="a", queue="reports", status="SUCCESSFUL", attempts=1)

    found = scrape_view()
    mail, reports = (("queue", "mail"),), (("queue", "reports"),)
    assert found["django_tasks_q_queue_ready", mail] == 2
    assert found["django_tasks_q_queue_scheduled", mail] == 1
    assert found["django_tasks_q_queue_running", mail] == 0
    assert found["django_tasks_q_queue_running", reports] == 1
    assert found["django_tasks_q_queue_ready", reports] == 0
    assert 90 <= found["django_tasks_q_queue_oldest_ready_age_seconds", mail] < 150
    assert found["django_tasks_q_workers_alive", ()] == 0
    assert not any(name == "django_tasks_q_paused_held_tasks" for name, _ in found)

    from django_tasks_q import pause

    pause("mail")  # holds the two due tasks and the scheduled one
    found = scrape_view()
    assert found["django_tasks_q_paused_held_tasks", (("queue", "mail"), ("task", ""))] == 3
    assert found["django_tasks_q_queue_waiting", mail] == 3
    assert found["django_tasks_q_queue_ready", mail] == 0


@pytest.mark.django_db
def test_a_queue_that_empties_reports_zero_rather_than_vanishing():
    row = Task.objects.create(
        name="a", queue="bursty", run_after=timezone.now() - timedelta(seconds=1)
    )
    bursty = (("queue", "bursty"),)
    assert scrape_view()["django_tasks_q_queue_ready", bursty] == 1
    row.delete()
    found = scrape_view()
    for gauge in ("ready", "scheduled", "running", "waiting", "oldest_ready_age_seconds"):
        assert found[f"django_tasks_q_queue_{gauge}", bursty] == 0
    # A queue the project declares is there before it ever held a task.
    assert found["django_tasks_q_queue_ready", (("queue", "other"),)] == 0
    # So is a task that declares a limit, before one of its tasks ever ran.
    limited = (("queue", "default"), ("task", tasks.two_at_a_time.name))
    assert found["django_tasks_q_limited_running_tasks", limited] == 0


@pytest.mark.django_db
def test_enqueues_are_counted_by_task_and_queue():
    key = ("django_tasks_q_tasks_enqueued_total",
           (("queue", "default"), ("task", tasks.add.name)))  # fmt: skip
    before = scrape_view().get(key, 0)
    for n in range(3):
        tasks.add.delay(n, n)
    assert scrape_view()[key] == before + 3


def test_metrics_without_prometheus_client_say_what_to_install(monkeypatch):
    monkeypatch.setattr(metrics, "prometheus_client", None)
    with pytest.raises(ImproperlyConfigured, match=r'pip install "django-tasks-q\[prometheus\]"'):
        metrics.require_prometheus()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.django_db(transaction=True)
def test_a_worker_serves_counters_of_the_tasks_it_ran(start_worker):
    port = free_port()
    worker = start_worker("--metrics-port", str(port))  # on every interface by default
    tasks.add.delay(1, 2).wait(timeout=30)
    tasks.always_fails.delay().wait(timeout=30)
    tasks.fail_until.delay("m", 2).wait(timeout=30)  # one retry, then success

    def scrape():
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
            return samples(response.read().decode())

    def labels(task):
        return (("queue", "default"), ("task", task.name))

    expected = {
        ("django_tasks_q_tasks_succeeded_total", labels(tasks.add)): 1,
        ("django_tasks_q_tasks_failed_total", labels(tasks.always_fails)): 1,
        ("django_tasks_q_tasks_retried_total", labels(tasks.fail_until)): 1,
        ("django_tasks_q_tasks_succeeded_total", labels(tasks.fail_until)): 1,
        ("django_tasks_q_tasks_started_total", labels(tasks.fail_until)): 2,
        ("django_tasks_q_task_duration_seconds_count", labels(tasks.add)): 1,
        ("django_tasks_q_workers_alive", ()): 1,
    }
    wait_for(lambda: all(scrape().get(k) == v for k, v in expected.items()),
             message="the worker's counters")  # fmt: skip
    worker.terminate()
    assert worker.wait() == 0


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("pool", ["processes", "threads"])
def test_a_claimed_task_counts_as_started_only_when_a_slot_begins_it(start_worker, pool):
    port = free_port()
    started = (
        "django_tasks_q_tasks_started_total",
        (("queue", "default"), ("task", tasks.runs_long.name)),
    )

    def scrape():
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
            return samples(response.read().decode())

    tasks.runs_long.enqueue_many([("slot", 1.2)] * 3)
    worker = start_worker("--concurrency", "1", "--prefetch", "2", "--pool", pool,
                          "--metrics-port", str(port))  # fmt: skip
    # The worker holds more than its one slot runs: the others wait in it, claimed. The
    # first task runs for 1.2 s, so at this moment it is the only one begun.
    wait_for(lambda: Task.objects.filter(status="RUNNING").count() >= 2,
             message="a claim of more than one task")  # fmt: skip
    wait_for(lambda: started in scrape(), message="the counter")
    assert scrape()[started] == 1
    wait_for(lambda: Task.objects.filter(status="SUCCESSFUL").count() == 3, timeout=30,
             message="all three tasks")  # fmt: skip
    wait_for(lambda: scrape().get(started) == 3, message="three tasks started")
    worker.terminate()
    assert worker.wait() == 0


def test_a_worker_refuses_a_metrics_port_in_use(start_worker):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        worker = start_worker("--metrics-port", str(port), "--metrics-address", "127.0.0.1")
        assert worker.wait() != 0
    assert f"Cannot serve metrics on port {port}" in worker.log()
