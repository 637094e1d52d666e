"""Beat: enqueues the ticks of due schedules, each exactly once, however many beats run.

Each due schedule is handled in a transaction of its own: its row is locked with
``SELECT … FOR UPDATE SKIP LOCKED``, the task for its due tick (one per pass, however many
are due: see :func:`~django_tasks_q.schedules.plan`) is inserted through the backend's
``enqueue`` (the path every task takes: validation, NOTIFY, signals) and
``next_run_at`` moves on, all committed together. A beat that dies mid-way commits nothing;
another beat skips rows a live one holds. The ORM is used because schedules are models,
and because enqueue joins the transaction through the same Django connection; the task
SQL itself stays in ``sql/queue.sql``. Times come from the database clock.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timedelta

import psycopg
from django.db import DatabaseError, InterfaceError, OperationalError, connections, transaction
from django.db.models.functions import Now

from django_tasks_q import queue, registry, schedule_sync, tracing
from django_tasks_q.backend import PostgresBackend
from django_tasks_q.backoff import Backoff, describe_database_error
from django_tasks_q.conf import settings as conf
from django_tasks_q.models import Schedule
from django_tasks_q.schedules import CatchUp, Plan, plan

logger = logging.getLogger("django_tasks_q.beat")

# With LISTEN/NOTIFY, edits wake beat at once; this only bounds how stale a beat can be
# after an edit that sent no notification (raw SQL, a notification lost in a reconnect).
MAX_SLEEP_LISTENING = 60.0
# A schedule that failed to enqueue (unknown task, invalid options) waits this long, doubling
# up to the maximum, before this beat tries it again. The others go on meanwhile.
RETRY_FAILED_AFTER = 5.0
RETRY_FAILED_MAX = 300.0


@dataclass(frozen=True, slots=True)
class Enqueued:
    """One tick enqueued: logged once its transaction has committed."""

    schedule: str
    task_name: str
    task_id: str
    tick: datetime


class Beat:
    """Enqueues due ticks of enabled schedules until stopped.

    ``Beat().run(stop)`` is all a process needs: it syncs the schedules declared in code, then
    loops. It never raises on a database outage: it logs, backs off and reconnects.
    """

    def __init__(
        self,
        *,
        using: str | None = None,
        listen: bool | None = None,
        poll_interval: float | None = None,
        missed_after: float | None = None,
        sync: bool = True,
        name: str | None = None,
    ) -> None:
        self.using = using or conf.DATABASE
        if self.using not in connections:
            raise ValueError(f"database alias {self.using!r} is not in DATABASES")
        self.listen = conf.LISTEN_NOTIFY if listen is None else listen
        self.poll_interval = conf.POLL_INTERVAL if poll_interval is None else poll_interval
        if self.poll_interval <= 0:
            raise ValueError(f"poll_interval must be > 0 seconds, got {self.poll_interval}")
        missed_after = conf.BEAT_MISSED_AFTER if missed_after is None else missed_after
        if missed_after <= 0:
            raise ValueError(f"missed_after must be > 0 seconds, got {missed_after}")
        self.missed_after = timedelta(seconds=missed_after)
        self.sync = sync
        self.name = name or f"{socket.gethostname()}-{os.getpid()}"
        self.enqueued = 0
        # Schedule id -> (monotonic time of the next try, current delay).
        self._failing: dict[int, tuple[float, float]] = {}
        self._locked_backoff = 0.0
        self._listener: psycopg.Connection | None = None

    # -- one pass ---------------------------------------------------------------------------

    def run_once(self) -> float:
        """Enqueue every due tick; return the seconds until the next one is due (or until
        this beat should look again)."""
        connections[self.using].close_if_unusable_or_obsolete()
        while self._handle_next_due():
            pass
        return self._seconds_until_due()

    def _handle_next_due(self) -> bool:
        """Enqueue the due ticks of one schedule. False once none is left that this beat
        may take."""
        done: list[Enqueued] = []
        schedule_id = schedule_name = None
        try:
            with transaction.atomic(using=self.using):
                schedule = (
                    Schedule.objects.using(self.using)
                    .select_for_update(skip_locked=True)
                    .filter(enabled=True, next_run_at__lte=Now())
                    .exclude(pk__in=self._failing_now())
                    .annotate(database_now=Now())
                    .order_by("next_run_at", "pk")
                    .first()
                )
                if schedule is None:
                    return False
                schedule_id, schedule_name = schedule.pk, schedule.name
                done = self._enqueue_due(schedule, schedule.database_now)
        except Exception as exc:
            if schedule_id is None or _is_connection_error(exc):
                raise
            self._failed(schedule_id, schedule_name, exc)
            return True
        self._failing.pop(schedule_id, None)
        for item in done:
            self.enqueued += 1
            logger.info(
                "Schedule %r enqueued %s #%s for its tick at %s",
                item.schedule, item.task_name, item.task_id, item.tick.isoformat(),
                extra={"schedule": item.schedule, "task_id": item.task_id, "tick": item.tick},
            )  # fmt: skip
        return True

    def _enqueue_due(self, schedule: Schedule, now: datetime) -> list[Enqueued]:
        """Inside the schedule's transaction: enqueue what the plan says, move it on."""
        decided = plan(
            schedule.timing(),
            next_run_at=schedule.next_run_at,
            now=now,
            missed_after=self.missed_after,
            catch_up=schedule.catch_up,
        )
        if decided.missed_from is not None:
            _log_missed(schedule, decided)
        done = []
        for tick in decided.ticks:
            with tracing.tick_span(schedule.name, schedule.task):
                done.append(enqueue_tick(schedule, tick, now, using=self.using))
        schedule.next_run_at = decided.next_run_at
        update = ["next_run_at"]
        if decided.ticks:
            schedule.last_run_at = decided.ticks[-1]
            schedule.run_count += len(decided.ticks)
            update += ["last_run_at", "run_count"]
        schedule.save(using=self.using, update_fields=update)
        return done

    def _failed(self, schedule_id: int, name: str, exc: BaseException) -> None:
        """The schedule's transaction rolled back: its tick stays due. Leave it alone for a
        while, so one broken schedule neither spins this beat nor holds up the others."""
        _, delay = self._failing.get(schedule_id, (0.0, RETRY_FAILED_AFTER / 2))
        delay = min(delay * 2, RETRY_FAILED_MAX)
        self._failing[schedule_id] = (time.monotonic() + delay, delay)
        logger.error(
            "Schedule %r could not be enqueued, trying again in %.0fs: %s: %s",
            name, delay, type(exc).__name__, exc,
            extra={"schedule": name},
        )  # fmt: skip

    def _failing_now(self) -> list[int]:
        now = time.monotonic()
        return [key for key, (retry_at, _) in self._failing.items() if retry_at > now]

    def _seconds_until_due(self) -> float:
        longest = MAX_SLEEP_LISTENING if self.listen else self.poll_interval
        row = (
            Schedule.objects.using(self.using)
            .filter(enabled=True, next_run_at__isnull=False)
            .exclude(pk__in=self._failing_now())
            .annotate(database_now=Now())
            .order_by("next_run_at")
            .values_list("next_run_at", "database_now")
            .first()
        )
        wait = longest
        if row is not None:
            due_in = (row[0] - row[1]).total_seconds()
            if due_in <= 0:
                # Due, yet not ours to take: another beat holds its row. Look again soon; it
                # is usually done within milliseconds, but may have died holding the lock.
                self._locked_backoff = min(max(self._locked_backoff * 2, 0.01), 1.0)
                due_in = self._locked_backoff
            else:
                self._locked_backoff = 0.0
            wait = min(wait, due_in)
        if self._failing:
            soonest = min(retry_at for retry_at, _ in self._failing.values())
            wait = min(wait, max(0.0, soonest - time.monotonic()))
        return wait

    # -- the loop ---------------------------------------------------------------------------

    def run(self, stop: threading.Event) -> None:
        """Sync declared schedules, then enqueue due ticks until ``stop`` is set."""
        logger.info(
            "Beat %s starting: database=%s listen=%s missed_after=%ss",
            self.name, self.using, self.listen, self.missed_after.total_seconds(),
        )  # fmt: skip
        backoff = Backoff()
        synced = not self.sync
        try:
            while not stop.is_set():
                try:
                    if not synced:
                        synced = self._sync()
                    if self.listen:
                        self._ensure_listening()
                    wait = self.run_once()
                    backoff.reset()
                except Exception as exc:
                    delay = backoff.next()
                    self._lost(exc, delay)
                    stop.wait(delay)
                    continue
                self._sleep(stop, wait)
        finally:
            self._close_listener()
            connections[self.using].close()
        logger.info("Beat %s stopped after enqueueing %s tasks", self.name, self.enqueued)

    def _sync(self) -> bool:
        """Sync declared schedules; True once done. A failure other than a lost database is
        logged and left behind: the schedules already in the table must still run."""
        try:
            schedule_sync.sync(self.using)
        except Exception as exc:
            if _is_connection_error(exc):
                raise
            logger.exception("Beat %s could not sync the schedules declared in code", self.name)
        return True

    def _lost(self, exc: Exception, retry_in: float) -> None:
        if _is_connection_error(exc):
            logger.error(
                "Beat %s lost the database (%s); reconnecting in %.1fs",
                self.name, describe_database_error(exc), retry_in,
            )  # fmt: skip
        else:
            # Beat must not die quietly: log and try again.
            logger.exception("Beat %s failed; trying again in %.1fs", self.name, retry_in)
        if isinstance(exc, (DatabaseError, psycopg.Error)):
            self._close_listener()
            with contextlib.suppress(DatabaseError):
                connections[self.using].close()

    def _ensure_listening(self) -> None:
        if self._listener is None or self._listener.closed:
            # LISTEN before the pass that follows, so no change slips in between.
            self._listener = queue.listen_connection(
                self.using,
                application_name=f"django_tasks_q beat {self.name}",
                channel=queue.SCHEDULES_CHANNEL,
            )

    def _close_listener(self) -> None:
        if self._listener is not None:
            with contextlib.suppress(psycopg.Error):
                self._listener.close()
            self._listener = None

    def _sleep(self, stop: threading.Event, seconds: float) -> None:
        """Until ``seconds`` pass, a schedule changes, or ``stop`` is set."""
        deadline = time.monotonic() + seconds
        while not stop.is_set():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            if self._listener is None:
                stop.wait(remaining)
                return
            try:
                # Short slices, so a stop from another thread is seen within half a second.
                for _ in self._listener.notifies(timeout=min(remaining, 0.5), stop_after=1):
                    return
            except psycopg.Error as exc:
                logger.warning("Beat %s listener lost: %s", self.name, exc)
                self._close_listener()
                return


