"""runtaskbeat as real processes: several at once, live edits, SIGKILL mid-enqueue, signals."""

import itertools
import re
import signal
from datetime import timedelta

import pytest
from django.db import connection

from django_tasks_q import queue
from django_tasks_q.models import Schedule, Task
from tests.conftest import wait_for

pytestmark = pytest.mark.django_db(transaction=True)

NOOP = "tests.testapp.tasks.scheduled_noop"
SECOND = timedelta(seconds=1)


def db_now():
    return queue.database_now("default")


def make(name: str, **fields) -> Schedule:
    schedule = Schedule(**{"name": name, "task": NOOP, "interval": SECOND, **fields})
    schedule.full_clean()
    schedule.save()
    return schedule


def ticks(schedule, after=None) -> list:
    rows = Task.objects.filter(schedule=schedule)
    if after is not None:
        rows = rows.filter(scheduled_for__gt=after)
    return list(rows.order_by("scheduled_for").values_list("scheduled_for", flat=True))


def started(beat):
    # Listening too: a schedule saved from here on wakes it.
    wait_for(lambda: f"-{beat.pid} " in _listening_application_names() + " ",
             message="beat to listen")  # fmt: skip
    return beat


@pytest.mark.slow
def test_two_beats_never_enqueue_a_tick_of_a_one_second_schedule_twice(start_beat):
    beats = [started(start_beat()) for _ in range(2)]
    schedule = make("every-second")
    first = schedule.next_run_at
    wait_for(lambda: (found := ticks(schedule)) and found[-1] >= first + 10 * SECOND,
             timeout=40, interval=0.2, message="ten seconds of ticks")  # fmt: skip
    for beat in beats:
        beat.terminate()
    assert [beat.wait() for beat in beats] == [0, 0]

    found = ticks(schedule)
    assert len(found) == len(set(found)), "a tick was enqueued twice"
    # Every tick is on the one-second grid. None is missed silently: a beat held up past the
    # next tick enqueues only the latest due one (catch_up="skip") and says so.
    assert all((tick - first) % SECOND == timedelta(0) for tick in found)
    if found != [first + n * SECOND for n in range(len(found))]:
        assert any("missed its ticks" in beat.log() for beat in beats)
    assert len(found) >= 6
    logged = sum(beat.log().count("Schedule 'every-second' enqueued") for beat in beats)
    assert logged == len(found)
    schedule.refresh_from_db()
    assert schedule.run_count == len(found)


@pytest.mark.slow
def test_edits_and_disabling_take_effect_at_the_next_tick(start_beat):
    beat = started(start_beat())
    edited = make("edited", args=["before"])
    witness = make("witness")
    wait_for(lambda: len(ticks(edited)) >= 2, message="the first ticks")

    edited.args = ["after"]
    edited.save()
    edited_at = db_now()
    wait_for(lambda: ticks(edited, after=edited_at), message="a tick after the edit")
    newer = Task.objects.filter(schedule=edited, scheduled_for__gt=edited_at)
    assert {tuple(task.args) for task in newer} == {("after",)}

    edited.interval = 2 * SECOND
    edited.save()
    retimed_at = db_now()
    wait_for(lambda: len(ticks(edited, after=retimed_at)) >= 2, message="ticks on the new interval")
    spaced = ticks(edited, after=retimed_at)
    assert {later - earlier for earlier, later in itertools.pairwise(spaced)} == {2 * SECOND}

    edited.enabled = False
    edited.save()
    disabled_at = db_now()
    count = len(ticks(edited))
    # The witness proves beat went on for three more ticks; the disabled one had none.
    wait_for(lambda: len(ticks(witness, after=disabled_at)) >= 3, message="the witness's ticks")
    assert ticks(edited, after=disabled_at) == []
    assert len(ticks(edited)) == count
    beat.terminate()
    assert beat.wait() == 0


def test_a_beat_killed_inside_the_enqueue_transaction_neither_loses_nor_duplicates_it(start_beat):
    schedule = make("hourly", interval=timedelta(hours=1))  # its first tick is due at once
    tick = schedule.next_run_at
    # This beat stops (test hook in tests/testapp/tasks.py) after inserting the task, before
    # committing: the task row and the schedule's new next_run_at exist only in there.
    doomed = start_beat(env={"TESTAPP_PAUSE_ENQUEUE": NOOP})
    wait_for(lambda: "paused enqueueing" in doomed.log(), message="the beat to pause")
    assert ticks(schedule) == []
    # A second beat skips the row the first one holds, and does not enqueue the tick either.
    rescuer = started(start_beat())
    assert ticks(schedule) == []

    doomed.process.send_signal(signal.SIGKILL)
    doomed.process.wait(timeout=10)

    wait_for(lambda: ticks(schedule), message="the second beat to enqueue the tick")
    assert ticks(schedule) == [tick]
    schedule.refresh_from_db()
    assert (schedule.run_count, schedule.last_run_at) == (1, tick)
    assert schedule.next_run_at == tick + timedelta(hours=1)
    rescuer.terminate()
    assert rescuer.wait() == 0
    assert "Schedule 'hourly' enqueued " + NOOP in rescuer.log()


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_stops_beat_cleanly(start_beat, signum):
    beat = started(start_beat())
    beat.process.send_signal(signum)
    assert beat.wait() == 0
    log = beat.log()
    assert f"got {signal.Signals(signum).name}: stopping" in log
    assert re.search(r"Beat \S+ stopped after enqueueing \d+ tasks\n$", log)
    assert "Traceback" not in log


def test_without_listen_notify_beat_polls_for_new_schedules(start_beat):
    beat = start_beat("--poll-interval", "0.2", env={"TASKS_Q_LISTEN_NOTIFY": "false"})
    wait_for(lambda: "listen=False" in beat.log(), message="beat to start")
    schedule = make("polled", interval=timedelta(hours=1))
    wait_for(lambda: ticks(schedule), message="the tick")
    assert "beat" not in _listening_application_names()
    beat.terminate()
    assert beat.wait() == 0


def test_beat_syncs_the_schedules_declared_in_code_when_it_starts(start_beat):
    beat = started(start_beat())
    assert Schedule.objects.get(name="testapp.new_year").source == "code"
    assert "Schedule 'testapp.new_year' created from code" in beat.log()
    beat.terminate()
    assert beat.wait() == 0


def test_a_beat_on_an_unmigrated_database_says_to_migrate(start_beat):
    with connection.cursor() as cursor:
        cursor.execute("ALTER TABLE django_tasks_q_schedule RENAME TO django_tasks_q_schedule_x")
    try:
        beat = start_beat()
        assert beat.wait() != 0
    finally:
        with connection.cursor() as cursor:
            cursor.execute(
                "ALTER TABLE django_tasks_q_schedule_x RENAME TO django_tasks_q_schedule"
            )
    assert "Run `python manage.py migrate`" in beat.log()
    assert "Traceback" not in beat.log()


def _listening_application_names() -> str:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT coalesce(string_agg(application_name, ' '), '') FROM pg_stat_activity "
            "WHERE datname = current_database() AND query ILIKE 'LISTEN%%'"
        )
        return cursor.fetchone()[0]


def test_a_beat_started_before_the_database_is_up_waits_for_it(start_beat):
    import socket

    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    beat = start_beat(env={"DATABASE_URL": f"postgres://postgres@127.0.0.1:{port}/nowhere"})
    wait_for(lambda: beat.log().count("lost the database") >= 2, message="beat to retry")
    assert "cannot reach the database yet" in beat.log()
    beat.terminate()
    assert beat.wait() == 0
