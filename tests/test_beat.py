"""Beat in-process: due ticks, catch-up after downtime, failures, the stop event, outages."""

import logging
import threading
from datetime import timedelta
from itertools import pairwise

import pytest
from django.db import connection

from django_tasks_q import queue
from django_tasks_q.beat import Beat, run_now
from django_tasks_q.models import Schedule, Task
from tests.conftest import wait_for

pytestmark = pytest.mark.django_db(transaction=True)

NOOP = "tests.testapp.tasks.scheduled_noop"


def db_now():
    return queue.database_now("default")


def make(**fields) -> Schedule:
    schedule = Schedule(**{"name": "every-minute", "task": NOOP, "cron": "* * * * *", **fields})
    schedule.full_clean()
    schedule.save()
    return schedule


def set_next_run(schedule, when):
    """Simulate time passing (or downtime): bypasses save(), as only beat moves next_run_at."""
    Schedule.objects.filter(pk=schedule.pk).update(next_run_at=when)


def beat(**options) -> Beat:
    return Beat(**{"listen": False, "sync": False, **options})


def tasks_of(schedule):
    return list(Task.objects.filter(schedule=schedule).order_by("scheduled_for"))


def test_a_due_tick_is_enqueued_with_its_schedule_tick_and_overrides():
    # Hourly, so that no second tick can be due beside this one, whatever the clock says.
    schedule = make(args=[1, "two"], kwargs={"k": 3}, queue="reports", priority=7,
                    expires_after=timedelta(minutes=5), cron="",
                    interval=timedelta(hours=1))  # fmt: skip
    tick = db_now() - timedelta(seconds=2)
    set_next_run(schedule, tick)

    wait = beat().run_once()

    [task] = tasks_of(schedule)
    assert (task.name, task.args, task.kwargs, task.queue, task.priority, task.status) == (
        NOOP, [1, "two"], {"k": 3}, "reports", 7, "READY"
    )  # fmt: skip
    assert task.scheduled_for == tick
    assert abs(task.expires_at - task.enqueued_at - timedelta(minutes=5)) < timedelta(seconds=1)
    schedule.refresh_from_db()
    assert (schedule.last_run_at, schedule.run_count) == (tick, 1)
    assert schedule.next_run_at > db_now()
    # It sleeps until the next tick, no longer.
    assert 0 < wait <= (schedule.next_run_at - db_now()).total_seconds() + 1


def test_nothing_due_means_no_task_and_a_sleep_until_the_next_tick():
    make(cron="0 0 1 1 *")
    wait = Beat(listen=True, sync=False).run_once()
    assert not Task.objects.exists()
    # Listening, beat sleeps at most a minute: a change would wake it earlier.
    assert 59 <= wait <= 60


def test_without_listen_beat_looks_again_every_poll_interval():
    make(cron="0 0 1 1 *")
    assert beat(poll_interval=0.3).run_once() == pytest.approx(0.3)


def test_disabled_schedules_are_not_run():
    schedule = make(enabled=False)
    assert schedule.next_run_at is None
    set_next_run(schedule, db_now() - timedelta(seconds=1))
    beat().run_once()
    assert not Task.objects.exists()


HOURLY = {"cron": "", "interval": timedelta(hours=1)}


def test_catch_up_skip_enqueues_nothing_for_ticks_missed_during_downtime(caplog):
    schedule = make(**HOURLY, catch_up="skip")
    # Down for hours: the ticks 2.5, 1.5 and 0.5 hours ago were missed.
    set_next_run(schedule, db_now() - timedelta(hours=2.5))
    with caplog.at_level(logging.WARNING, logger="django_tasks_q.beat"):
        beat().run_once()
    assert tasks_of(schedule) == []
    schedule.refresh_from_db()
    assert timedelta(minutes=29) < schedule.next_run_at - db_now() <= timedelta(minutes=30)
    assert (schedule.run_count, schedule.last_run_at) == (0, None)
    assert "'every-minute' missed its ticks" in caplog.text and "none enqueued" in caplog.text


