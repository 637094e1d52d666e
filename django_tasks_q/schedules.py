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
    """What a beat pass enqueues for a due schedule (one tick at most) and where it goes next."""

    ticks: list[datetime]
    next_run_at: datetime | None
    # The due ticks from ``missed_from`` up to (not including) ``missed_before`` got no task of
    # their own: dropped with "skip", folded into the one task with "once". Set only when that
    # is news worth a warning (several ticks were due, or the only one was missed).
    missed_from: datetime | None = None
    missed_before: datetime | None = None


def plan(
    timing: Timing,
    *,
    next_run_at: datetime,
    now: datetime,
    missed_after: timedelta,
    catch_up: str,
) -> Plan:
    """Decide what a due schedule enqueues at ``now``: one task at most, however many of its
    ticks are due, then the schedule goes on from its first tick after ``now``.

    A due tick at most ``missed_after`` old is late; an older one was missed (no beat ran).
    A single late tick is always enqueued. When there are more:

    - ``"skip"`` enqueues the most recent due tick if it is late, nothing if it was missed;
    - ``"once"`` enqueues one task for all of them, recorded with the first.
    """
    first = next_run_at
    cutoff = now - missed_after
    following = timing.next_after(first, anchor=first)
    if following is None or following > now:  # one tick due: the usual case
        if first >= cutoff:
            return Plan([first], following)
        return Plan([] if catch_up == CatchUp.SKIP else [first], following, first, following or now)
    if catch_up == CatchUp.ONCE:
        after_now = timing.next_after(now, anchor=first)
        return Plan([first], after_now, first, after_now or now)
    latest, after_now = _latest_due(timing, first, cutoff, now)
    if latest is None:
        return Plan([], after_now, first, after_now or now)
    return Plan([latest], after_now, first, latest)


def _latest_due(
    timing: Timing, first: datetime, cutoff: datetime, now: datetime
) -> tuple[datetime | None, datetime | None]:
    """The latest tick in [cutoff, now] (None if there is none) and the first after ``now``."""
    tick = first
    if tick < cutoff:
        # Jump over the missed ticks: after a long downtime there may be millions of them.
        tick = timing.next_after(cutoff - timedelta(microseconds=1), anchor=first)
    latest = None
    # One step per late tick: at most one per second of missed_after (60 s by default).
    while tick is not None and tick <= now:
        latest = tick
        tick = timing.next_after(tick, anchor=tick)
    return latest, tick
