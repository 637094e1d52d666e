"""async def tasks: enqueued from async code, run on the worker's event loops."""

import asyncio

import pytest
from asgiref.sync import async_to_sync

from django_tasks_q.models import Task
from tests.conftest import run_burst_worker
from tests.testapp import tasks
from tests.testapp.models import Execution

pytestmark = pytest.mark.django_db(transaction=True)


def test_an_async_task_runs_with_the_async_orm():
    handle = tasks.async_add.delay(2, 3)
    run_burst_worker(concurrency=1)
    handle.refresh()
    assert (handle.status, handle.result) == ("SUCCESSFUL", 5)
    assert Execution.objects.filter(key="async-2+3").count() == 1


def test_async_tasks_share_their_thread_event_loop():
    first, second = tasks.which_event_loop.delay(), tasks.which_event_loop.delay()
    run_burst_worker(concurrency=1)
    first.refresh()
    second.refresh()
    assert first.result == second.result


def test_a_failing_async_task_is_retried_like_any_other():
    handle = tasks.async_fails_once.delay("af")
    run_burst_worker(concurrency=1)
    handle.refresh()
    assert (handle.status, handle.result, handle.attempts) == ("SUCCESSFUL", 2, 2)
    assert handle.errors[0].type == "tests.testapp.tasks.TransientError"


def test_the_soft_time_limit_cancels_an_async_task_so_it_can_clean_up():
    handle = tasks.async_cleans_up_at_the_soft_limit.delay("asoft")
    run_burst_worker(concurrency=1)
    handle.refresh()
    assert (handle.status, handle.result) == ("SUCCESSFUL", "cleaned up")
    assert Execution.objects.filter(key="asoft").count() == 1


def test_an_async_task_past_its_soft_limit_fails_with_soft_time_limit_exceeded():
    handle = tasks.async_ignores_nothing.delay("asoft2")
    run_burst_worker(concurrency=1)
    handle.refresh()
    assert handle.status == "FAILED"
    assert handle.error.type == "django_tasks_q.exceptions.SoftTimeLimitExceeded"


def test_adelay_and_aapply_async_enqueue_from_async_code():
    async def enqueue():
        now = await tasks.async_add.adelay(1, 1)
        later = await tasks.add.aapply_async((2, 2), priority=5, queue="async-q")
        return now, later

    now, later = async_to_sync(enqueue)()
    row = Task.objects.get(pk=later.id)
    assert (row.priority, row.queue, row.args) == (5, "async-q", [2, 2])
    assert Task.objects.get(pk=now.id).status == "READY"
    run_burst_worker(concurrency=1)
    fetched = async_to_sync(tasks.async_add.aget_result)(now.id)
    assert fetched.return_value == 2


def test_calling_an_async_task_directly_returns_its_coroutine():
    assert asyncio.run(tasks.which_event_loop()) > 0


def test_async_tasks_run_in_the_process_pool(start_worker):
    handles = [tasks.async_add.delay(n, n) for n in range(3)]
    soft = tasks.async_cleans_up_at_the_soft_limit.delay("pool-soft")
    worker = start_worker("--concurrency", "1")
    assert [h.wait(timeout=30).result for h in handles] == [0, 2, 4]
    assert soft.wait(timeout=30).result == "cleaned up"
    worker.terminate()
    assert worker.wait() == 0
