"""When a schedule runs: cron expressions in a time zone, fixed intervals and one-off times.

Pure computation on aware datetimes, with no database and no clock of its own: callers pass
"now" (the database's, for beat). :mod:`django_tasks_q.beat` enqueues what :func:`plan` says.

Cron expressions follow wall-clock time in the schedule's time zone:

- a local time that does not exist (skipped when clocks go forward) runs at the first instant
  after the gap; several ticks that land on that instant run once;
- a local time that happens twice (repeated when clocks go back) runs once, at its first
  occurrence.

Intervals are elapsed time and ignore time zones: every hour is every 3,600 seconds, across
transitions too.
"""

from __future__ import annotations

import difflib
import zoneinfo
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import cache
from typing import Protocol

from croniter import CroniterBadDateError, CroniterError, croniter

# Enough for a seconds-field expression to cross a repeated hour (3,600 local ticks that map
# before the moment asked about), the only case where many candidates are rejected in a row.
_MAX_CANDIDATES = 10_000
# Ticks enqueued for one schedule by one beat transaction; the rest follow at once, in the
# next transaction, so a long backlog never makes one transaction huge.
MAX_TICKS_PER_PASS = 100
_CRON_ALIASES = ("@yearly", "@annually", "@monthly", "@weekly", "@daily", "@midnight", "@hourly")


class ScheduleError(ValueError):
    """A schedule's timing is invalid; the message says what to write instead."""


class Timing(Protocol):
    def next_after(self, moment: datetime, anchor: datetime | None = None) -> datetime | None:
        """The first tick strictly after ``moment``, or None when there is none left."""


# -- validation ------------------------------------------------------------------------------