def test_catch_up_once_enqueues_one_task_for_all_ticks_missed_during_downtime():
    schedule = make(**HOURLY, catch_up="once")
    first_missed = db_now() - timedelta(hours=2.5)
    set_next_run(schedule, first_missed)
    beat().run_once()
    [task] = tasks_of(schedule)
    assert task.scheduled_for == first_missed
    schedule.refresh_from_db()
    assert timedelta(minutes=29) < schedule.next_run_at - db_now() <= timedelta(minutes=30)
    assert (schedule.run_count, schedule.last_run_at) == (1, first_missed)


EVERY_SECOND = [{"cron": "", "interval": timedelta(seconds=1)}, {"cron": "* * * * * *"}]


@pytest.mark.parametrize("timing", EVERY_SECOND, ids=["interval", "cron"])
def test_after_a_restart_catch_up_skip_enqueues_the_latest_due_tick_only(timing, caplog):
    schedule = make(**timing, catch_up="skip")
    set_next_run(schedule, db_now() - timedelta(seconds=30))  # beat was down for 30 s
    before = db_now()
    with caplog.at_level(logging.WARNING, logger="django_tasks_q.beat"):
        beat().run_once()
    after = db_now()
    ticks = [task.scheduled_for for task in tasks_of(schedule)]
    schedule.refresh_from_db()
    # The latest tick due when the pass ran, and the schedule goes on from the one after it.
    # A pass that ran past a second boundary also enqueued the ticks due meanwhile, on time.
    assert before - timedelta(seconds=1) < ticks[0] and ticks[-1] <= after
    assert all(later - earlier == timedelta(seconds=1) for earlier, later in pairwise(ticks))
    assert schedule.next_run_at - ticks[-1] == timedelta(seconds=1)
    assert schedule.next_run_at > before
    assert (schedule.run_count, schedule.last_run_at) == (len(ticks), ticks[-1])
    assert "'every-minute' missed its ticks" in caplog.text and "'skip': none" in caplog.text


@pytest.mark.parametrize("timing", EVERY_SECOND, ids=["interval", "cron"])
def test_after_a_restart_catch_up_once_enqueues_one_task_for_the_first_due_tick(timing):
    schedule = make(**timing, catch_up="once")
    first = db_now() - timedelta(seconds=30)
    set_next_run(schedule, first)
    before = db_now()
    beat().run_once()
    caught_up, *on_time = [task.scheduled_for for task in tasks_of(schedule)]
    assert caught_up == first
    # None of the other missed ticks. A pass that ran past a second boundary also enqueued
    # the ticks due meanwhile, on time.
    assert all(tick > before for tick in on_time)
    schedule.refresh_from_db()
    assert schedule.next_run_at > before
    assert (schedule.run_count, schedule.last_run_at) == (1 + len(on_time), [first, *on_time][-1])


def test_a_one_off_runs_once_and_is_then_done():
    run_at = db_now() - timedelta(seconds=1)  # just come
    schedule = make(cron="", run_at=run_at)
    assert schedule.next_run_at == run_at
    runner = beat()
    runner.run_once()
    runner.run_once()
    assert len(tasks_of(schedule)) == 1
    schedule.refresh_from_db()
    assert schedule.next_run_at is None
    # Saving it again (say, new arguments) does not bring it back.
    schedule.args = [1]
    schedule.save()
    schedule.refresh_from_db()
    assert schedule.next_run_at is None


def test_a_schedule_that_cannot_be_enqueued_is_retried_later_and_others_go_on(caplog):
    broken = make(name="broken")
    # Hourly, so its next tick is far off and the wait below is the broken one's backoff (a
    # minutely cron would be due sooner near a minute boundary).
    healthy = make(name="healthy", cron="", interval=timedelta(hours=1))
    Schedule.objects.filter(pk=broken.pk).update(task="tests.testapp.tasks.gone")
    tick = db_now() - timedelta(seconds=1)
    for schedule in (broken, healthy):
        set_next_run(schedule, tick)
    runner = beat(poll_interval=60)
    with caplog.at_level(logging.ERROR, logger="django_tasks_q.beat"):
        wait = runner.run_once()
    assert len(tasks_of(healthy)) == 1
    assert tasks_of(broken) == []
    broken.refresh_from_db()
    assert broken.next_run_at == tick  # the tick is not lost: it runs once the task exists
    assert "No task named 'tests.testapp.tasks.gone' is registered" in caplog.text
    # This beat waits before trying it again instead of spinning on it.
    assert 4 < wait <= 5
    assert "Schedule 'broken' could not be enqueued, trying again in 5s" in caplog.text


