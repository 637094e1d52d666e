"""Pausing and resuming a queue or a task name (docs/flow-control.md)."""

import io
import json
import re
import time

import pytest
from django.contrib.auth.models import Permission
from django.core.management import call_command
from django.db.models import Max

from django_tasks_q import InvalidTask, pause, pausing, resume
from django_tasks_q.canvas import chain
from django_tasks_q.models import Pause, Task
from tests.conftest import run_burst_worker, wait_for
from tests.testapp import tasks
from tests.testapp.models import Execution

pytestmark = pytest.mark.django_db(transaction=True)


def until(moment: float) -> None:
    """Let time pass until ``moment`` (time.monotonic()): an observation window in which
    something must not happen, not a wait for something to happen."""
    time.sleep(max(0.0, moment - time.monotonic()))


def statuses(*handles) -> list[str]:
    return [Task.objects.get(pk=h.id).status for h in handles]


def test_a_paused_queue_holds_its_waiting_and_new_tasks_until_resumed():
    before = tasks.record.using(queue_name="mail").delay("before")
    other = tasks.record.delay("other-queue")
    assert pause("mail", reason="smtp down") == pausing.PauseResult(True, 1)
    after = tasks.record.using(queue_name="mail").delay("after")
    many = tasks.record.using(queue_name="mail").enqueue_many([("m1",), ("m2",)])
    assert after.status == "WAITING" and {h.status for h in many} == {"WAITING"}
    assert Task.objects.get(pk=before.id).held_by == "queue:mail"
    run_burst_worker()
    assert statuses(before, after, other) == ["WAITING", "WAITING", "SUCCESSFUL"]
    assert [(p.queue, p.reason) for p in pausing.paused()] == [("mail", "smtp down")]

    assert resume("mail") == pausing.PauseResult(True, 4)
    run_burst_worker()
    assert set(statuses(before, after, *many)) == {"SUCCESSFUL"}
    assert resume("mail") == pausing.PauseResult(False, 0)  # not paused any more


def test_a_paused_task_waits_in_every_queue_and_other_tasks_flow():
    held = [tasks.record.delay("a"), tasks.record.using(queue_name="other").delay("b")]
    free = tasks.add.delay(1, 2)
    assert pause(task=tasks.record).tasks == 2
    run_burst_worker()
    assert statuses(*held, free) == ["WAITING", "WAITING", "SUCCESSFUL"]
    resume(task=tasks.record.name)
    run_burst_worker()
    assert statuses(*held) == ["SUCCESSFUL", "SUCCESSFUL"]


def test_resuming_one_of_two_pauses_leaves_a_task_held_by_the_other():
    handle = tasks.record.using(queue_name="mail").delay("both")
    pause("mail")
    pause(task=tasks.record)
    assert resume("mail").tasks == 0
    assert Task.objects.get(pk=handle.id).held_by == f"task:{tasks.record.name}"
    assert resume(task=tasks.record).tasks == 1
    assert statuses(handle) == ["READY"]


def test_a_task_that_becomes_ready_while_paused_is_not_claimed():
    # A retry, a recovered attempt or an enqueue racing the pause makes a READY task in a
    # paused queue: the workers leave it out of their claims.
    pause("mail")
    straggler = tasks.record.using(queue_name="mail").delay("straggler")
    Task.objects.filter(pk=straggler.id).update(status="READY", held_by=None)
    run_burst_worker()
    assert statuses(straggler) == ["READY"]
    resume("mail")
    run_burst_worker()
    assert statuses(straggler) == ["SUCCESSFUL"]


def test_a_workflow_step_released_while_its_queue_is_paused_waits_for_the_resume():
    workflow = chain(tasks.add.s(1, 1), tasks.add.s(1).set(queue="mail")).apply_async()
    pause("mail")
    run_burst_worker()
    first, second = (Task.objects.get(pk=s.id) for s in workflow.steps)
    assert (first.status, second.status, second.held_by) == ("SUCCESSFUL", "WAITING", "queue:mail")
    resume("mail")
    run_burst_worker()
    assert workflow.get(timeout=5) == 3


def test_pause_refuses_what_it_cannot_mean():
    with pytest.raises(InvalidTask, match="either a queue or a task"):
        pause()
    with pytest.raises(InvalidTask, match="either a queue or a task"):
        pause("mail", task=tasks.record)
    with pytest.raises(InvalidTask, match="queue name"):
        pause("")
    assert not Pause.objects.exists()


def test_the_tasks_command_pauses_lists_and_resumes():
    tasks.record.using(queue_name="mail").delay("x")
    out = io.StringIO()
    call_command("tasks", "pause", "--queue", "mail", "--reason", "maintenance", stdout=out)
    assert "Paused queue mail; 1 waiting task(s) held." in out.getvalue()
    out = io.StringIO()
    call_command("tasks", "paused", "--json", stdout=out)
    [listed] = json.loads(out.getvalue())
    assert (listed["queue"], listed["task"], listed["reason"]) == ("mail", "", "maintenance")
    out = io.StringIO()
    call_command("tasks", "resume", "--queue", "mail", stdout=out)
    assert "Resumed queue mail; 1 task(s) ready again." in out.getvalue()
    out = io.StringIO()
    call_command("tasks", "paused", stdout=out)
    assert "Nothing is paused." in out.getvalue()


