"""The task and worker admin: lists, filters, search, detail pages and actions, with
permissions. (The browser tests in test_admin_browser.py drive the same pages in Chromium.)"""

from datetime import timedelta

import pytest
from django.contrib.auth.models import Permission, User
from django.db.models import Max, Min
from django.urls import reverse
from django.utils import timezone

from django_tasks_q import actions
from django_tasks_q.models import Task, Worker
from tests.testapp import tasks

pytestmark = pytest.mark.django_db

CHANGELIST = "admin:django_tasks_q_task_changelist"


def failed_row(**fields) -> Task:
    error = {"attempt": 1, "worker_id": "w-1", "type": "builtins.ValueError",
             "message": "bad order 7", "traceback": "Traceback (most recent call last):\nValueError: bad order 7",
             "at": "2026-11-23T10:00:00+00:00"}  # fmt: skip
    defaults = {"name": tasks.add.name, "args": [1, "order-7"], "status": "FAILED", "attempts": 1,
                "max_attempts": 1, "errors": [error], "finished_at": timezone.now(),
                "last_attempted_at": timezone.now() - timedelta(seconds=2),
                "started_at": timezone.now() - timedelta(seconds=2), "worker_id": "w-1"}  # fmt: skip
    return Task.objects.create(**{**defaults, **fields})


def staff(*codenames: str) -> User:
    user = User.objects.create_user("operator", password="pw", is_staff=True)
    user.user_permissions.set(Permission.objects.filter(codename__in=codenames))
    return user


@pytest.fixture
def operator_client(client):
    client.force_login(staff("view_task", "change_task", "delete_task", "view_worker"))
    return client


@pytest.fixture
def viewer_client(client):
    client.force_login(staff("view_task", "view_worker"))
    return client


def listed_ids(response) -> set[int]:
    return {task.pk for task in response.context["cl"].result_list}


def test_the_list_shows_every_state_with_its_badge(operator_client):
    for status in ["READY", "RUNNING", "SUCCESSFUL", "CANCELLED"]:
        Task.objects.create(name=tasks.add.name, status=status)
    failed_row()
    response = operator_client.get(reverse(CHANGELIST))
    assert response.status_code == 200
    html = response.content.decode()
    for status in ["ready", "running", "successful", "failed", "cancelled"]:
        assert f"tasks-q-status-{status}" in html
    assert "1 / 1" in html  # attempts / max


def test_filters_by_status_queue_task_name_and_errors(operator_client):
    failed = failed_row(queue="emails")
    ready = Task.objects.create(name=tasks.record.name, queue="default")
    url = reverse(CHANGELIST)
    assert listed_ids(operator_client.get(url, {"status__exact": "FAILED"})) == {failed.pk}
    assert listed_ids(operator_client.get(url, {"queue": "default"})) == {ready.pk}
    assert listed_ids(operator_client.get(url, {"name": tasks.record.name})) == {ready.pk}
    assert listed_ids(operator_client.get(url, {"has_errors": "yes"})) == {failed.pk}
    assert listed_ids(operator_client.get(url, {"has_errors": "no"})) == {ready.pk}


def test_the_filters_offer_registered_task_names_without_scanning_the_table(operator_client):
    response = operator_client.get(reverse(CHANGELIST))
    choices = [
        choice["display"]
        for spec in response.context["cl"].filter_specs
        if spec.title == "task name"
        for choice in spec.choices(response.context["cl"])
    ]
    assert tasks.add.name in choices and tasks.record.name in choices


def test_search_finds_by_id_name_and_argument_text(operator_client):
    failed = failed_row()
    other = Task.objects.create(name=tasks.record.name, args=["invoice-99"])
    chosen = Task.objects.create(name=tasks.add.name, args=[1, 2], chosen_id="nightly-2026-11-27")
    url = reverse(CHANGELIST)
    assert listed_ids(operator_client.get(url, {"q": "nightly-2026-11-27"})) == {chosen.pk}
    assert listed_ids(operator_client.get(url, {"q": str(failed.pk)})) >= {failed.pk}
    assert listed_ids(operator_client.get(url, {"q": f"#{other.pk}"})) == {other.pk}
    assert listed_ids(operator_client.get(url, {"q": "invoice-99"})) == {other.pk}
    assert listed_ids(operator_client.get(url, {"q": "record"})) == {other.pk}


def test_the_list_does_not_count_past_its_limit(operator_client, monkeypatch):
    from django_tasks_q.admin import tasks as task_admin

    monkeypatch.setattr(task_admin, "COUNT_LIMIT", 3)
    Task.objects.bulk_create(Task(name=tasks.add.name, status="FAILED") for _ in range(6))
    response = operator_client.get(reverse(CHANGELIST), {"status__exact": "FAILED"})
    assert response.context["cl"].result_count == 4  # stopped counting at the limit + 1


