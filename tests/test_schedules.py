"""When schedules run: cron in a time zone across DST, intervals, one-offs, catch-up."""

import itertools
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from django_tasks_q.schedules import (
    Cron,
    Interval,
    Once,
    ScheduleError,
    check_cron,
    check_interval,
    get_zone,
    plan,
    upcoming,
)

PARIS = ZoneInfo("Europe/Paris")
NEW_YORK = ZoneInfo("America/New_York")


def utc(*args):
    return datetime(*args, tzinfo=UTC)


def ticks(timing, after, count):
    found, moment = [], after
    for _ in range(count):
        moment = timing.next_after(moment, anchor=moment)
        found.append(moment)
    return found


def local(instants, zone):
    return [t.astimezone(zone).strftime("%m-%d %H:%M%z") for t in instants]


# -- cron ------------------------------------------------------------------------------------


def test_cron_in_utc_gives_the_next_matching_minute():
    every_five = Cron("*/5 * * * *", get_zone("UTC"))
    assert every_five.next_after(utc(2024, 5, 1, 12, 3, 10)) == utc(2024, 5, 1, 12, 5)
    # Strictly after: a moment exactly on a tick gives the following one.
    assert every_five.next_after(utc(2024, 5, 1, 12, 5)) == utc(2024, 5, 1, 12, 10)


def test_a_sixth_field_gives_seconds():
    every_ten_seconds = Cron("* * * * * */10", get_zone("UTC"))
    assert ticks(every_ten_seconds, utc(2024, 5, 1, 12, 0, 55), 3) == [
        utc(2024, 5, 1, 12, 1, 0), utc(2024, 5, 1, 12, 1, 10), utc(2024, 5, 1, 12, 1, 20),
    ]  # fmt: skip


def test_cron_follows_the_wall_clock_of_its_zone():
    nine_am = Cron("0 9 * * *", PARIS)
    # 09:00 in Paris is 08:00 UTC in winter and 07:00 UTC in summer.
    assert nine_am.next_after(utc(2024, 1, 15)) == utc(2024, 1, 15, 8)
    assert nine_am.next_after(utc(2024, 7, 15)) == utc(2024, 7, 15, 7)


def test_spring_forward_a_skipped_daily_time_runs_once_at_the_end_of_the_gap():
    # 2024-03-31 in Paris: 02:00 CET jumps to 03:00 CEST, so 02:30 does not exist that day.
    half_past_two = Cron("30 2 * * *", PARIS)
    assert local(ticks(half_past_two, utc(2024, 3, 29, 12), 4), PARIS) == [
        "03-30 02:30+0100",
        "03-31 03:00+0200",  # the first instant after the gap
        "04-01 02:30+0200",
        "04-02 02:30+0200",
    ]


def test_spring_forward_ticks_inside_the_gap_merge_into_one_run():
    every_half_hour = Cron("*/30 * * * *", PARIS)
    found = ticks(every_half_hour, utc(2024, 3, 30, 23, 45), 5)
    # 02:00 and 02:30 do not exist; both land on 03:00 CEST with 03:00 itself: one run.
    assert local(found, PARIS) == [
        "03-31 01:00+0100", "03-31 01:30+0100", "03-31 03:00+0200", "03-31 03:30+0200",
        "03-31 04:00+0200",
    ]  # fmt: skip
    assert len(set(found)) == len(found)


def test_fall_back_a_repeated_time_runs_once_at_its_first_occurrence():
    # 2024-10-27 in Paris: 03:00 CEST goes back to 02:00 CET, so 02:30 happens twice.
    half_past_two = Cron("30 2 * * *", PARIS)
    found = ticks(half_past_two, utc(2024, 10, 26, 12), 3)
    assert local(found, PARIS) == ["10-27 02:30+0200", "10-28 02:30+0100", "10-29 02:30+0100"]
    assert found[0] == utc(2024, 10, 27, 0, 30)


def test_fall_back_the_repeated_hour_does_not_run_twice():
    every_half_hour = Cron("*/30 * * * *", PARIS)
    found = ticks(every_half_hour, utc(2024, 10, 26, 23, 45), 5)
    # After 02:30 CEST the clock reads 02:00 again; those wall-clock times already ran.
    assert local(found, PARIS) == [
        "10-27 02:00+0200", "10-27 02:30+0200", "10-27 03:00+0100", "10-27 03:30+0100",
        "10-27 04:00+0100",
    ]  # fmt: skip
    assert found[1] - found[0] == timedelta(minutes=30)
    assert found[2] - found[1] == timedelta(minutes=90)


def test_asked_during_the_repeated_hour_the_next_tick_is_after_it():
    second_pass = utc(2024, 10, 27, 1, 15)  # 02:15 CET, the second time 02:15 shows
    assert second_pass.astimezone(PARIS).fold == 1
    assert Cron("*/15 * * * *", PARIS).next_after(second_pass) == utc(2024, 10, 27, 2)


