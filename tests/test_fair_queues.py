"""Fair queues: tasks with fair_by take turns by key (docs/flow-control.md#fair-queues)."""

import pytest
from django.test import override_settings

from django_tasks_q import InvalidTask, background_task, pause, resume
from django_tasks_q.canvas import group
from django_tasks_q.models import Task
from tests.conftest import run_burst_worker, wait_for
from tests.testapp import tasks
from tests.testapp.models import Execution

pytestmark = pytest.mark.django_db(transaction=True)


def statuses(account: str) -> list[tuple[str, str | None]]:
    rows = Task.objects.filter(fair_key=f"exports:{account}").order_by("id")
    return [(row.status, row.held_by) for row in rows]


def test_a_key_has_a_turn_of_ready_tasks_and_the_rest_wait_their_turn():
    for n in range(6):
        tasks.export_for.delay("big", f"b{n}")
    many = tasks.export_for.enqueue_many([("big", "m0"), ("small", "s0")])
    assert statuses("big") == [("READY", None)] * 4 + [("WAITING", "turn:exports:big")] * 3
    assert statuses("small") == [("READY", None)]
    assert [h.status for h in many] == ["WAITING", "READY"]
    run_burst_worker(queues=["exports"], concurrency=1)
    assert Execution.objects.count() == 8
    assert {row.attempts for row in Task.objects.all()} == {1}


def test_a_small_key_is_not_stuck_behind_a_big_keys_backlog():
    tasks.export_for.enqueue_many([("big", f"b{n}") for n in range(40)])
    tasks.export_for.enqueue_many([("small", f"s{n}") for n in range(6)])
    run_burst_worker(queues=["exports"], concurrency=1)
    order = list(Execution.objects.order_by("id").values_list("key", flat=True))
    assert len(order) == 46
    # Turns of 4 alternate: the small key's six finish within its second turn, after at
    # most two turns of the big one; without turns they would come after all 40.
    last_small = max(order.index(f"s{n}") for n in range(6))
    assert last_small < 6 + 3 * 4, order


@pytest.mark.slow
def test_two_workers_serve_a_small_tenant_while_a_big_backlog_drains(start_worker):
    tasks.export_for.enqueue_many([("big", f"b{n}", 0.01) for n in range(300)])
    workers = [start_worker() for _ in range(2)]  # runtaskworker with no flags
    wait_for(lambda: Execution.objects.filter(key__startswith="b").count() >= 20,
             timeout=60, message="the big backlog to be draining")  # fmt: skip
    for n in range(10):
        tasks.export_for.delay("small", f"s{n}", 0.01)
    wait_for(lambda: Execution.objects.filter(key__startswith="s").count() == 10,
             timeout=60, message="the small tenant's tasks")  # fmt: skip
    big_done = Execution.objects.filter(key__startswith="b").count()
    assert big_done < 200  # the big backlog was still draining: the small one did not wait
    wait_for(lambda: Execution.objects.count() == 310, timeout=120, message="every task")
    for worker in workers:
        worker.terminate()
    for worker in workers:
        assert worker.wait() == 0, worker.log()


def test_priority_comes_before_turns():
    tasks.export_for.enqueue_many([("big", f"b{n}") for n in range(8)])
    urgent = tasks.export_for.using(priority=10).delay("big", "urgent")
    tasks.export_for.delay("small", "s0")
    assert Task.objects.get(pk=urgent.id).status == "WAITING"  # its key's turn is full
    # Released ahead of where the worker's claims start: the notification sends it there.
    run_burst_worker(queues=["exports"], concurrency=1, listen=True)
    order = list(Execution.objects.order_by("id").values_list("key", flat=True))
    # Held back, the urgent task is the first of its key's next turn, and then goes first.
    assert order.index("urgent") <= 6, order


def test_a_cancelled_or_paused_ready_task_lets_the_next_one_of_its_key_in():
    handles = [tasks.export_for.delay("big", f"b{n}") for n in range(5)]
    handles[0].cancel()
    assert statuses("big")[4] == ("READY", None)
    pause("exports")
    assert {held for status, held in statuses("big") if status == "WAITING"} == {"queue:exports"}
    resume("exports")
    run_burst_worker(queues=["exports"], concurrency=2)
    assert Execution.objects.count() == 4


@override_settings(TASKS_Q={"FAIR_TURN": 1})
def test_a_turn_of_one_alternates_keys_task_by_task_and_workflows_take_turns_too():
    group(*[tasks.export_for.si(a, f"{a}{n}") for n in range(3) for a in ("x", "y")]).apply_async()
    assert statuses("x") == [("READY", None)] + [("WAITING", "turn:exports:x")] * 2
    run_burst_worker(queues=["exports"], concurrency=1)
    order = list(Execution.objects.order_by("id").values_list("key", flat=True))
    assert [key[0] for key in order] == ["x", "y"] * 3, order


def fair_by_nothing(account):
    return account


def test_fair_by_is_checked_when_the_task_is_declared():
    with pytest.raises(InvalidTask, match="fair_by='acount' is not a parameter"):
        background_task(fair_by="acount")(fair_by_nothing)
