"""Schedules declared in code: checked where declared, synced into the table by beat."""

import logging
from datetime import timedelta

import pytest
from django.test import override_settings

from django_tasks_q import background_task, schedule_sync
from django_tasks_q.exceptions import InvalidTask
from django_tasks_q.models import Schedule

pytestmark = pytest.mark.django_db(transaction=True)

NOOP = "tests.testapp.tasks.scheduled_noop"


def declare(*entries):
    return override_settings(TASKS_Q={"SCHEDULES": list(entries)})


def entry(**fields):
    return {"name": "reports", "task": NOOP, "cron": "0 3 * * *", **fields}


def test_a_decorator_schedule_becomes_a_row_owned_by_code():
    result = schedule_sync.sync()
    assert "testapp.new_year" in result.created
    row = Schedule.objects.get(name="testapp.new_year")
    assert (row.task, row.cron, row.timezone, row.source, row.enabled) == (
        "testapp.new_year", "0 0 1 1 *", "Europe/Paris", "code", True
    )  # fmt: skip
    assert row.next_run_at is not None


def test_settings_schedules_are_created_then_left_alone_when_unchanged():
    with declare(entry(args=[1], interval=None, timezone="Europe/Paris", catch_up="once")):
        assert "reports" in schedule_sync.sync().created
        first = Schedule.objects.get(name="reports")
        again = schedule_sync.sync()
    assert again.created == again.updated == again.deleted == []
    assert Schedule.objects.get(name="reports").next_run_at == first.next_run_at
    assert (first.args, first.catch_up, first.source) == ([1], "once", "code")


def test_an_interval_may_be_a_timedelta_or_seconds():
    with declare(entry(name="a", cron="", interval=90), entry(name="b", cron="",
                                                            interval=timedelta(minutes=2))):  # fmt: skip
        schedule_sync.sync()
    assert Schedule.objects.get(name="a").interval == timedelta(seconds=90)
    assert Schedule.objects.get(name="b").interval == timedelta(minutes=2)


def test_a_changed_declaration_updates_the_row_and_keeps_the_operators_enabled_switch():
    with declare(entry()):
        schedule_sync.sync()
    row = Schedule.objects.get(name="reports")
    row.enabled = False  # paused in the admin
    row.save()
    with declare(entry(cron="30 4 * * *", kwargs={"full": True})):
        assert schedule_sync.sync().updated == ["reports"]
    row = Schedule.objects.get(name="reports")
    assert (row.cron, row.kwargs, row.enabled) == ("30 4 * * *", {"full": True}, False)


def test_rows_owned_by_code_that_are_no_longer_declared_are_deleted():
    with declare(entry(), entry(name="gone")):
        schedule_sync.sync()
    admin_row = Schedule(name="made-in-admin", task=NOOP, cron="* * * * *")
    admin_row.save()
    with declare(entry()):
        assert schedule_sync.sync().deleted == ["gone"]
    assert set(Schedule.objects.values_list("name", flat=True)) == {
        "reports", "made-in-admin", "testapp.new_year"
    }  # fmt: skip


def test_an_admin_row_with_a_declared_name_is_taken_over_by_code(caplog):
    Schedule(name="reports", task=NOOP, cron="* * * * *").save()
    with declare(entry()), caplog.at_level(logging.WARNING, logger="django_tasks_q.beat"):
        schedule_sync.sync()
    row = Schedule.objects.get(name="reports")
    assert (row.source, row.cron) == ("code", "0 3 * * *")
    assert "created in the admin and is now declared in code" in caplog.text


def test_an_invalid_declaration_is_logged_and_saves_nothing(caplog):
    with declare(entry(cron="0 3 * *"), entry(name="ok")), caplog.at_level(logging.ERROR):
        result = schedule_sync.sync()
    assert "has 4 fields" in result.invalid["reports"]
    assert list(Schedule.objects.filter(source="code").values_list("name", flat=True).order_by(
        "name")) == ["ok", "testapp.new_year"]  # fmt: skip
    assert "Schedule 'reports' declared in code is invalid, table unchanged" in caplog.text


def test_a_declaration_turned_invalid_leaves_its_row_as_it_was():
    with declare(entry()):
        schedule_sync.sync()
    with declare(entry(task="tests.testapp.tasks.renamed_away")):
        result = schedule_sync.sync()
    assert "No task named 'tests.testapp.tasks.renamed_away'" in result.invalid["reports"]
    assert Schedule.objects.get(name="reports").task == NOOP
    # A malformed one (unknown key) keeps its row too, rather than counting as removed.
    with declare(entry(crn="0 3 * * *")):
        result = schedule_sync.sync()
    assert "unknown key 'crn'; did you mean 'cron'?" in next(iter(result.invalid.values()))
    assert Schedule.objects.filter(name="reports").exists()


def test_two_declarations_with_one_name_keep_the_first():
    with declare(entry(), entry(cron="0 4 * * *")):
        result = schedule_sync.sync()
    assert result.invalid == {"reports": "Two schedules in code are named 'reports'."}
    assert Schedule.objects.get(name="reports").cron == "0 3 * * *"


@pytest.mark.parametrize(
    ("schedule", "fix"),
    [
        ("61 * * * *", "Invalid cron expression"),
        (timedelta(0), "at least one second"),
        ({"cron": "* * * * *", "timezone": "Mars/Olympus"}, "Unknown time zone 'Mars/Olympus'"),
        ({"cron": "* * * * *", "task": "x"}, "leave out 'task'"),
        ({"cron": "* * * * *", "crom": "x"}, "did you mean 'cron'?"),
        (object(), "must be a cron expression, a timedelta, a number of seconds"),
    ],
)
def test_a_bad_decorator_schedule_fails_at_import(schedule, fix):
    with pytest.raises(InvalidTask, match=fix):

        @background_task(name="tests.never_registered", schedule=schedule)
        def never_registered():
            pass
