"""apply_async(unique_key=...): at most one waiting or running task per key."""

import threading

import pytest
from django.db import connection, connections, transaction

from django_tasks_q import InvalidTask, send_task
from django_tasks_q.models import Task
from tests.conftest import run_burst_worker, wait_for
from tests.testapp import tasks

pytestmark = pytest.mark.django_db(transaction=True)


def test_a_second_task_with_the_key_of_a_waiting_one_is_not_enqueued():
    first = tasks.record.apply_async(("a",), unique_key="sync-user-42")
    second = tasks.record.apply_async(("b",), unique_key="sync-user-42")
    assert second.id == first.id and second.args == ["a"]
    assert Task.objects.count() == 1
    other = tasks.record.apply_async(("c",), unique_key="sync-user-43")
    assert other.id != first.id and Task.objects.count() == 2


def test_a_running_task_holds_its_key_and_a_finished_one_frees_it():
    first = tasks.record.apply_async(("a",), unique_key="k")
    Task.objects.filter(pk=first.id).update(status="RUNNING", attempts=1)
    assert tasks.record.apply_async(("b",), unique_key="k").id == first.id
    Task.objects.filter(pk=first.id).update(status="SUCCESSFUL")
    again = tasks.record.apply_async(("c",), unique_key="k")
    assert again.id != first.id and again.status == "READY"


def test_the_key_is_kept_through_a_real_run_and_freed_after_it():
    first = tasks.add.apply_async((1, 2), unique_key="add-once")
    run_burst_worker(concurrency=1)
    assert Task.objects.get(pk=first.id).status == "SUCCESSFUL"
    assert send_task(tasks.add.name, (3, 4), unique_key="add-once").id != first.id


@pytest.mark.parametrize("key", ["", 42, "x" * 256])
def test_a_bad_key_is_refused(key):
    with pytest.raises(InvalidTask, match="unique_key must be a non-empty string"):
        tasks.record.apply_async(("a",), unique_key=key)
    assert not Task.objects.exists()


def _waiting_on_a_lock() -> bool:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
            "AND wait_event_type = 'Lock'"
        )
        return cursor.fetchone()[0] > 0


@pytest.mark.parametrize("first_commits", [True, False])
def test_concurrent_enqueues_of_one_key_wait_for_the_first_transaction(first_commits):
    """The second enqueue waits for the first transaction: it gets the first task if that one
    commits, and enqueues its own if that one rolls back."""
    first_enqueued, finish_first = threading.Event(), threading.Event()
    ids: dict[str, str] = {}

    def first():
        try:
            with transaction.atomic():
                ids["first"] = tasks.record.apply_async(("first",), unique_key="race").id
                first_enqueued.set()
                finish_first.wait(10)
                if not first_commits:
                    transaction.set_rollback(True)
        finally:
            connections.close_all()

    def second():
        try:
            ids["second"] = tasks.record.apply_async(("second",), unique_key="race").id
        finally:
            connections.close_all()

    threads = [threading.Thread(target=first)]
    threads[0].start()
    assert first_enqueued.wait(10)
    threads.append(threading.Thread(target=second))
    threads[1].start()
    wait_for(_waiting_on_a_lock, message="the second enqueue to wait for the first")
    finish_first.set()
    for thread in threads:
        thread.join(10)
    rows = list(Task.objects.values_list("pk", "args"))
    if first_commits:
        assert ids["second"] == ids["first"] and rows == [(int(ids["first"]), ["first"])]
    else:
        assert ids["second"] != ids["first"] and rows == [(int(ids["second"]), ["second"])]