def get_zone(name: str) -> zoneinfo.ZoneInfo:
    """The IANA time zone ``name``; :class:`ScheduleError` with a suggestion if unknown."""
    try:
        if not name or name != name.strip():
            raise ValueError(name)
        return zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        close = difflib.get_close_matches(name or "", sorted(_zone_names()), n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ScheduleError(
            f"Unknown time zone {name!r}.{hint} Use an IANA name such as 'UTC', "
            "'Europe/Paris' or 'America/New_York'."
        ) from None


@cache
def _zone_names() -> frozenset[str]:
    return frozenset(zoneinfo.available_timezones())


def check_cron(expression: str) -> str:
    """Return the expression, normalised; raise :class:`ScheduleError` if it is not one we run."""
    expression = " ".join((expression or "").split())
    if expression.startswith("@"):
        if expression.lower() not in _CRON_ALIASES:
            raise ScheduleError(
                f"Cron alias {expression!r} is not supported; use one of "
                f"{', '.join(_CRON_ALIASES)} or five fields."
            )
        return expression.lower()
    fields = expression.split(" ") if expression else []
    if len(fields) not in (5, 6):
        raise ScheduleError(
            f"Cron expression {expression!r} has {len(fields)} fields; write five "
            "(minute hour day-of-month month day-of-week, e.g. '*/5 * * * *'), or six with "
            "seconds last (e.g. '* * * * * */10')."
        )
    try:
        croniter(expression, datetime(2000, 1, 1)).get_next(datetime)
    except CroniterBadDateError:
        raise ScheduleError(
            f"Cron expression {expression!r} never matches a date; check the day-of-month and "
            "month fields (e.g. '0 0 30 2 *' asks for February 30th)."
        ) from None
    except (CroniterError, ValueError, KeyError) as exc:
        raise ScheduleError(
            f"Invalid cron expression {expression!r}: {exc}. Fields are minute (0-59), hour "
            "(0-23), day of month (1-31), month (1-12 or jan-dec), day of week (0-6 or "
            "sun-sat), then optionally seconds (0-59)."
        ) from None
    return expression


def check_interval(interval: timedelta) -> timedelta:
    if interval < timedelta(seconds=1):
        raise ScheduleError(
            f"An interval must be at least one second, got {interval.total_seconds():g}s."
        )
    return interval


# -- the three kinds of timing ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Cron:
    """A cron expression read as wall-clock time in ``zone``."""

    expression: str
    zone: zoneinfo.ZoneInfo

    def next_after(self, moment: datetime, anchor: datetime | None = None) -> datetime | None:
        local = moment.astimezone(self.zone).replace(tzinfo=None)
        # croniter on naive datetimes is pure wall-clock arithmetic; instants are ours.
        candidates = croniter(self.expression, local)
        for _ in range(_MAX_CANDIDATES):
            instant = local_to_instant(candidates.get_next(datetime), self.zone)
            # Earlier or equal instants come from the repeated hour (the moment is in its
            # second pass) or from a gap (merged into the instant after it): already past.
            if instant > moment:
                return instant
        raise ScheduleError(f"No tick of {self.expression!r} found after {moment.isoformat()}.")


@dataclass(frozen=True, slots=True)
class Interval:
    """Every ``every`` of elapsed time, on the grid through ``anchor`` (the current tick)."""

    every: timedelta

    def next_after(self, moment: datetime, anchor: datetime | None = None) -> datetime | None:
        if anchor is None:
            return moment + self.every
        steps = (moment - anchor) // self.every + 1
        return anchor + steps * self.every


@dataclass(frozen=True, slots=True)
class Once:
    """A single tick at ``at``."""

    at: datetime

    def next_after(self, moment: datetime, anchor: datetime | None = None) -> datetime | None:
        return self.at if self.at > moment else None


def local_to_instant(naive: datetime, zone: zoneinfo.ZoneInfo) -> datetime:
    """The UTC instant of wall-clock time ``naive`` in ``zone``, by the rule in the module doc:
    a repeated time is its first occurrence, a skipped one the first instant after the gap."""
    instant = naive.replace(tzinfo=zone, fold=0).astimezone(UTC)
    if instant.astimezone(zone).replace(tzinfo=None) == naive:
        return instant  # exists; fold=0 picked the first occurrence if it happens twice
    # In a gap: the two readings of `naive` (with the offsets before and after the transition)
    # bracket the transition. Local time only moves forward inside that bracket, so bisect
    # on whole seconds (zone transitions happen on whole seconds).
    other = naive.replace(tzinfo=zone, fold=1).astimezone(UTC)
    low, high = sorted((int(instant.timestamp()), int(other.timestamp()) + 1))
    while high - low > 1:
        middle = (low + high) // 2
        if _wall_clock(middle, zone) >= naive:
            high = middle
        else:
            low = middle
    return datetime.fromtimestamp(high, UTC)


def _wall_clock(timestamp: int, zone: zoneinfo.ZoneInfo) -> datetime:
    return datetime.fromtimestamp(timestamp, zone).replace(tzinfo=None)


def upcoming(
    timing: Timing, first: datetime | None, count: int, anchor: datetime | None = None
) -> Iterator[datetime]:
    """``first`` (the schedule's next run) and the ticks after it, ``count`` in all."""
    tick = first
    for _ in range(count):
        if tick is None:
            return
        yield tick
        tick = timing.next_after(tick, anchor=tick)


# -- what a beat pass does with a due schedule -----------------------------------------------


class CatchUp:
    SKIP = "skip"
    ONCE = "once"


@dataclass(frozen=True, slots=True)
class Plan:
    """The ticks to enqueue now, in order, and where the schedule goes next."""

    ticks: list[datetime]
    next_run_at: datetime | None
    # Ticks from ``missed_from`` up to (not including) ``missed_before`` were missed: older
    # than ``missed_after`` when beat got to them.
    missed_from: datetime | None = None
    missed_before: datetime | None = None


def plan(
    timing: Timing,
    *,
    next_run_at: datetime,
    now: datetime,
    missed_after: timedelta,
    catch_up: str,
    limit: int = MAX_TICKS_PER_PASS,
) -> Plan:
    """Decide what a due schedule enqueues at ``now``.

    A tick at most ``missed_after`` old is late, not missed. Older ticks were missed (beat
    was down). ``catch_up="skip"`` enqueues at most one tick per pass: the most recent one
    due, if it is late rather than missed; every earlier tick counts as missed. ``"once"``
    enqueues one task for all missed ticks (recorded with the first of them), then each late
    tick. Either way the schedule then continues from its next tick.
    """
    cutoff = now - missed_after
    ticks: list[datetime] = []
    missed_from = missed_before = None
    tick: datetime | None = next_run_at
    if tick < cutoff:
        missed_from = tick
        # The first tick at or after the cutoff: nothing in between is enqueued one by one.
        tick = timing.next_after(cutoff - timedelta(microseconds=1), anchor=tick)
        missed_before = cutoff
        if catch_up == CatchUp.ONCE:
            ticks.append(missed_from)
    skip = catch_up == CatchUp.SKIP
    # With "skip" the late ticks are walked to the last one due (they are at most
    # missed_after old, so few) and only that one is enqueued: a beat back from a restart
    # never enqueues a backlog, even of a schedule that ticks every second.
    while tick is not None and tick <= now and (skip or len(ticks) < limit):
        ticks.append(tick)
        tick = timing.next_after(tick, anchor=tick)
    if skip and len(ticks) > 1:
        missed_from = missed_from or ticks[0]
        missed_before = ticks[-1]
        ticks = ticks[-1:]
    return Plan(ticks, tick, missed_from, missed_before)