def enqueue_tick(
    schedule: Schedule, tick: datetime, now: datetime, *, using: str | None = None
) -> Enqueued:
    """Enqueue ``schedule``'s task for ``tick`` in the caller's transaction.

    Raises UnknownTaskError or InvalidTask when the task cannot be enqueued from here, and
    IntegrityError if this tick was enqueued already.
    """
    task = schedule.task_with_overrides(registry.get(schedule.task))
    backend = task.get_backend()
    if not isinstance(backend, PostgresBackend):
        raise TypeError(f"task {task.name} does not use a PostgresBackend")
    database = using or conf.DATABASE
    if backend.database != database:
        raise ValueError(
            f"task {task.name} is enqueued in database {backend.database!r} but its schedule "
            f"lives in {database!r}; a tick and its task must commit together, in one database."
        )
    handle = backend.enqueue(
        task,
        schedule.args,
        schedule.kwargs,
        expires_at=now + schedule.expires_after if schedule.expires_after else None,
        schedule_id=schedule.pk,
        scheduled_for=tick,
    )
    return Enqueued(schedule.name, task.name, handle.id, tick)


def run_now(schedule: Schedule, *, using: str | None = None) -> Enqueued:
    """Enqueue ``schedule``'s task at once, recorded with the time of the request; the
    schedule's own ticks are unaffected."""
    database = using or conf.DATABASE
    with transaction.atomic(using=database):
        now = queue.database_now(database)
        return enqueue_tick(schedule, now, now, using=database)


def _log_missed(schedule: Schedule, decided: Plan) -> None:
    action = "one task enqueued for them" if schedule.catch_up == CatchUp.ONCE else "none enqueued"
    logger.warning(
        "Schedule %r missed its ticks from %s to before %s (was beat stopped?); catch-up %r: %s",
        schedule.name, decided.missed_from.isoformat(), decided.missed_before.isoformat(),
        schedule.catch_up, action,
        extra={"schedule": schedule.name},
    )  # fmt: skip


def _is_connection_error(exc: BaseException) -> bool:
    return isinstance(
        exc, (OperationalError, InterfaceError, psycopg.OperationalError, psycopg.InterfaceError)
    )
