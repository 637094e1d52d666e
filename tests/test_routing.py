"""TASKS_Q["ROUTES"]: the queue and priority of tasks whose code does not choose them, as
Celery's task_routes (docs/settings.md)."""

import pytest
from django.core.management import call_command
from django.core.management.base import SystemCheckError
from django.test import override_settings

from django_tasks_q.canvas import chain
from django_tasks_q.models import Task
from tests.testapp import tasks

pytestmark = pytest.mark.django_db

ROUTES = {
    "tests.testapp.tasks.record": {"queue": "recorded", "priority": 7},
    "tests.testapp.tasks.*": "testapp",
    "custom.task.*": "never-applied",  # named_task chose its own queue and priority
}


def row(handle) -> tuple[str, int]:
    task = Task.objects.get(pk=handle.id)
    return task.queue, task.priority


@override_settings(TASKS_Q={"ROUTES": ROUTES})
def test_an_exact_name_wins_over_a_glob_and_the_handle_says_where_it_went():
    handle = tasks.record.delay("a")
    assert row(handle) == ("recorded", 7) and handle.task.queue_name == "recorded"
    assert row(tasks.add.delay(1, 2)) == ("testapp", 0)


@override_settings(TASKS_Q={"ROUTES": ROUTES})
def test_what_the_code_chooses_wins_over_a_route():
    assert row(tasks.named_task.delay()) == ("other", 5)  # the decorator's queue and priority
    assert row(tasks.record.apply_async(("b",), queue="urgent")) == ("urgent", 7)
    assert row(tasks.record.using(priority=-3).delay("c")) == ("recorded", -3)


@override_settings(TASKS_Q={"ROUTES": [("tests.*", "first"), ("tests.testapp.*", "second")]})
def test_globs_in_a_list_are_tried_in_order():
    assert row(tasks.add.delay(1, 2)) == ("first", 0)


@override_settings(TASKS_Q={"ROUTES": ROUTES})
def test_enqueue_many_and_workflow_steps_are_routed():
    [many] = tasks.add.enqueue_many([(1, 2)])
    assert row(many) == ("testapp", 0)
    workflow = chain(tasks.add.s(1, 2), tasks.record.si("d")).apply_async()
    assert [row(step) for step in workflow.steps] == [("testapp", 0), ("recorded", 7)]


def test_without_routes_tasks_go_to_the_default_queue():
    assert row(tasks.add.delay(1, 2)) == ("default", 0)


@override_settings(
    TASKS_Q={
        "ROUTES": {
            "a.*": {"queue": "", "exchange": "x"},
            "b": {"priority": 500},
            "c d": "q",
            "e": 3,
        }
    }
)
def test_bad_routes_fail_the_system_checks():
    with pytest.raises(SystemCheckError) as caught:
        call_command("check")
    message = str(caught.value)
    assert message.count("django_tasks_q.E021") == 5
    assert "unknown keys ['exchange']" in message and "from -100 to 100" in message