@pytest.mark.parametrize(
    ("expression", "after", "expected"),
    [
        # 2024-03-10: 02:00 EST jumps to 03:00 EDT.
        ("30 2 * * *", utc(2024, 3, 10, 5), ["03-10 03:00-0400", "03-11 02:30-0400"]),
        # 2024-11-03: 02:00 EDT goes back to 01:00 EST; 01:30 happens twice.
        ("30 1 * * *", utc(2024, 11, 3, 4), ["11-03 01:30-0400", "11-04 01:30-0500"]),
        ("0 * * * *", utc(2024, 11, 3, 4, 30), ["11-03 01:00-0400", "11-03 02:00-0500"]),
    ],
)
def test_new_york_transitions_follow_the_same_rule(expression, after, expected):
    assert local(ticks(Cron(expression, NEW_YORK), after, 2), NEW_YORK) == expected


@pytest.mark.parametrize(
    ("expression", "fix"),
    [
        ("*/5 * * *", "has 4 fields; write five"),
        ("61 * * * *", r"Invalid cron expression '61 \* \* \* \*'.*minute \(0-59\)"),
        ("0 0 30 2 *", "never matches a date"),
        ("@reboot", "is not supported"),
        ("", "has 0 fields"),
    ],
)
def test_invalid_cron_expressions_are_refused_with_the_fix(expression, fix):
    with pytest.raises(ScheduleError, match=fix):
        check_cron(expression)


def test_cron_aliases_and_extra_spaces_are_accepted():
    assert check_cron("@hourly") == "@hourly"
    assert check_cron("  */5  *  * * * ") == "*/5 * * * *"
    assert Cron("@hourly", PARIS).next_after(utc(2024, 1, 1, 10, 30)) == utc(2024, 1, 1, 11)


def test_an_unknown_time_zone_suggests_the_close_one():
    with pytest.raises(ScheduleError, match="Did you mean 'Europe/Paris'"):
        get_zone("Europe/Pariss")
    with pytest.raises(ScheduleError, match="Use an IANA name"):
        get_zone("CEST+2")


# -- intervals and one-offs ------------------------------------------------------------------


def test_intervals_stay_on_the_grid_of_their_anchor():
    every_ten = Interval(timedelta(seconds=10))
    anchor = utc(2024, 1, 1, 12)
    assert every_ten.next_after(anchor, anchor=anchor) == utc(2024, 1, 1, 12, 0, 10)
    assert every_ten.next_after(utc(2024, 1, 1, 12, 0, 25), anchor=anchor) == utc(
        2024, 1, 1, 12, 0, 30
    )


def test_intervals_are_elapsed_time_across_a_dst_transition():
    hourly = Interval(timedelta(hours=1))
    found = ticks(hourly, utc(2024, 3, 30, 23), 4)
    assert [b - a for a, b in itertools.pairwise(found)] == [timedelta(hours=1)] * 3
    assert local(found, PARIS)[:2] == ["03-31 01:00+0100", "03-31 03:00+0200"]


def test_an_interval_under_a_second_is_refused():
    with pytest.raises(ScheduleError, match="at least one second"):
        check_interval(timedelta(milliseconds=500))


def test_a_one_off_ticks_once():
    at = utc(2030, 1, 1, 9)
    once = Once(at)
    assert once.next_after(utc(2029, 12, 31)) == at
    assert once.next_after(at) is None


def test_upcoming_lists_the_next_run_and_those_after_it():
    found = list(upcoming(Cron("0 */6 * * *", PARIS), utc(2024, 1, 1, 5), 5))
    assert local(found, PARIS) == [
        "01-01 06:00+0100", "01-01 12:00+0100", "01-01 18:00+0100", "01-02 00:00+0100",
        "01-02 06:00+0100",
    ]  # fmt: skip
    assert list(upcoming(Once(utc(2030, 1, 1)), utc(2030, 1, 1), 5)) == [utc(2030, 1, 1)]


# -- what a beat pass enqueues ---------------------------------------------------------------

MINUTE = timedelta(seconds=60)
START = utc(2024, 1, 1, 12)
EVERY_SECOND = [Interval(timedelta(seconds=1)), Cron("* * * * * *", get_zone("UTC"))]


@pytest.mark.parametrize("catch_up", ["skip", "once"])
def test_a_tick_that_is_due_is_enqueued_and_the_schedule_moves_on(catch_up):
    every_minute = Cron("* * * * *", get_zone("UTC"))
    # A beat a few milliseconds late for its tick.
    decided = plan(every_minute, next_run_at=utc(2024, 1, 1, 12, 1), now=utc(2024, 1, 1, 12, 1, 0, 5000),
                   missed_after=MINUTE, catch_up=catch_up)  # fmt: skip
    assert decided.ticks == [utc(2024, 1, 1, 12, 1)]
    assert decided.next_run_at == utc(2024, 1, 1, 12, 2)
    assert decided.missed_from is None