def test_the_detail_page_is_read_only_and_shows_arguments_and_every_traceback(operator_client):
    Worker.objects.create(id="w-1", hostname="h", pid=1, concurrency=1)
    failed = failed_row()
    response = operator_client.get(reverse("admin:django_tasks_q_task_change", args=[failed.pk]))
    html = response.content.decode()
    assert response.status_code == 200
    assert "ValueError: bad order 7" in html and "Attempt 1" in html
    assert "&quot;order-7&quot;" in html  # pretty-printed JSON arguments
    assert reverse("admin:django_tasks_q_worker_change", args=["w-1"]) in html
    assert 'name="_save"' not in html


def test_retry_now_makes_failed_and_cancelled_tasks_ready_and_keeps_their_history(operator_client):
    failed = failed_row()
    cancelled = Task.objects.create(name=tasks.add.name, status="CANCELLED")
    done = Task.objects.create(name=tasks.add.name, status="SUCCESSFUL")
    response = operator_client.post(
        reverse(CHANGELIST),
        {"action": "retry_now", "_selected_action": [failed.pk, cancelled.pk, done.pk]},
        follow=True,
    )
    text = " ".join(str(m) for m in response.context["messages"])
    assert "2 tasks will run again now" in text and "1 left alone" in text
    failed.refresh_from_db()
    assert (failed.status, failed.attempts, failed.max_attempts) == ("READY", 1, 2)
    assert failed.errors[0]["message"] == "bad order 7" and failed.finished_at is None
    assert Task.objects.get(pk=cancelled.pk).status == "READY"
    assert Task.objects.get(pk=done.pk).status == "SUCCESSFUL"


def test_retry_now_skips_tasks_whose_unique_key_is_taken_and_retries_the_rest(operator_client):
    keyed = Task.objects.create(name=tasks.add.name, status="FAILED", unique_key="report-7")
    Task.objects.create(name=tasks.add.name, status="READY", unique_key="report-7")  # newer
    plain = Task.objects.create(name=tasks.add.name, status="FAILED")
    response = operator_client.post(
        reverse(CHANGELIST),
        {"action": "retry_now", "_selected_action": [keyed.pk, plain.pk]},
        follow=True,
    )
    assert response.status_code == 200
    text = " ".join(str(m) for m in response.context["messages"])
    assert "1 task will run again now" in text
    assert "1 task was not retried because another task with the same unique key" in text
    assert f"{tasks.add.name} #{keyed.pk} (key 'report-7')" in text
    assert "left alone" not in text  # it is failed: not retried for its key, not its state
    assert Task.objects.get(pk=plain.pk).status == "READY"
    assert Task.objects.get(pk=keyed.pk).status == "FAILED"


def test_retry_now_of_two_tasks_sharing_a_unique_key_retries_the_newest(operator_client):
    older = Task.objects.create(name=tasks.add.name, status="FAILED", unique_key="sync-1")
    newer = Task.objects.create(name=tasks.add.name, status="CANCELLED", unique_key="sync-1")
    response = operator_client.post(
        reverse(CHANGELIST),
        {"action": "retry_now", "_selected_action": [older.pk, newer.pk]},
        follow=True,
    )
    text = " ".join(str(m) for m in response.context["messages"])
    assert "1 task will run again now" in text and f"#{older.pk} (key 'sync-1')" in text
    assert Task.objects.get(pk=newer.pk).status == "READY"
    assert Task.objects.get(pk=older.pk).status == "FAILED"


def test_retry_now_reports_a_key_taken_after_its_check_and_retries_the_rest(
    operator_client, monkeypatch
):
    keyed = failed_row(unique_key="report-7")
    plain = failed_row()
    check = actions._keys_held

    def check_then_lose_the_race(database, keys):
        held = check(database, keys)
        # Another process enqueues a task with the key just after the admin looked.
        Task.objects.create(name=tasks.add.name, unique_key="report-7")
        return held

    monkeypatch.setattr(actions, "_keys_held", check_then_lose_the_race)
    response = operator_client.post(
        reverse(CHANGELIST),
        {"action": "retry_now", "_selected_action": [keyed.pk, plain.pk]},
        follow=True,
    )
    assert response.status_code == 200
    text = " ".join(str(m) for m in response.context["messages"])
    assert "1 task will run again now" in text
    assert (
        "1 task was not retried because another task with the same unique key is waiting or "
        f"running: {tasks.add.name} #{keyed.pk} (key 'report-7')."
    ) in text
    assert Task.objects.get(pk=plain.pk).status == "READY"
    assert Task.objects.get(pk=keyed.pk).status == "FAILED"


def test_cancel_cancels_ready_tasks_and_asks_running_ones_to_stop(operator_client):
    ready = Task.objects.create(name=tasks.add.name)
    running = Task.objects.create(name=tasks.add.name, status="RUNNING", attempts=1)
    response = operator_client.post(
        reverse(CHANGELIST),
        {"action": "cancel_tasks", "_selected_action": [ready.pk, running.pk]},
        follow=True,
    )
    text = " ".join(str(m) for m in response.context["messages"])
    assert "1 task cancelled" in text and "1 running task was asked to stop" in text
    assert Task.objects.get(pk=ready.pk).status == "CANCELLED"
    running.refresh_from_db()
    assert running.status == "RUNNING" and running.cancel_requested_at is not None


