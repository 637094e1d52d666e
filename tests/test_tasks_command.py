"""``manage.py tasks``: list, show, retry, cancel, purge, stats and workers from a shell."""

import io
import json
from datetime import timedelta

import pytest
from django.core.management import CommandError, call_command
from django.utils import timezone

from django_tasks_q.models import Task, Worker, WorkerState
from tests.testapp import tasks

pytestmark = pytest.mark.django_db

TRACEBACK = (
    'Traceback (most recent call last):\n  File "shop/tasks.py", line 9\nValueError: bad order 7'
)


def run(*args: str) -> str:
    out = io.StringIO()
    call_command("tasks", *args, stdout=out)
    return out.getvalue()


def run_json(*args: str):
    return json.loads(run(*args, "--json"))


def failed(**fields) -> Task:
    error = {
        "attempt": 1,
        "worker_id": "w-1",
        "type": "builtins.ValueError",
        "message": "bad order 7",
        "traceback": TRACEBACK,
        "at": "2026-11-27T10:00:00+00:00",
    }
    defaults = {"name": tasks.add.name, "args": [1, "order-7"], "status": "FAILED", "attempts": 1,
                "max_attempts": 1, "errors": [error], "finished_at": timezone.now()}  # fmt: skip
    return Task.objects.create(**{**defaults, **fields})


def ready(**fields) -> Task:
    defaults = {"name": tasks.add.name, "args": [1, 2],
                "run_after": timezone.now() - timedelta(seconds=5)}  # fmt: skip
    return Task.objects.create(**{**defaults, **fields})


def test_list_filters_by_status_queue_name_and_age_newest_first():
    old = ready(queue="mail")
    Task.objects.filter(pk=old.pk).update(enqueued_at=timezone.now() - timedelta(hours=3))
    new = ready(queue="mail")
    other = failed(queue="reports")
    recorded = ready(name=tasks.record.name, queue="mail")

    assert [row["id"] for row in run_json("list", "--queue", "mail")] == [
        recorded.pk,
        new.pk,
        old.pk,
    ]
    assert [row["id"] for row in run_json("list", "--status", "failed")] == [other.pk]
    assert [row["id"] for row in run_json("list", "--queue", "mail", "--older-than", "2h")] == [
        old.pk
    ]
    assert [
        row["id"] for row in run_json("list", "--newer-than", "1h", "--task", tasks.add.name)
    ] == [other.pk, new.pk]
    assert [row["id"] for row in run_json("list", "--task", "tests.testapp.tasks.rec*")] == [
        recorded.pk
    ]
    assert [row["id"] for row in run_json("list", "--limit", "1")] == [recorded.pk]

    table = run("list", "--queue", "reports")
    assert table.splitlines()[0].split() == [
        "ID",
        "TASK",
        "QUEUE",
        "STATUS",
        "ATTEMPTS",
        "ENQUEUED",
        "FINISHED",
    ]
    assert table.splitlines()[1].split()[:5] == [
        str(other.pk),
        tasks.add.name,
        "reports",
        "FAILED",
        "1/1",
    ]
    assert run("list", "--queue", "nowhere") == "No tasks match.\n"


def test_list_refuses_a_bad_age_with_the_accepted_forms():
    with pytest.raises(CommandError, match=r"'yesterday' is not a duration.*90s, 15m, 2h, 3d"):
        run("list", "--older-than", "yesterday")


def test_show_prints_arguments_result_and_every_error_with_its_traceback():
    row = failed(kwargs={"shop": "north"}, chosen_id="order-7-receipt")
    text = run("show", str(row.pk))
    fields = dict(line.split(None, 1) for line in text.split("\n\n")[0].splitlines())
    assert (fields["id"], fields["status"], fields["chosen_id"]) == (
        str(row.pk),
        "FAILED",
        "order-7-receipt",
    )
    assert '[1, "order-7"]' in text and '{"shop": "north"}' in text
    assert "Attempt 1 on w-1" in text and "ValueError: bad order 7" in text
    assert TRACEBACK in text
    # The id the caller chose finds it too; JSON carries the same.
    shown = run_json("show", "order-7-receipt")
    assert shown["id"] == row.pk and shown["errors"][0]["traceback"] == TRACEBACK


def test_show_of_an_unknown_id_says_so():
    with pytest.raises(CommandError, match="No task with id '999999'"):
        run("show", "999999")


def test_retry_by_id_runs_failed_tasks_again_and_leaves_the_rest():
    first, running = failed(), ready(status="RUNNING")
    text = run("retry", str(first.pk), str(running.pk))
    assert "1 task(s) will run again now." in text
    assert "1 left alone: only failed or cancelled tasks are retried." in text
    first.refresh_from_db()
    assert (first.status, first.max_attempts) == ("READY", 2)  # its budget again


def test_retry_names_a_task_whose_unique_key_another_task_holds():
    keyed = failed(unique_key="report-7")
    ready(unique_key="report-7")
    result = run_json("retry", str(keyed.pk))
    assert result == {
        "retried": [],
        "conflicts": [{"task": tasks.add.name, "id": keyed.pk, "unique_key": "report-7"}],
    }


