import math
from datetime import datetime, timedelta

import pytest
from django.db import transaction
from django.test import override_settings
from django.utils import timezone

from django_tasks_q import InvalidTask, UnknownTaskError, background_task, send_task
from django_tasks_q.models import Task, TaskStatus
from django_tasks_q.serialization import SerializationError
from tests.testapp import tasks
from tests.testapp.models import Note

pytestmark = pytest.mark.django_db


def test_delay_writes_a_ready_row_with_the_arguments():
    handle = tasks.add.delay(2, 3)

    row = Task.objects.get(pk=handle.id)
    assert (row.name, row.queue, row.status) == ("tests.testapp.tasks.add", "default", "READY")
    assert (row.args, row.kwargs) == ([2, 3], {})
    assert row.attempts == 0 and row.max_attempts == 1
    assert handle.status == TaskStatus.READY
    assert handle.enqueued_at == row.enqueued_at


def test_apply_async_sets_queue_priority_and_countdown():
    before = timezone.now()
    handle = tasks.add.apply_async(
        args=(1,), kwargs={"y": 2}, countdown=60, queue="bulk", priority=10
    )

    row = Task.objects.get(pk=handle.id)
    assert (row.queue, row.priority, row.args, row.kwargs) == ("bulk", 10, [1], {"y": 2})
    assert before + timedelta(seconds=59) < row.run_after < before + timedelta(seconds=62)


def test_apply_async_eta_is_stored_as_run_after():
    eta = timezone.now() + timedelta(hours=1)
    handle = tasks.add.apply_async(args=(1, 1), eta=eta)
    assert Task.objects.get(pk=handle.id).run_after == eta


def test_task_options_are_recorded_on_the_row():
    handle = tasks.named_task.delay()
    row = Task.objects.get(pk=handle.id)
    assert (row.name, row.queue, row.priority, row.timeout) == (
        "custom.task.name",
        "other",
        5,
        12.5,
    )
    assert Task.objects.get(pk=tasks.fail_until.delay("k", 2).id).max_attempts == 4


def test_send_task_enqueues_by_registered_name():
    handle = send_task("custom.task.name")
    assert Task.objects.get(pk=handle.id).name == "custom.task.name"
    handle = send_task("tests.testapp.tasks.add", args=[1], kwargs={"y": 5}, priority=-3)
    row = Task.objects.get(pk=handle.id)
    assert (row.args, row.kwargs, row.priority) == ([1], {"y": 5}, -3)


def test_send_task_with_unknown_name_says_so_and_suggests():
    with pytest.raises(
        UnknownTaskError,
        match=r"No task named 'tests.testapp.tasks.ad'.*Did you mean 'tests.testapp.tasks.add'",
    ):
        send_task("tests.testapp.tasks.ad", args=(1, 2))
    assert not Task.objects.exists()


def test_the_task_is_still_a_plain_function_call():
    assert tasks.add(2, 3) == 5
    assert not Task.objects.exists()


def test_enqueue_many_writes_one_row_per_call_in_order():
    handles = tasks.add.enqueue_many([(i, i) for i in range(5)], [{} for _ in range(5)])
    rows = list(Task.objects.order_by("id"))
    assert [row.args for row in rows] == [[i, i] for i in range(5)]
    assert [h.id for h in handles] == [str(row.id) for row in rows]


def test_enqueue_many_refuses_the_whole_batch_when_one_call_is_bad():
    with pytest.raises(SerializationError, match=r"task 1 of the batch: argument 0 is of type set"):
        tasks.add.enqueue_many([(1, 2), ({1}, 2)])
    assert not Task.objects.exists()


@pytest.mark.django_db(transaction=True)
def test_enqueue_commits_with_the_callers_transaction():
    with transaction.atomic():
        Note.objects.create(text="signed up")
        handle = tasks.add.delay(1, 2)
    assert Task.objects.filter(pk=handle.id).exists()
    assert Note.objects.count() == 1


@pytest.mark.django_db(transaction=True)
def test_enqueue_rolls_back_with_the_callers_transaction():
    class Boom(Exception):
        pass

    with pytest.raises(Boom), transaction.atomic():
        Note.objects.create(text="signed up")
        tasks.add.delay(1, 2)
        raise Boom
    assert not Task.objects.exists()
    assert not Note.objects.exists()


@pytest.mark.parametrize(
    ("args", "kwargs", "message"),
    [
        ((object(), 1), {}, r"argument 0 is of type object, which is not JSON-serialisable"),
        ((1,), {"y": datetime(2024, 1, 1)}, r"keyword argument 'y' is of type datetime.datetime"),
        ((math.nan, 1), {}, r"argument 0 is nan, which JSON cannot represent"),
        ((1, math.inf), {}, r"argument 1 is inf"),
        (({1: "a"}, 1), {}, r"argument 0 has a key 1 of type int"),
        (([1, {"deep": {2, 3}}], 1), {}, r"argument 0\[1\]\['deep'\] is of type set"),
        ((b"bytes", 1), {}, r"argument 0 is of type bytes"),
    ],
)
def test_arguments_that_do_not_survive_json_are_refused(args, kwargs, message):
    with pytest.raises(SerializationError, match=message):
        tasks.add.delay(*args, **kwargs)
    assert not Task.objects.exists()


