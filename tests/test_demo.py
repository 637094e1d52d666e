"""The demo site's page and buttons."""

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


def test_a_task_that_succeeded_on_retry_shows_its_result_not_the_old_error(client):
    Task.objects.create(name="testproject.demo.tasks.flaky_call", status="SUCCESSFUL", result="ok",
                        attempts=3, max_attempts=4, errors=[{"message": "boom"}])  # fmt: skip
    [row] = client.get("/tasks.json").json()["tasks"]
    assert (row["error"], row["result"]) == ("", "ok")