def test_retry_by_filter_asks_for_confirmation_without_a_terminal_and_takes_yes():
    one, two = failed(queue="mail"), failed(queue="mail")
    elsewhere = failed(queue="reports")
    with pytest.raises(CommandError, match=r"Retry 2 task\(s\)\? Pass --yes to confirm"):
        run("retry", "--queue", "mail")
    assert Task.objects.filter(status="READY").count() == 0
    assert run_json("retry", "--queue", "mail", "--yes")["retried"] == sorted([one.pk, two.pk])
    elsewhere.refresh_from_db()
    assert elsewhere.status == "FAILED"


def test_retry_needs_ids_or_filters_not_both():
    with pytest.raises(CommandError, match="their ids, or filters"):
        run("retry")
    with pytest.raises(CommandError, match="not both"):
        run("retry", "1", "--queue", "mail")


def test_cancel_cancels_waiting_tasks_and_asks_running_ones_to_stop():
    waiting, running, done = ready(), ready(status="RUNNING", attempts=1), failed()
    text = run("cancel", str(waiting.pk), str(running.pk), str(done.pk), "--terminate")
    assert "1 task(s) cancelled." in text
    assert "1 running task(s) asked to stop" in text
    assert "1 left alone: they had finished." in text
    waiting.refresh_from_db()
    running.refresh_from_db()
    assert waiting.status == "CANCELLED"
    assert (running.status, running.cancel_terminate) == ("RUNNING", True)
    assert running.cancel_requested_at is not None


def test_purge_cancels_what_has_not_started_in_that_queue_only():
    due, later = (
        ready(queue="mail"),
        ready(queue="mail", run_after=timezone.now() + timedelta(hours=1)),
    )
    running = ready(queue="mail", status="RUNNING", attempts=1)
    other = ready(queue="reports")
    with pytest.raises(
        CommandError, match=r"Cancel the 2 task\(s\) of queue mail not started yet\?"
    ):
        run("purge", "--queue", "mail")
    assert run("purge", "--queue", "mail", "--yes") == "2 task(s) of queue mail cancelled.\n"
    statuses = dict(Task.objects.values_list("pk", "status"))
    assert statuses == {due.pk: "CANCELLED", later.pk: "CANCELLED", running.pk: "RUNNING",
                        other.pk: "READY"}  # fmt: skip


def test_purge_of_one_task_name_leaves_the_queues_other_tasks():
    add, record = ready(queue="mail"), ready(queue="mail", name=tasks.record.name)
    assert run_json("purge", "--queue", "mail", "--task", tasks.record.name, "--yes") == {
        "cancelled": 1
    }
    assert dict(Task.objects.values_list("pk", "status")) == {
        add.pk: "READY",
        record.pk: "CANCELLED",
    }


def test_purge_goes_through_more_than_one_batch(monkeypatch):
    from django_tasks_q import actions

    monkeypatch.setattr(actions, "PURGE_BATCH", 3)
    Task.objects.bulk_create(Task(name=tasks.add.name, queue="bulk") for _ in range(8))
    assert run_json("purge", "--queue", "bulk", "--yes") == {"cancelled": 8}
    assert set(Task.objects.values_list("status", flat=True)) == {"CANCELLED"}


def test_stats_reports_each_queue_with_what_finished_in_the_last_hour():
    ready(queue="mail")
    ready(queue="mail", run_after=timezone.now() + timedelta(hours=1))
    ready(queue="mail", status="RUNNING", attempts=1)
    failed(queue="mail")
    Task.objects.create(
        name=tasks.add.name, queue="mail", status="SUCCESSFUL", finished_at=timezone.now()
    )
    rows = {row["queue"]: row for row in run_json("stats")}
    mail = rows.pop("mail")
    assert {key: mail[key] for key in ("ready", "scheduled", "running", "waiting",
                                       "succeeded_last_hour", "failed_last_hour")} == {
        "ready": 1, "scheduled": 1, "running": 1, "waiting": 0,
        "succeeded_last_hour": 1, "failed_last_hour": 1}  # fmt: skip
    assert mail["oldest_ready_age_seconds"] >= 0
    # Declared queues are listed even when empty.
    assert rows["other"]["ready"] == 0
    table = run("stats")
    assert table.splitlines()[0].split()[:3] == ["QUEUE", "READY", "SCHEDULED"]


def test_workers_tells_alive_stale_and_lost_apart_and_shows_what_each_runs():
    now = timezone.now()
    for name, silent in (("w-alive", 1), ("w-stale", 30), ("w-lost", 600)):
        Worker.objects.create(id=name, hostname="host", pid=1, concurrency=4, queues=["mail"],
                              state=WorkerState.RUNNING, last_heartbeat_at=now - timedelta(seconds=silent))  # fmt: skip
    ready(status="RUNNING", worker_id="w-alive", attempts=1)
    ready(status="RUNNING", worker_id="w-alive", attempts=1)
    rows = {row["id"]: row for row in run_json("workers")}
    assert {name: row["state"] for name, row in rows.items()} == {
        "w-alive": "alive", "w-stale": "stale", "w-lost": "lost"}  # fmt: skip
    assert rows["w-alive"]["running_tasks"] == {tasks.add.name: 2}
    text = run("workers")
    assert f"{tasks.add.name} x2" in text
    assert "3 running: 1 alive, 1 stale, 1 lost" in text


def test_workers_with_none_running_says_so():
    assert run("workers") == "No worker is running.\n"