def test_the_admin_pauses_and_resumes_under_the_models_permissions(client, django_user_model):
    handle = tasks.record.using(queue_name="mail").delay("x")
    staff = django_user_model.objects.create_user("ops", password="x", is_staff=True)
    staff.user_permissions.add(Permission.objects.get(codename="view_pause"))
    client.force_login(staff)
    add_url = "/admin/django_tasks_q/pause/add/"
    assert client.post(add_url, {"queue": "mail", "reason": "r"}).status_code == 403
    staff.user_permissions.add(Permission.objects.get(codename="add_pause"))
    page = client.post(add_url, {"queue": "mail", "reason": "r"}, follow=True)
    assert "Paused queue mail: 1 waiting task(s) held." in page.content.decode()
    assert statuses(handle) == ["WAITING"]
    both = client.post(add_url, {"queue": "mail", "task_name": "x"})
    assert "Give either a queue or a task name." in both.content.decode()
    pause_id = Pause.objects.get().pk
    changelist = "/admin/django_tasks_q/pause/"
    action = {"action": "resume_selected", "_selected_action": [pause_id]}
    client.post(changelist, action)
    assert Pause.objects.exists()  # no delete permission: nothing resumed
    staff.user_permissions.add(Permission.objects.get(codename="delete_pause"))
    page = client.post(changelist, action, follow=True)
    assert "Resumed queue mail: 1 task(s) ready again." in page.content.decode()
    assert statuses(handle) == ["READY"] and not Pause.objects.exists()


@pytest.mark.slow
@pytest.mark.parametrize("listen", [True, False], ids=["notify", "polling"])
def test_running_workers_stop_claiming_a_paused_queue_within_a_second(start_worker, listen):
    env = {} if listen else {"TASKS_Q_LISTEN_NOTIFY": "0"}
    workers = [start_worker(env=env) for _ in range(2)]  # runtaskworker with no flags
    tasks.sleep_then_record.using(queue_name="mail").enqueue_many([("held", 0.02)] * 400)
    wait_for(lambda: Execution.objects.filter(key="held").count() >= 20, timeout=60,
             message="the workers to be busy")  # fmt: skip
    pause("mail")
    paused_at = time.monotonic()
    # A task may start within the second (a claim in flight, tasks claimed ahead); after it,
    # none may. Proving that nothing happens takes watching for a while: two seconds.
    until(paused_at + 1.0)
    started_by_then = Task.objects.filter(queue="mail").exclude(started_at=None).count()
    last_start = Task.objects.filter(queue="mail").aggregate(Max("started_at"))["started_at__max"]
    until(paused_at + 3.0)
    assert Task.objects.filter(queue="mail").exclude(started_at=None).count() == started_by_then
    assert (
        Task.objects.filter(queue="mail").aggregate(Max("started_at"))["started_at__max"]
        == last_start
    )
    waiting = Task.objects.filter(queue="mail", status="WAITING").count()
    assert waiting > 0
    resume("mail")
    wait_for(lambda: Execution.objects.filter(key="held").count() == 400, timeout=120,
             message="every task after the resume")  # fmt: skip
    for worker in workers:
        worker.terminate()
    for worker in workers:
        assert worker.wait() == 0, worker.log()


def test_the_dashboard_shows_what_is_paused_and_how_many_tasks_each_holds(admin_client):
    dashboard = "/admin/django_tasks_q/dashboard/"
    assert "tasks-q-paused" not in admin_client.get(dashboard).content.decode()
    tasks.record.using(queue_name="mail").enqueue_many([("a",), ("b",)])
    pause("mail", reason="SMTP provider down")
    page = admin_client.get(dashboard).content.decode()
    assert 'id="tasks-q-paused"' in page and "queue mail" in page and "SMTP provider down" in page
    assert 'data-cell="paused:1">2</td>' in page
    assert "/admin/django_tasks_q/pause/" in page
    # The queue's row counts them as waiting, linked to the list of them.
    waiting_cell = re.search(r'data-cell="mail:waiting">(.*?)</td>', page, re.S).group(1)
    assert ">2</a>" in waiting_cell and "status__exact=WAITING" in waiting_cell


def test_a_task_held_by_a_pause_keeps_its_unique_key():
    first = tasks.record.using(queue_name="mail").apply_async(("a",), unique_key="sync-42")
    pause("mail")
    again = tasks.record.using(queue_name="mail").apply_async(("b",), unique_key="sync-42")
    assert again.id == first.id and Task.objects.count() == 1
    waiting = tasks.record.using(queue_name="mail").apply_async(("c",), unique_key="sync-43")
    assert waiting.status == "WAITING"
    assert tasks.record.using(queue_name="mail").apply_async(("d",), unique_key="sync-43").id == (
        waiting.id
    )
    assert resume("mail").tasks == 2
    assert statuses(first, waiting) == ["READY", "READY"]
