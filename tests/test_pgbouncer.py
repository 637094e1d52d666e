"""Through a real PgBouncer in transaction pooling mode, with default settings: workers, beat,
enqueueing and the admin work, wake-ups fall back to polling, and nothing is lost.

Transaction pooling gives each transaction whichever server connection is free: LISTEN and
server-side prepared statements do not survive that. The worker still finds every task by
polling (POLL_INTERVAL), and Django's psycopg connections prepare nothing unless told to."""

import os
import subprocess
import sys
import textwrap
from collections import Counter
from datetime import timedelta

import psycopg
import pytest
from django.db import connection

from django_tasks_q.direct import reaches_postgres_directly
from django_tasks_q.models import Schedule, Task
from tests.conftest import ROOT, wait_for
from tests.pgbouncer import find_pgbouncer, pgbouncer
from tests.testapp import tasks
from tests.testapp.models import Execution

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]


@pytest.fixture(scope="module")
def bouncer_url(django_db_setup, django_db_blocker):
    binary = find_pgbouncer()
    if binary is None:
        pytest.skip("no pgbouncer: apt-get install pgbouncer (make test installs it when it may)")
    params = connection.settings_dict
    with pgbouncer(
        binary, host=params["HOST"] or "127.0.0.1", port=int(params["PORT"] or 5432),
        user=params["USER"],
    ) as bouncer:  # fmt: skip
        yield bouncer.url(params["NAME"], params["USER"])


def through(bouncer_url: str) -> dict[str, str]:
    return {"DATABASE_URL": bouncer_url}


def run_django(bouncer_url: str, code: str) -> str:
    """Run ``code`` in a Django process of its own whose database goes through PgBouncer."""
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "tests.settings", **through(bouncer_url)}
    done = subprocess.run(
        [sys.executable, str(ROOT / "manage.py"), "shell", "-c", textwrap.dedent(code)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def assert_clean(log: str) -> None:
    assert "ERROR" not in log and "Traceback" not in log, log


def test_workers_and_enqueueing_through_pgbouncer_run_every_task_once(bouncer_url, start_worker):
    workers = [start_worker(env=through(bouncer_url)) for _ in range(2)]
    run_django(
        bouncer_url,
        """
        from django.db import transaction
        from django_tasks_q.canvas import chain
        from tests.testapp import tasks

        with transaction.atomic():
            for n in range(100):
                tasks.record.delay(f"one-{n}")
        tasks.record.enqueue_many([(f"many-{n}",) for n in range(100)])
        chain(tasks.add.s(1, 2), tasks.add.s(3), tasks.add.s(4)).apply_async()
    """,
    )
    wait_for(lambda: Execution.objects.count() >= 200 and not Task.objects.exclude(
        status="SUCCESSFUL").exists(), timeout=60, message="every task to run")  # fmt: skip
    runs = Counter(Execution.objects.values_list("key", flat=True))
    assert len(runs) == 200 and set(runs.values()) == {1}, "a task ran twice or not at all"
    last = Task.objects.filter(name=tasks.add.name).order_by("-id").first()
    assert last.result == 10  # the chain passed each result on
    for worker in workers:
        worker.terminate()
    assert [worker.wait() for worker in workers] == [0, 0]
    for worker in workers:
        assert_clean(worker.log())


def test_a_task_enqueued_through_pgbouncer_to_an_idle_worker_starts_by_polling(
    bouncer_url, start_worker
):
    worker = start_worker(env=through(bouncer_url))
    wait_for(lambda: "starting" in worker.log(), message="the worker to start")
    for n in range(3):  # idle between them: only a poll (or a lucky notification) finds each
        run_django(
            bouncer_url,
            f"""
            from tests.testapp import tasks
            tasks.record.delay("idle-{n}")
        """,
        )
        wait_for(lambda n=n: Execution.objects.filter(key=f"idle-{n}").exists(), timeout=10,
                 message=f"task {n} within a few poll intervals")  # fmt: skip
    worker.terminate()
    assert worker.wait() == 0
    assert_clean(worker.log())


def test_beat_through_pgbouncer_enqueues_each_tick_once(bouncer_url, start_worker, start_beat):
    schedule = Schedule.objects.create(
        name="bounced", task=tasks.record.name, args=["tick"], interval=timedelta(seconds=1)
    )
    beats = [start_beat(env=through(bouncer_url)) for _ in range(2)]
    worker = start_worker(env=through(bouncer_url))
    wait_for(lambda: Task.objects.filter(schedule=schedule, status="SUCCESSFUL").count() >= 3,
             timeout=40, message="three ticks to run")  # fmt: skip
    for process in [*beats, worker]:
        process.terminate()
    assert [process.wait() for process in [*beats, worker]] == [0, 0, 0]
    ticks = list(Task.objects.filter(schedule=schedule).values_list("scheduled_for", flat=True))
    assert len(ticks) == len(set(ticks)), "a tick was enqueued twice"
    for process in [*beats, worker]:
        assert_clean(process.log())


def test_the_admin_through_pgbouncer_lists_shows_and_retries(bouncer_url):
    failed = Task.objects.create(name=tasks.add.name, args=[1, 2], status="FAILED", attempts=1)
    output = run_django(
        bouncer_url,
        f"""
        from django.contrib.auth.models import User
        from django.test import Client

        client = Client()
        client.force_login(User.objects.create_superuser("ops", "ops@example.com", "pw"))
        for url in ("/admin/django_tasks_q/task/", "/admin/django_tasks_q/task/{failed.pk}/change/",
                    "/admin/django_tasks_q/dashboard/", "/admin/django_tasks_q/worker/"):
            assert client.get(url).status_code == 200, url
        response = client.post("/admin/django_tasks_q/task/",
                               {{"action": "retry_now", "_selected_action": [{failed.pk}]}})
        assert response.status_code == 302, response.status_code
        print("admin ok")
    """,
    )
    assert "admin ok" in output
    failed.refresh_from_db()
    assert failed.status == "READY"


def test_a_session_through_pgbouncer_is_not_direct_so_the_worker_prepares_nothing(bouncer_url):
    with psycopg.connect(bouncer_url, autocommit=True) as session:
        assert session.execute("SELECT 1").fetchone() == (1,)
        assert not reaches_postgres_directly(session)
