"""The Schedule admin: list, validation, next runs, code-owned rows, actions and permissions."""

import re
from datetime import timedelta

import pytest
from django.contrib.auth.models import Permission

from django_tasks_q import queue
from django_tasks_q.beat import run_now
from django_tasks_q.models import Schedule, Task

pytestmark = pytest.mark.django_db

NOOP = "tests.testapp.tasks.scheduled_noop"
LIST = "/admin/django_tasks_q/schedule/"
ADD = LIST + "add/"


def make(**fields) -> Schedule:
    schedule = Schedule(**{"name": "every-minute", "task": NOOP, "cron": "* * * * *", **fields})
    schedule.save()
    return schedule


def form(**fields) -> dict:
    data = {"name": "nightly", "task": NOOP, "enabled": "on", "cron": "0 3 * * *",
            "interval": "", "run_at_0": "", "run_at_1": "", "timezone": "Europe/Paris",
            "catch_up": "skip", "args": "[]", "kwargs": "{}", "queue": "", "priority": "",
            "expires_after": ""}  # fmt: skip
    return {**data, **fields}


def change_url(schedule) -> str:
    return f"{LIST}{schedule.pk}/change/"


def text(response) -> str:
    return re.sub(r"\s+", " ", response.content.decode())


def messages_of(response) -> list[str]:
    return [str(m) for m in response.context["messages"]]


@pytest.fixture
def viewer(client, django_user_model):
    """A staff user who may look at schedules but not change them."""
    user = django_user_model.objects.create_user("viewer", password="x", is_staff=True)
    user.user_permissions.add(Permission.objects.get(codename="view_schedule"))
    client.force_login(user)
    return client


def test_the_list_shows_kind_expression_zone_runs_and_the_last_tasks_status(admin_client):
    cron = make(timezone="Europe/Paris")
    make(name="hourly", cron="", interval=timedelta(hours=1))
    done = run_now(cron)
    page = text(admin_client.get(LIST))
    for expected in ("every-minute", "* * * * *", "Europe/Paris", "cron", "hourly", "interval",
                     "every 1:00:00"):  # fmt: skip
        assert expected in page
    link = f'<a href="/admin/django_tasks_q/task/{done.task_id}/change/">#{done.task_id} READY</a>'
    assert link in page


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"cron": "0 3 * *"}, "has 4 fields; write five"),
        ({"timezone": "Europe/Pariss"}, "Did you mean &#x27;Europe/Paris&#x27;?"),
        ({"task": "tests.testapp.tasks.scheduled_nop"}, "No task named"),
        ({"args": "[1, 'two']"}, "Enter JSON: a list in square brackets"),
        ({"kwargs": "{report: 1}"}, "Enter JSON: an object with double-quoted keys"),
        ({"args": '{"a": 1}'}, "args must be a JSON list"),
        ({"interval": "00:05:00"}, "Give exactly one of a cron expression, an interval"),
    ],
)
def test_an_invalid_schedule_is_refused_with_the_fix_and_nothing_is_saved(admin_client, fields,
                                                                         message):  # fmt: skip
    response = admin_client.post(ADD, form(**fields))
    assert response.status_code == 200
    assert message in response.content.decode()
    assert not Schedule.objects.exists()


def test_a_one_off_time_in_the_past_is_refused(admin_client):
    past = queue.database_now("default") - timedelta(hours=1)
    response = admin_client.post(ADD, form(cron="", run_at_0=f"{past:%Y-%m-%d}",
                                           run_at_1=f"{past:%H:%M:%S}", timezone="UTC"))  # fmt: skip
    assert "This time has passed" in response.content.decode()
    assert not Schedule.objects.exists()


def test_a_saved_schedule_shows_its_next_five_runs_in_its_zone(admin_client):
    response = admin_client.post(ADD, form(cron="0 9 * * *", _continue="1"))
    assert response.status_code == 302
    schedule = Schedule.objects.get(name="nightly")
    assert schedule.next_run_at is not None and schedule.source == "admin"
    page = text(admin_client.get(change_url(schedule)))
    runs = re.findall(r"\d{4}-\d\d-\d\d 09:00:00 CES?T \(\d{4}-\d\d-\d\d 0[78]:00:00 UTC\)", page)
    assert len(runs) == 5


def test_a_row_owned_by_code_says_so_and_only_its_enabled_switch_can_change(admin_client):
    schedule = make(source="code", kwargs={"a": 1})
    url = change_url(schedule)
    page = text(admin_client.get(url))
    assert "Declared in code" in page
    assert 'name="cron"' not in page and 'name="kwargs"' not in page
    assert 'name="enabled"' in page
    response = admin_client.post(url, {"cron": "0 0 * * *", "kwargs": "{}"})  # enabled: off
    assert response.status_code == 302
    schedule.refresh_from_db()
    assert (schedule.cron, schedule.kwargs, schedule.enabled) == ("* * * * *", {"a": 1}, False)


def act(client, action, *schedules):
    return client.post(
        LIST, {"action": action, "_selected_action": [s.pk for s in schedules]}, follow=True
    )


def test_enable_and_disable_report_how_many_schedules_changed(admin_client):
    on, also_on = make(name="a"), make(name="b")
    off = make(name="c", enabled=False)
    response = act(admin_client, "disable_schedules", on, also_on, off)
    assert messages_of(response) == ["2 schedules disabled."]
    assert not Schedule.objects.filter(enabled=True).exists()
    assert set(Schedule.objects.values_list("next_run_at", flat=True)) == {None}
    response = act(admin_client, "enable_schedules", on)
    assert messages_of(response) == ["1 schedule enabled."]
    assert Schedule.objects.get(pk=on.pk).next_run_at is not None


def test_run_now_enqueues_one_task_per_schedule(admin_client):
    first, second = make(name="a"), make(name="b", args=[5])
    response = act(admin_client, "run_schedules_now", first, second)
    assert messages_of(response) == ["2 tasks enqueued."]
    assert sorted(Task.objects.values_list("schedule__name", "args")) == [("a", []), ("b", [5])]


def test_run_now_reports_a_schedule_whose_task_is_gone(admin_client):
    schedule = make()
    Schedule.objects.filter(pk=schedule.pk).update(task="tests.testapp.tasks.gone")
    response = act(admin_client, "run_schedules_now", schedule)
    [message] = messages_of(response)
    assert message.startswith("every-minute: not enqueued: No task named")
    assert not Task.objects.exists()


def test_a_user_without_change_permission_sees_schedules_but_no_actions(viewer):
    schedule = make()
    page = viewer.get(LIST).content.decode()
    assert "every-minute" in page
    assert "disable_schedules" not in page and "run_schedules_now" not in page
    for action in ("disable_schedules", "run_schedules_now"):
        act(viewer, action, schedule)
    assert Schedule.objects.get(pk=schedule.pk).enabled
    assert not Task.objects.exists()
    assert viewer.post(change_url(schedule), form(enabled="")).status_code == 403
