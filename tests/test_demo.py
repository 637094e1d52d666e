"""The demo site's page and buttons."""

from datetime import timedelta

import pytest

from django_tasks_q.models import Task

pytestmark = pytest.mark.django_db


def test_demo_page_lists_buttons_and_latest_tasks(client):
    Task.objects.create(
        name="testproject.demo.tasks.add", args=[2, 3], status="SUCCESSFUL", result=5
    )
    page = client.get("/").content.decode()
    for button in ("enqueue-quick", "enqueue-slow", "enqueue-flaky", "enqueue-failing"):
        assert f'id="{button}"' in page
    assert "SUCCESSFUL" in page


@pytest.mark.parametrize(
    ("button", "task_name"),
    [
        ("quick", "testproject.demo.tasks.add"),
        ("slow", "testproject.demo.tasks.slow_report"),
        ("flaky", "testproject.demo.tasks.flaky_call"),
        ("failing", "testproject.demo.tasks.always_fails"),
    ],
)
def test_each_button_enqueues_its_task(client, button, task_name):
    response = client.post(f"/enqueue/{button}/")
    assert response.status_code == 302
    assert list(Task.objects.values_list("name", flat=True)) == [task_name]


def test_task_list_endpoint_feeds_the_refreshing_table(client):
    Task.objects.create(name="testproject.demo.tasks.always_fails", status="FAILED",
                        attempts=3, max_attempts=3, errors=[{"message": "boom"}])  # fmt: skip
    [row] = client.get("/tasks.json").json()["tasks"]
    assert (row["name"], row["status"], row["attempts"], row["error"]) == (
        "always_fails",
        "FAILED",
        "3/3",
        "boom",
    )


def test_the_wsgi_application_that_runserver_serves_loads():
    from django.core.servers.basehttp import get_internal_wsgi_application

    assert callable(get_internal_wsgi_application())


def test_tasks_enqueued_by_a_schedule_show_its_name(client):
    from django_tasks_q.models import Schedule

    schedule = Schedule(
        name="dice", task="testproject.demo.tasks.roll_dice", interval=timedelta(seconds=10)
    )
    schedule.save()
    Task.objects.create(name="testproject.demo.tasks.roll_dice", schedule=schedule)
    Task.objects.create(name="testproject.demo.tasks.add")
    rows = client.get("/tasks.json").json()["tasks"]
    assert [row["schedule"] for row in rows] == ["", "dice"]
    assert ">dice<" in client.get("/").content.decode()


def test_a_task_that_succeeded_on_retry_shows_its_result_not_the_old_error(client):
    Task.objects.create(name="testproject.demo.tasks.flaky_call", status="SUCCESSFUL", result="ok",
                        attempts=3, max_attempts=4, errors=[{"message": "boom"}])  # fmt: skip
    [row] = client.get("/tasks.json").json()["tasks"]
    assert (row["error"], row["result"]) == ("", "ok")


@pytest.mark.django_db(transaction=True)
def test_rundemo_serves_the_page_and_runs_tasks_until_ctrl_c(tmp_path):
    """What `make demo` runs: the site and a worker, both stopped by one Ctrl-C."""
    import signal
    import socket
    import subprocess
    import sys
    import urllib.request

    from tests.conftest import ROOT, database_url_for_subprocess, wait_for
    from tests.testapp import tasks

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {
        **__import__("os").environ,
        "DJANGO_SETTINGS_MODULE": "tests.settings",
        "DATABASE_URL": database_url_for_subprocess(),
    }
    log = (tmp_path / "demo.log").open("w")
    demo = subprocess.Popen(
        [sys.executable, str(ROOT / "manage.py"), "rundemo", "--addr", f"127.0.0.1:{port}"],
        cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:

        def page():
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2) as response:
                    return response.read().decode()
            except OSError:
                return None

        assert 'id="enqueue-quick"' in wait_for(page, timeout=30, message="the demo page")
        handle = tasks.add.delay(20, 22)
        assert handle.wait(timeout=20).result == 42
        # The demo's beat enqueues its schedule's first tick at once, and the worker runs it.
        from django_tasks_q.models import Task

        scheduled = Task.objects.filter(schedule__name="demo: roll the dice every 10 seconds")
        rolled = wait_for(lambda: scheduled.filter(status="SUCCESSFUL").first(), timeout=20,
                          message="the demo schedule's first task")  # fmt: skip
        assert 1 <= rolled.result <= 6
    finally:
        demo.send_signal(signal.SIGINT)
        assert demo.wait(timeout=30) == 0
        log.close()
    output = (tmp_path / "demo.log").read_text()
    assert "login admin / admin" in output
    assert "Demo stopped." in output
    assert "stopped after enqueueing" in output  # the beat stopped cleanly too
    with socket.socket() as probe:
        assert probe.connect_ex(("127.0.0.1", port)) != 0, "the dev server is still running"
