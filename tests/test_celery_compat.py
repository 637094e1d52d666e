"""Code written for Celery runs as it is, or is refused with what to use instead."""

import pytest

from django_tasks_q import InvalidTask, background_task
from django_tasks_q.models import Task
from tests.conftest import run_burst_worker
from tests.testapp import tasks
from tests.testapp.models import Execution

pytestmark = pytest.mark.django_db(transaction=True)


def test_a_bound_task_with_self_and_self_request_and_raise_self_retry_runs():
    handle = tasks.celery_style.delay("celery")
    run_burst_worker()
    handle.wait(timeout=5)
    assert handle.status == "SUCCESSFUL"
    assert handle.result == [handle.id, 1, ["celery"]]
    assert list(Execution.objects.values_list("attempt", flat=True)) == [0, 1]


@pytest.mark.parametrize(
    ("option", "advice"),
    [
        ("time_limit", "timeout= on @background_task"),
        ("soft_time_limit", "soft_timeout="),
        ("headers", "as arguments"),
        ("routing_key", "queue="),
        ("contdown", "did you mean 'countdown'"),
    ],
)
def test_celery_options_that_mean_nothing_here_say_what_to_use(option, advice):
    with pytest.raises(InvalidTask, match=advice):
        tasks.add.apply_async((1, 2), **{option: 1})
    assert not Task.objects.exists()


def limited_in_time():
    return 1


def test_celerys_time_limit_names_on_the_decorator_are_timeout_and_soft_timeout():
    task = background_task(time_limit=30, soft_time_limit=25)(limited_in_time)
    assert (task.timeout, task.soft_timeout) == (30, 25)
    with pytest.raises(TypeError, match="both time_limit= and timeout="):
        background_task(time_limit=30, timeout=30)(limited_in_time)