@pytest.mark.parametrize("timing", EVERY_SECOND, ids=["interval", "cron"])
def test_after_a_restart_catch_up_skip_enqueues_only_the_latest_due_tick(timing):
    # Beat back after 30 s: thirty ticks of a schedule every second are due, all late.
    decided = plan(timing, next_run_at=START, now=START + timedelta(seconds=30.5),
                   missed_after=MINUTE, catch_up="skip")  # fmt: skip
    assert decided.ticks == [START + timedelta(seconds=30)]
    assert decided.next_run_at == START + timedelta(seconds=31)
    assert (decided.missed_from, decided.missed_before) == (START, START + timedelta(seconds=30))


@pytest.mark.parametrize("timing", EVERY_SECOND, ids=["interval", "cron"])
def test_after_a_restart_catch_up_once_enqueues_one_task_for_all_due_ticks(timing):
    decided = plan(timing, next_run_at=START, now=START + timedelta(seconds=30.5),
                   missed_after=MINUTE, catch_up="once")  # fmt: skip
    assert decided.ticks == [START]  # recorded with the first due tick
    assert decided.next_run_at == START + timedelta(seconds=31)
    assert (decided.missed_from, decided.missed_before) == (START, START + timedelta(seconds=31))


def test_catch_up_skip_after_downtime_enqueues_none_of_the_missed_ticks():
    every_five = Cron("*/5 * * * *", get_zone("UTC"))
    # Beat was down from 09:00 to 12:02:30: 09:00 .. 12:00 were missed.
    decided = plan(every_five, next_run_at=utc(2024, 1, 1, 9), now=utc(2024, 1, 1, 12, 2, 30),
                   missed_after=MINUTE, catch_up="skip")  # fmt: skip
    assert decided.ticks == []
    assert decided.next_run_at == utc(2024, 1, 1, 12, 5)
    assert (decided.missed_from, decided.missed_before) == (
        utc(2024, 1, 1, 9),
        utc(2024, 1, 1, 12, 5),
    )


def test_catch_up_skip_after_downtime_enqueues_the_latest_tick_if_it_is_only_late():
    every_ten = Interval(timedelta(seconds=10))
    # Down for ten minutes; the ticks of the last 30 s (9:40, 9:50, 10:00) are late.
    decided = plan(every_ten, next_run_at=START, now=START + timedelta(minutes=10, seconds=5),
                   missed_after=timedelta(seconds=30), catch_up="skip")  # fmt: skip
    assert decided.ticks == [START + timedelta(minutes=10)]
    assert decided.next_run_at == START + timedelta(minutes=10, seconds=10)


def test_catch_up_once_after_downtime_enqueues_one_task_for_the_missed_ticks():
    every_five = Cron("*/5 * * * *", get_zone("UTC"))
    decided = plan(every_five, next_run_at=utc(2024, 1, 1, 9), now=utc(2024, 1, 1, 12, 2, 30),
                   missed_after=MINUTE, catch_up="once")  # fmt: skip
    assert decided.ticks == [utc(2024, 1, 1, 9)]  # recorded with the first missed tick
    assert decided.next_run_at == utc(2024, 1, 1, 12, 5)


def test_catch_up_once_folds_missed_and_late_ticks_into_the_same_one_task():
    every_ten = Interval(timedelta(seconds=10))
    decided = plan(every_ten, next_run_at=START, now=START + timedelta(minutes=10, seconds=5),
                   missed_after=timedelta(seconds=30), catch_up="once")  # fmt: skip
    assert decided.ticks == [START]
    assert decided.next_run_at == START + timedelta(minutes=10, seconds=10)


@pytest.mark.parametrize(("catch_up", "expected"), [("skip", []), ("once", [utc(2024, 1, 1, 9)])])
def test_a_missed_one_off_follows_the_catch_up_policy_then_is_done(catch_up, expected):
    decided = plan(Once(utc(2024, 1, 1, 9)), next_run_at=utc(2024, 1, 1, 9),
                   now=utc(2024, 1, 1, 12), missed_after=MINUTE, catch_up=catch_up)  # fmt: skip
    assert decided.ticks == expected
    assert decided.next_run_at is None


class Counted:
    def __init__(self, timing):
        self.timing, self.calls = timing, 0

    def next_after(self, moment, anchor=None):
        self.calls += 1
        return self.timing.next_after(moment, anchor=anchor)


@pytest.mark.parametrize("catch_up", ["skip", "once"])
def test_a_year_of_downtime_is_jumped_over_not_walked_tick_by_tick(catch_up):
    # A schedule every second, beat down for a year: thirty million ticks.
    timing = Counted(EVERY_SECOND[1])
    now = START + timedelta(days=365, seconds=0.5)
    decided = plan(timing, next_run_at=START, now=now, missed_after=MINUTE, catch_up=catch_up)
    assert decided.ticks == [START if catch_up == "once" else now - timedelta(seconds=0.5)]
    assert decided.next_run_at == now + timedelta(seconds=0.5)
    assert timing.calls <= 70  # at most the ticks within missed_after are stepped through