def test_enqueue_a_copy_runs_the_same_call_again(operator_client):
    original = failed_row(queue="emails", priority=5)
    stranger = Task.objects.create(name="gone.tasks.old", status="FAILED")
    response = operator_client.post(
        reverse(CHANGELIST),
        {"action": "enqueue_copy", "_selected_action": [original.pk, stranger.pk]},
        follow=True,
    )
    text = " ".join(str(m) for m in response.context["messages"])
    assert "1 copy enqueued" in text and "gone.tasks.old" in text
    copy = Task.objects.exclude(pk__in=[original.pk, stranger.pk]).get()
    assert (copy.name, copy.args, copy.queue, copy.priority, copy.status) == (
        original.name, original.args, "emails", 5, "READY",
    )  # fmt: skip


def test_delete_needs_the_delete_permission(operator_client):
    row = failed_row()
    operator_client.post(
        reverse(CHANGELIST),
        {"action": "delete_selected", "_selected_action": [row.pk], "post": "yes"},
    )
    assert not Task.objects.filter(pk=row.pk).exists()


@pytest.mark.parametrize("action", ["retry_now", "cancel_tasks", "enqueue_copy", "delete_selected"])
def test_a_user_who_may_only_view_can_trigger_no_action(viewer_client, action):
    failed = failed_row()
    ready = Task.objects.create(name=tasks.add.name)
    before = list(Task.objects.order_by("pk").values_list("pk", "status"))
    response = viewer_client.get(reverse(CHANGELIST))
    assert response.status_code == 200
    assert action not in response.content.decode()
    viewer_client.post(
        reverse(CHANGELIST),
        {"action": action, "_selected_action": [failed.pk, ready.pk], "post": "yes"},
    )
    assert list(Task.objects.order_by("pk").values_list("pk", "status")) == before


def test_anonymous_users_are_sent_to_the_login_page(client):
    response = client.get(reverse(CHANGELIST))
    assert response.status_code == 302 and "/login/" in response["Location"]


def test_the_worker_list_marks_stale_and_lost_heartbeats(operator_client, settings):
    settings.TASKS_Q = {"LEASE_SECONDS": 60, "HEARTBEAT_INTERVAL": 5}
    Worker.objects.create(id="fresh", hostname="a", pid=1, concurrency=2, queues=["emails"])
    for worker_id, silent_for in [("stale", 30), ("lost", 3600)]:
        Worker.objects.create(id=worker_id, hostname="b", pid=2, concurrency=2)
        Worker.objects.filter(pk=worker_id).update(
            last_heartbeat_at=timezone.now() - timedelta(seconds=silent_for)
        )
    response = operator_client.get(reverse("admin:django_tasks_q_worker_changelist"))
    html = response.content.decode()
    for condition in ["live", "stale", "lost"]:
        assert html.count(f"tasks-q-heartbeat-{condition}") == 1, condition
    assert "(lost)" in html and "(stale)" in html and "emails" in html
    lost_only = operator_client.get(
        reverse("admin:django_tasks_q_worker_changelist"), {"heartbeat": "lost"}
    )
    assert [w.pk for w in lost_only.context["cl"].result_list] == ["lost"]


@pytest.mark.parametrize("kind", ["year", "month", "day"])
@pytest.mark.parametrize("few_rows", [False, True])
def test_date_periods_match_djangos_generic_query(kind, few_rows, settings):
    settings.TIME_ZONE = "America/New_York"  # periods are calendar periods of the current zone
    from datetime import datetime
    from zoneinfo import ZoneInfo

    utc = ZoneInfo("UTC")
    moments = [datetime(2025, 12, 31, 23, 30, tzinfo=utc), datetime(2026, 1, 1, 4, 59, tzinfo=utc),
               datetime(2026, 1, 1, 5, 1, tzinfo=utc), datetime(2026, 3, 8, 6, 30, tzinfo=utc),
               datetime(2026, 3, 8, 7, 30, tzinfo=utc), datetime(2026, 11, 1, 5, 30, tzinfo=utc)]  # fmt: skip
    rows = Task.objects.bulk_create(Task(name=tasks.add.name) for _ in moments)
    for row, moment in zip(rows, moments, strict=True):
        Task.objects.filter(pk=row.pk).update(enqueued_at=moment)
    Task.objects.create(name=tasks.record.name)  # filtered out below
    queryset = Task.objects.filter(name=tasks.add.name)
    fast = queryset.few_rows() if few_rows else queryset
    generic = list(super(type(queryset), queryset).datetimes("enqueued_at", kind))
    assert list(fast.datetimes("enqueued_at", kind)) == generic
    assert list(fast.datetimes("enqueued_at", kind, order="DESC")) == generic[::-1]
    bounds = {"first": min(moments), "last": max(moments)}
    assert fast.aggregate(first=Min("enqueued_at"), last=Max("enqueued_at")) == bounds