def test_naive_eta_is_refused_when_use_tz():
    with pytest.raises(InvalidTask, match="naive datetime but USE_TZ is on"):
        tasks.add.apply_async(args=(1, 2), eta=datetime(2030, 1, 1))
    assert not Task.objects.exists()


@pytest.mark.parametrize("priority", [101, -101, 1.5, True])
def test_priority_out_of_range_is_refused(priority):
    with pytest.raises(InvalidTask, match="priority must be a whole number between -100 and 100"):
        tasks.add.apply_async(args=(1, 2), priority=priority)
    assert not Task.objects.exists()


def test_negative_countdown_is_refused():
    with pytest.raises(InvalidTask, match="countdown must be a number of seconds >= 0"):
        tasks.add.apply_async(args=(1, 2), countdown=-1)


RESTRICTED = {
    "default": {
        "BACKEND": "django_tasks_q.backend.PostgresBackend",
        "QUEUES": ["default", "emails"],
    }
}


@override_settings(TASKS=RESTRICTED)
def test_unknown_queue_is_refused_when_queues_are_restricted():
    tasks.add.apply_async(args=(1, 2), queue="emails")
    with pytest.raises(
        InvalidTask, match=r"queue 'bulk' is not allowed by TASKS\['default'\]\['QUEUES'\]"
    ):
        tasks.add.apply_async(args=(1, 2), queue="bulk")
    assert list(Task.objects.values_list("queue", flat=True)) == ["emails"]


def test_any_queue_is_accepted_without_restriction():
    tasks.add.apply_async(args=(1, 2), queue="anything-goes")
    assert Task.objects.get().queue == "anything-goes"


def test_unknown_decorator_option_suggests_the_right_one():
    with pytest.raises(
        TypeError, match="unknown option 'retry_backof', did you mean 'retry_backoff'"
    ):
        background_task(retry_backof=True)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"max_retries": -1}, "max_retries must be an int >= 0"),
        ({"retry_backoff": "fast"}, "retry_backoff must be False, True or a base delay"),
        ({"timeout": 0}, "timeout must be a number of seconds > 0"),
        ({"autoretry_for": (ValueError, "KeyError")}, "autoretry_for must list exception classes"),
        ({"priority": 500}, "priority must be a whole number"),
    ],
)
def test_bad_task_options_are_refused_at_decoration(options, message):
    def some_function():
        pass

    some_function.__qualname__ = "some_function"
    with pytest.raises(InvalidTask, match=message):
        background_task(**options)(some_function)


def test_bind_requires_a_parameter_for_the_context():
    def no_params():
        pass

    no_params.__qualname__ = "no_params"
    with pytest.raises(InvalidTask, match="takes a context"):
        background_task(bind=True)(no_params)


def test_nested_functions_cannot_be_tasks():
    def nested():
        pass

    with pytest.raises(InvalidTask, match="must be module-level functions"):
        background_task(nested)


def test_two_functions_cannot_share_a_task_name():
    from django.core.exceptions import ImproperlyConfigured

    def other():
        pass

    other.__qualname__ = "other"
    with pytest.raises(ImproperlyConfigured, match=r"Two tasks are named 'custom\.task\.name'"):
        background_task(name="custom.task.name")(other)


def test_enqueued_signal_carries_the_handle():
    from django_tasks_q.signals import task_enqueued

    received = []

    def receiver(sender, task_result, **kwargs):
        received.append(task_result)

    task_enqueued.connect(receiver)
    try:
        handle = tasks.add.delay(4, 5)
    finally:
        task_enqueued.disconnect(receiver)
    assert [r.id for r in received] == [handle.id]
    assert received[0].args == [4, 5]


def test_strings_with_nul_characters_are_refused_before_postgres_sees_them():
    with pytest.raises(SerializationError, match=r"argument 0 contains a NUL character"):
        tasks.add.delay("a\x00b", "c")
    assert not Task.objects.exists()


def test_soft_timeout_must_leave_room_before_the_hard_one():
    def task_function():
        pass

    task_function.__qualname__ = "task_function"
    with pytest.raises(
        InvalidTask, match=r"soft_timeout \(10s\) must be shorter than timeout \(5s\)"
    ):
        background_task(timeout=5, soft_timeout=10)(task_function)


def _self_referencing_list():
    value = []
    value.append(value)
    return value


@pytest.mark.parametrize(
    ("args", "kwargs", "message"),
    [
        (
            (_self_referencing_list(), 1),
            {},
            r"^argument 0 nests too deeply \(or refers to itself\)",
        ),
        (
            (1,),
            {"y": {"n": [10**5000]}},
            r"^keyword argument 'y'\['n'\]\[0\] is an integer with more than \d+ digits",
        ),
    ],
    ids=["self-referencing", "huge-int"],
)
def test_arguments_json_cannot_encode_are_refused_naming_them(args, kwargs, message):
    with transaction.atomic():
        with pytest.raises(SerializationError, match=message):
            tasks.add.delay(*args, **kwargs)
        assert not Task.objects.exists()  # nothing written, and the transaction is usable
