"""Our options on Django's own backends (ImmediateBackend, DummyBackend, as in tests): each
works or says what to change, never a TypeError from inside Django."""

import pytest
from django.test import override_settings

from django_tasks_q import InvalidTask
from django_tasks_q.canvas import chain
from django_tasks_q.compat import FRAMEWORK
from django_tasks_q.models import Task
from tests.testapp import tasks

pytestmark = pytest.mark.django_db(transaction=True)

BACKENDS = {
    "immediate": f"{FRAMEWORK}.backends.immediate.ImmediateBackend",
    "dummy": f"{FRAMEWORK}.backends.dummy.DummyBackend",
}


@pytest.fixture(params=list(BACKENDS))
def django_backend(request):
    with override_settings(TASKS={"default": {"BACKEND": BACKENDS[request.param]}}):
        yield request.param


@pytest.mark.parametrize(
    ("call", "names"),
    [
        (lambda: tasks.add.apply_async((1, 2), unique_key="k"), "apply_async(unique_key=)"),
        (lambda: tasks.add.apply_async((1, 2), expires=30), "apply_async(expires=)"),
        (lambda: tasks.add.apply_async((1, 2), task_id="mine"), "apply_async(task_id=)"),
        (lambda: tasks.add.apply_async((1, 2), link=tasks.add.s(3)), "link="),
        (lambda: chain(tasks.add.s(1, 2), tasks.add.s(3)).apply_async(), "A workflow"),
        (lambda: tasks.add_then_more.delay(1, 2), "with link= or link_error= callbacks"),
    ],
)
def test_options_that_need_our_backend_say_so(django_backend, call, names):
    with pytest.raises(InvalidTask, match="needs django_tasks_q's PostgreSQL backend") as error:
        call()
    assert names in str(error.value) and BACKENDS[django_backend] in str(error.value)
    assert not Task.objects.exists()


def test_enqueue_many_and_delay_work_on_djangos_backends(django_backend):
    results = tasks.add.enqueue_many([(1, 2), (3, 4)])
    assert len(results) == 2
    if django_backend == "immediate":
        assert [r.return_value for r in results] == [3, 7]
    assert tasks.add.delay(5, 5) is not None
    assert not Task.objects.exists()  # nothing went to the PostgreSQL queue


def test_counting_enqueues_for_prometheus_does_not_break_djangos_backends(django_backend):
    from django_tasks_q import metrics

    metrics.count_enqueues()  # as a URLconf with metrics_view or a worker would
    assert tasks.add.delay(1, 2) is not None
    assert tasks.add.enqueue_many([(1, 2)])
