"""The Schedule model: validation with messages that name the fix, and next_run_at on save."""

from datetime import UTC, datetime, timedelta

import pytest
from django.core.exceptions import ValidationError
from django.test import override_settings

from django_tasks_q import queue
from django_tasks_q.beat import Beat
from django_tasks_q.models import Schedule, Task
from django_tasks_q.schedules import Cron, ScheduleError, get_zone

pytestmark = pytest.mark.django_db(transaction=True)

NOOP = "tests.testapp.tasks.scheduled_noop"


def schedule(**fields) -> Schedule:
    return Schedule(**{"name": "s", "task": NOOP, "cron": "*/5 * * * *", **fields})


def errors(**fields) -> dict[str, list[str]]:
    with pytest.raises(ValidationError) as caught:
        schedule(**fields).full_clean()
    return caught.value.message_dict


def db_now():
    return queue.database_now("default")


# -- validation ------------------------------------------------------------------------------


def test_a_valid_schedule_passes_and_its_cron_is_tidied():
    valid = schedule(cron=" 0  9 * * 1-5 ", timezone="Europe/Paris", args=[1], kwargs={"a": 2})
    valid.full_clean()
    assert valid.cron == "0 9 * * 1-5"


@pytest.mark.parametrize(
    ("fields", "field", "fix"),
    [
        ({"cron": "*/5 * * *"}, "cron", "has 4 fields; write five"),
        ({"cron": "99 * * * *"}, "cron", "Fields are minute (0-59)"),
        ({"timezone": "Europe/Pariss"}, "timezone", "Did you mean 'Europe/Paris'?"),
        ({"task": "tests.testapp.tasks.scheduled_nop"}, "task",
         "Did you mean 'tests.testapp.tasks.scheduled_noop'?"),
        ({"args": {"a": 1}}, "args", "args must be a JSON list"),
        ({"args": [datetime(2030, 1, 1, tzinfo=UTC)]}, "args",
         "args[0] is of type datetime.datetime, which is not JSON-serialisable"),
        ({"kwargs": [1]}, "kwargs", "kwargs must be a JSON object"),
        ({"kwargs": {"x": float("nan")}}, "kwargs", "which JSON cannot represent"),
        ({"cron": "", "interval": timedelta(milliseconds=10)}, "interval", "at least one second"),
        ({"interval": timedelta(minutes=5)}, "cron",
         "exactly one of a cron expression, an interval or a one-off time (this one has cron "
         "and interval)"),
        ({"cron": ""}, "cron", "Give exactly one of"),
        ({"priority": 101}, "priority", "from -100 to 100"),
        ({"expires_after": timedelta(0)}, "expires_after", "positive duration"),
    ],
)  # fmt: skip
def test_invalid_values_are_refused_with_a_message_naming_the_fix(fields, field, fix):
    found = errors(**fields)
    assert any(fix in message for message in found[field]), found


def test_a_queue_the_backend_does_not_allow_is_refused():
    backend = {"BACKEND": "django_tasks_q.backend.PostgresBackend", "QUEUES": ["default"]}
    with override_settings(TASKS={"default": backend}):
        found = errors(queue="reports")
    assert "queue 'reports' is not allowed" in found["__all__"][0]


def test_an_orm_save_of_an_impossible_timing_raises_and_saves_nothing():
    with pytest.raises(ScheduleError, match="never matches"):
        schedule(cron="0 0 31 2 *").save()
    assert not Schedule.objects.exists()


# -- next_run_at -----------------------------------------------------------------------------


def test_a_new_cron_schedule_starts_at_its_next_tick():
    before = db_now()
    created = schedule(cron="0 9 * * *", timezone="Europe/Paris")
    created.save()
    expected = Cron("0 9 * * *", get_zone("Europe/Paris")).next_after(before)
    assert created.next_run_at == expected


def test_a_new_interval_schedule_runs_at_once():
    before = db_now()
    created = schedule(cron="", interval=timedelta(hours=1))
    created.save()
    assert before <= created.next_run_at <= db_now()


def test_a_one_off_starts_at_its_time_and_a_disabled_schedule_has_no_next_run():
    at = db_now() + timedelta(days=1)
    one_off = schedule(name="once", cron="", run_at=at)
    one_off.save()
    assert one_off.next_run_at == at
    disabled = schedule(name="off", enabled=False)
    disabled.save()
    assert disabled.next_run_at is None


def test_editing_the_timing_recomputes_next_run_other_edits_keep_it():
    row = schedule(cron="0 0 1 1 *")
    row.save()
    first = row.next_run_at
    row.args = [1]
    row.save()
    assert Schedule.objects.get(pk=row.pk).next_run_at == first
    row.cron = "0 0 1 6 *"
    row.save()
    assert Schedule.objects.get(pk=row.pk).next_run_at.month == 6


def test_saving_a_stale_copy_does_not_undo_what_beat_recorded():
    row = schedule(cron="", interval=timedelta(seconds=30))
    row.save()
    stale = Schedule.objects.get(pk=row.pk)  # an admin page opened now
    Beat(listen=False, sync=False).run_once()  # beat enqueues the first tick meanwhile
    fresh = Schedule.objects.get(pk=row.pk)
    assert fresh.run_count == 1
    stale.kwargs = {"changed": True}
    stale.save()
    saved = Schedule.objects.get(pk=row.pk)
    assert saved.kwargs == {"changed": True}
    assert (saved.run_count, saved.last_run_at, saved.next_run_at) == (
        1, fresh.last_run_at, fresh.next_run_at
    )  # fmt: skip
    assert Task.objects.count() == 1


def test_enabling_an_interval_continues_from_its_last_run_never_from_the_past():
    row = schedule(cron="", interval=timedelta(hours=2))
    row.save()
    Beat(listen=False, sync=False).run_once()
    row = Schedule.objects.get(pk=row.pk)
    last = row.last_run_at
    row.enabled = False
    row.save()
    assert Schedule.objects.get(pk=row.pk).next_run_at is None
    row.enabled = True
    row.save()
    assert Schedule.objects.get(pk=row.pk).next_run_at == last + timedelta(hours=2)
    # Disabled for longer than the interval: it runs when enabled, not "catching up".
    Schedule.objects.filter(pk=row.pk).update(last_run_at=last - timedelta(hours=5))
    row = Schedule.objects.get(pk=row.pk)
    row.enabled = False
    row.save()
    row.enabled = True
    before = db_now()
    row.save()
    assert before <= Schedule.objects.get(pk=row.pk).next_run_at <= db_now()


def test_saving_wakes_listening_beats_but_beat_bookkeeping_does_not():
    listener = queue.listen_connection("default", channel=queue.SCHEDULES_CHANNEL)
    try:
        row = schedule(cron="", interval=timedelta(hours=1))
        row.save()
        assert len(list(listener.notifies(timeout=2, stop_after=1))) == 1
        Beat(listen=False, sync=False).run_once()  # enqueues the first tick
        assert Task.objects.count() == 1
        assert list(listener.notifies(timeout=0.3, stop_after=1)) == []
    finally:
        listener.close()
