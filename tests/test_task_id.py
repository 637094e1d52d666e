"""apply_async(task_id=...): an id the caller chooses, which finds the task later and makes
enqueueing the same work twice a no-op."""

import threading
import uuid

import pytest
from django.db import connection, transaction

from django_tasks_q import InvalidTask, get_result, send_task
from django_tasks_q.backend import get_backend
from django_tasks_q.compat import TaskResultDoesNotExist
from django_tasks_q.models import Task
from tests.conftest import run_burst_worker, transaction_in_another_session
from tests.testapp import tasks


@pytest.mark.django_db(transaction=True)
def test_a_chosen_id_finds_the_task_and_its_result():
    chosen = str(uuid.uuid4())
    handle = tasks.add.apply_async((2, 3), task_id=chosen)
    assert get_result(chosen).id == handle.id
    run_burst_worker()
    found = get_result(chosen)
    assert (found.status, found.result, found.id) == ("SUCCESSFUL", 5, handle.id)
    assert get_result(handle.id).id == handle.id  # the database id still works
    assert tasks.add.get_result(chosen).id == handle.id  # Django's Task.get_result too


@pytest.mark.django_db
def test_the_same_chosen_id_twice_enqueues_once_and_the_transaction_goes_on():
    first = tasks.add.apply_async((1, 2), task_id="invoice-42-pdf")
    again = tasks.add.apply_async((1, 2), task_id="invoice-42-pdf")
    assert again.id == first.id
    # The refused insert must not have broken the caller's transaction.
    second = tasks.add.apply_async((1, 2), task_id="invoice-43-pdf")
    assert Task.objects.count() == 2
    assert second.id != first.id


@pytest.mark.django_db(transaction=True)
def test_a_chosen_id_is_kept_after_the_task_finished():
    first = tasks.add.apply_async((1, 2), task_id="report-2026-11")
    run_burst_worker()
    again = tasks.add.apply_async((1, 2), task_id="report-2026-11")
    assert again.id == first.id
    assert again.status == "SUCCESSFUL"
    assert Task.objects.count() == 1


@pytest.mark.django_db
def test_a_chosen_id_taken_by_another_task_is_refused_and_nothing_is_written():
    taken = tasks.add.apply_async((1, 2), task_id="nightly")
    with pytest.raises(InvalidTask, match=rf"'nightly' is taken by task #{taken.id} "):
        tasks.record.apply_async(("k",), task_id="nightly")
    assert list(Task.objects.values_list("name", flat=True)) == ["tests.testapp.tasks.add"]


@pytest.mark.django_db(transaction=True)
def test_two_sessions_enqueueing_one_chosen_id_at_once_make_one_task():
    """The second insert waits for the first transaction; once it commits, the second gets
    the first's task."""
    first_id = []
    second = {}

    def enqueue_second():
        second["handle"] = tasks.add.apply_async((1, 2), task_id="once")
        connection.close()

    with transaction_in_another_session(
        lambda: first_id.append(tasks.add.apply_async((1, 2), task_id="once").id)
    ):
        racer = threading.Thread(target=enqueue_second)
        racer.start()
        racer.join(timeout=0.5)
        assert racer.is_alive(), "the second insert must wait for the first transaction"
    racer.join(timeout=10)
    assert second["handle"].id == first_id[0]
    assert Task.objects.count() == 1


@pytest.mark.django_db(transaction=True)
def test_a_chosen_id_rolled_back_with_its_transaction_is_free_again():
    with pytest.raises(RuntimeError), transaction.atomic():
        tasks.add.apply_async((1, 2), task_id="rolled-back")
        raise RuntimeError("the view failed")
    handle = tasks.add.apply_async((3, 4), task_id="rolled-back")
    assert list(Task.objects.values_list("id", "args")) == [(int(handle.id), [3, 4])]


@pytest.mark.django_db
def test_send_task_takes_a_chosen_id_and_cancel_finds_the_task_by_it():
    send_task("other_service.tasks.render", (1,), task_id="render-1")
    assert Task.objects.get().chosen_id == "render-1"
    get_backend().cancel("render-1")
    assert get_result("render-1").status == "CANCELLED"


@pytest.mark.django_db
def test_an_unknown_chosen_id_is_a_clear_does_not_exist():
    with pytest.raises(TaskResultDoesNotExist, match="No task with id 'nothing-here'"):
        get_result("nothing-here")


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("chosen", "message"),
    [
        ("", "non-empty string of at most 255 characters"),
        ("x" * 256, "non-empty string of at most 255 characters"),
        (42, "non-empty string of at most 255 characters"),
        ("12345", "not only digits"),
    ],
)
def test_bad_chosen_ids_are_refused_with_the_rule(chosen, message):
    with pytest.raises(InvalidTask, match=message):
        tasks.add.apply_async((1, 2), task_id=chosen)
    assert not Task.objects.exists()


@pytest.mark.django_db
def test_a_uuid_object_is_taken_as_its_text():
    chosen = uuid.uuid4()
    handle = tasks.add.apply_async((1, 2), task_id=chosen)
    assert get_result(str(chosen)).id == handle.id


@pytest.mark.django_db
@pytest.mark.parametrize(
    "options",
    [
        {"unique_key": "k"},
        {"depends_on": []},
        {"link": tasks.add.s(1)},
    ],
    ids=["unique_key", "depends_on", "link"],
)
def test_a_chosen_id_with_a_workflow_or_unique_key_is_refused(options):
    with pytest.raises(InvalidTask, match="task_id cannot be combined with"):
        tasks.add.apply_async((1, 2), task_id="combined", **options)
    assert not Task.objects.exists()