def test_the_unique_tick_constraint_refuses_a_tick_enqueued_twice(caplog):
    schedule = make()
    tick = db_now() - timedelta(seconds=1)
    set_next_run(schedule, tick)
    runner = beat()
    runner.run_once()
    # Something bypasses the row lock and sends the schedule back to the same tick.
    set_next_run(schedule, tick)
    with caplog.at_level(logging.ERROR, logger="django_tasks_q.beat"):
        runner.run_once()
    assert len(tasks_of(schedule)) == 1
    assert "tasks_q_schedule_tick_uniq" in caplog.text


def test_run_now_enqueues_at_once_without_moving_the_schedule():
    schedule = make(cron="0 0 1 1 *")
    before = Schedule.objects.get(pk=schedule.pk)
    done = run_now(schedule)
    [task] = tasks_of(schedule)
    assert str(task.pk) == done.task_id
    assert abs(task.scheduled_for - task.enqueued_at) < timedelta(seconds=1)
    after = Schedule.objects.get(pk=schedule.pk)
    assert (after.next_run_at, after.run_count) == (before.next_run_at, 0)


def test_each_enqueued_tick_is_logged_once(caplog):
    names = ["first", "second", "third"]
    for name in names:
        set_next_run(make(name=name, **HOURLY), db_now() - timedelta(seconds=1))
    with caplog.at_level(logging.INFO, logger="django_tasks_q.beat"):
        beat().run_once()
    lines = sorted(r.getMessage() for r in caplog.records if "enqueued" in r.getMessage())
    assert len(lines) == 3 == Task.objects.count()
    assert [line.split(" enqueued ")[0] for line in lines] == [f"Schedule {n!r}" for n in names]
    assert all(f" enqueued {NOOP} #" in line for line in lines)


def test_run_returns_soon_after_stop_is_set_from_another_thread():
    stop = threading.Event()
    runner = Beat(sync=False, listen=True)
    thread = threading.Thread(target=runner.run, args=(stop,))
    thread.start()
    wait_for(lambda: "LISTEN" in _listeners(), message="beat to listen")
    stop.set()
    thread.join(timeout=5)
    assert not thread.is_alive()


def test_a_schedule_created_while_beat_sleeps_wakes_it(caplog):
    stop = threading.Event()
    runner = Beat(sync=False, listen=True)
    thread = threading.Thread(target=runner.run, args=(stop,), daemon=True)
    thread.start()
    try:
        wait_for(lambda: "LISTEN" in _listeners(), message="beat to listen")
        # Without the notification, beat would sleep for a minute.
        schedule = make(cron="", interval=timedelta(hours=1))
        wait_for(lambda: tasks_of(schedule), timeout=10, message="the first tick")
    finally:
        stop.set()
        thread.join(timeout=5)


def test_run_survives_losing_its_connections_and_keeps_enqueueing(caplog):
    schedule = make(cron="", interval=timedelta(seconds=1))
    stop = threading.Event()
    runner = Beat(sync=False, listen=True)
    thread = threading.Thread(target=runner.run, args=(stop,), daemon=True)
    with caplog.at_level(logging.INFO, logger="django_tasks_q.beat"):
        thread.start()
        try:
            wait_for(lambda: len(tasks_of(schedule)) >= 2, message="beat to get going")
            assert _terminate_other_connections() >= 2  # its Django connection and listener
            wait_for(lambda: "lost the database" in caplog.text or "listener lost" in caplog.text,
                     message="beat to notice")  # fmt: skip
            count = len(tasks_of(schedule))
            wait_for(lambda: len(tasks_of(schedule)) >= count + 2, message="beat to go on")
        finally:
            stop.set()
            thread.join(timeout=5)
    assert thread.is_alive() is False
    ticks = [t.scheduled_for for t in tasks_of(schedule)]
    assert ticks == sorted(set(ticks))


def _listeners() -> str:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT coalesce(string_agg(query, ' '), '') FROM pg_stat_activity "
            "WHERE datname = current_database() AND query ILIKE 'LISTEN%%'"
        )
        return cursor.fetchone()[0]


def _terminate_other_connections() -> int:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )
        return cursor.fetchone()[0]
