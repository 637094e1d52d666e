"""taskbench's steady-load phase: tasks offered at a fixed rate for a while, reported window by
window, optionally while other sessions press on the database.

An application database always has someone holding the xmin horizon: a long report, a
replica's feedback, a session left idle in a transaction. Until it moves, no dead row version
can be removed, and each claim walks past the index entries of the tasks claimed since. This
phase shows what that does to the claim lag on the user's own database: with one transaction
held open all along (``hold_xmin``), or with sessions re-scanning the task table in REPEATABLE
READ transactions back to back (``readers``), each holding the horizon for one scan. It can also
take every free connection of the server for a while and end the workers' connections
(``exhaust_seconds``), to show the workers waiting for the server and coming back.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

import psycopg
from django.db import connections, transaction

from django_tasks_q.bench import queries
from django_tasks_q.bench.options import BenchError
from django_tasks_q.bench.workers import WorkerProcess, check_alive, worker_logs, worth_showing
from django_tasks_q.queue import connection_params
from django_tasks_q.tasks import BackgroundTask

# Seconds a reader keeps its transaction, and so its snapshot, open after each scan.
READER_HOLD = 1.0
# The enqueuer commits this often, as a steady stream of web requests would.
TICK = 0.01
# Workers retry after 0.5 s at the soonest, so the slots their ended connections free are
# taken within a round or two; this long means slots keep freeing up faster than it takes them.
CUT_OFF_TIMEOUT = 30.0
# An ended backend frees its slot once it has exited, which takes milliseconds.
CUT_OFF_POLL = 0.05
# The workers' log lines kept from the exhaustion on: enough for a few minutes of backoff.
MAX_LOG_LINES = 200


@dataclass(frozen=True)
class Stress:
    """What else happens to the database during the steady load."""

    hold_xmin: bool = False  # one transaction open all along
    readers: int = 0  # sessions re-scanning the task table, each in REPEATABLE READ
    exhaust_seconds: float = 0.0  # every free connection taken, from the middle of the load


@dataclass(frozen=True)
class Window:
    """One reporting window of the steady load (database clock)."""

    ends_after_s: float  # since the load started
    offered_per_s: float
    run_per_s: float
    claim_lag_p50_ms: float | None
    claim_lag_p99_ms: float | None
    backlog: int  # offered and not yet run when the window closed
    xmin_held: bool
    readers: int
    reader_scans: int  # scans the readers completed in this window
    connections_exhausted: bool  # for some of this window

    def as_json(self) -> dict[str, Any]:
        return asdict(self)

    def line(self) -> str:
        def ms(value: float | None) -> str:
            if value is None:
                return "-"
            # A backlog left by an overload or an outage is waited on for seconds.
            return f"{value:.1f} ms" if value < 1000 else f"{value / 1000:.1f} s"

        line = (
            f"   {self.ends_after_s:>6.0f} s  offered {self.offered_per_s:>7,.0f}/s  "
            f"run {self.run_per_s:>7,.0f}/s  claim lag p50 {ms(self.claim_lag_p50_ms):>9}  "
            f"p99 {ms(self.claim_lag_p99_ms):>9}  backlog {self.backlog:>7,}"
        )
        # Every line says what pressed on the database meanwhile, so that a long series of
        # windows (or a part of it, pasted elsewhere) reads on its own.
        context = self.context()
        return f"{line}  | {context}" if context else line

    def context(self) -> str:
        parts = []
        if self.xmin_held:
            parts.append("xmin held")
        if self.readers:
            parts.append(f"{self.readers} readers, {self.reader_scans:,} scans")
        if self.connections_exhausted:
            parts.append("connections exhausted")
        return "; ".join(parts)


@dataclass
class Exhaustion:
    """The server's free connections taken during the steady load. Written by its own thread,
    read by the main thread as each window closes."""

    seconds: float
    fillers: int = 0  # connections it took to fill the server
    refusal: str = ""  # the server's answer to the one connection too many
    cut_off: set[int] = field(default_factory=set)  # backend pids of the workers, ended
    began: datetime | None = None  # the server full, the workers' connections ended
    ended: datetime | None = None  # the fillers closed
    log_offsets: list[int] = field(default_factory=list)  # the workers' logs when it began

    def during(self, since: datetime, until: datetime) -> bool:
        began, ended = self.began, self.ended
        return began is not None and began < until and (ended is None or ended > since)


@dataclass(frozen=True)
class SteadyLoad:
    started: datetime  # database clock
    windows: list[Window]
    offered: int  # tasks enqueued
    reader_scans: int
    exhaustion: Exhaustion | None
    worker_log: list[str]  # what the workers logged from the exhaustion on


def steady_load(
    database: str,
    task: BackgroundTask,
    workers: Sequence[WorkerProcess],
    *,
    seconds: float,
    rate: float,
    window: float,
    stress: Stress,
    on_window: Callable[[Window], None],
) -> SteadyLoad:
    """Offer ``rate`` tasks/s of ``task`` for ``seconds`` under ``stress``; call ``on_window``
    with each :class:`Window` as it closes."""
    stop = threading.Event()
    failures: list[BaseException] = []
    held = threading.Event()
    offered = [0]
    scans = [0] * stress.readers  # one counter per reader: no two threads add to the same
    exhaustion = Exhaustion(stress.exhaust_seconds) if stress.exhaust_seconds else None
    threads = [threading.Thread(target=_offer, args=(task, rate, stop, offered, failures))]
    if stress.hold_xmin:
        threads.append(threading.Thread(target=_hold, args=(database, stop, held, failures)))
    threads += [
        threading.Thread(target=_read, args=(database, stop, scans, index, failures))
        for index in range(stress.readers)
    ]
    if exhaustion:
        # Started with the others: its own connection is open before it fills the server.
        args = (database, workers, exhaustion, seconds / 2, stop, failures)
        threads.append(threading.Thread(target=_exhaust, args=args))
    # Measured on this thread's connection, opened long before the server is filled.
    started = queries.database_now(database)
    for thread in threads:
        thread.start()
    windows: list[Window] = []
    try:
        if stress.hold_xmin and not held.wait(10):
            raise BenchError("Could not open the transaction that holds the xmin horizon.")
        since, began, scanned = started, time.monotonic(), 0
        offered_so_far = run_so_far = 0
        while (elapsed := time.monotonic() - began) < seconds:
            time.sleep(min(window, seconds - elapsed))
            check_alive(workers)
            if failures:
                raise BenchError(f"The steady load failed: {failures[0]!r}")
            until = queries.database_now(database)
            stats = queries.window(database, task.queue_name, task.name, since, until)
            span = max((until - since).total_seconds(), 1e-9)
            offered_so_far += stats.offered
            run_so_far += stats.run
            current = Window(
                ends_after_s=(until - started).total_seconds(),
                offered_per_s=stats.offered / span,
                run_per_s=stats.run / span,
                claim_lag_p50_ms=stats.lag_p50_ms,
                claim_lag_p99_ms=stats.lag_p99_ms,
                backlog=max(0, offered_so_far - run_so_far),
                xmin_held=stress.hold_xmin,
                readers=stress.readers,
                reader_scans=sum(scans) - scanned,
                connections_exhausted=bool(exhaustion and exhaustion.during(since, until)),
            )
            windows.append(current)
            on_window(current)
            since, scanned = until, scanned + current.reader_scans
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=30)
    if failures:
        raise BenchError(f"The steady load failed: {failures[0]!r}{worker_logs(workers)}")
    offsets = exhaustion.log_offsets if exhaustion else []  # none if it never began
    logged = _logged_since(workers, offsets) if offsets else []
    return SteadyLoad(started, windows, offered[0], sum(scans), exhaustion, logged)


def _offer(
    task: BackgroundTask,
    rate: float,
    stop: threading.Event,
    offered: list[int],
    failures: list[BaseException],
) -> None:
    """Enqueue at ``rate`` tasks/s, one commit per tick, until ``stop``."""
    try:
        began = time.monotonic()
        while not stop.is_set():
            due = int(rate * (time.monotonic() - began)) - offered[0]
            if due > 0:
                first = offered[0]
                task.enqueue_many([(n,) for n in range(first, first + due)])
                offered[0] += due
            stop.wait(TICK)
    except BaseException as exc:  # handed to the main thread, which raises it
        failures.append(exc)
    finally:
        connections.close_all()


def _hold(
    database: str, stop: threading.Event, held: threading.Event, failures: list[BaseException]
) -> None:
    """``BEGIN; SELECT txid_current();`` and nothing else until ``stop``: the xmin horizon
    stays where it was when the load began."""
    try:
        with transaction.atomic(using=database), connections[database].cursor() as cursor:
            cursor.execute("SELECT txid_current()")
            held.set()
            stop.wait()
    except BaseException as exc:
        failures.append(exc)
    finally:
        connections.close_all()


def _read(
    database: str,
    stop: threading.Event,
    scans: list[int],
    index: int,
    failures: list[BaseException],
) -> None:
    """Scan the task table in REPEATABLE READ transactions, one after another, each kept open
    READER_HOLD seconds after its scan, until ``stop``: the horizon moves between
    transactions, yet never gets far."""
    try:
        while not stop.is_set():
            queries.repeatable_read_scan(database, then=lambda: stop.wait(READER_HOLD))
            scans[index] += 1
    except BaseException as exc:
        failures.append(exc)
    finally:
        connections.close_all()


def _exhaust(
    database: str,
    workers: Sequence[WorkerProcess],
    exhaustion: Exhaustion,
    delay: float,
    stop: threading.Event,
    failures: list[BaseException],
) -> None:
    """After ``delay`` seconds, take every free connection of the server and end the
    workers' connections; hold that for ``exhaustion.seconds``, then let go."""
    fillers: list[psycopg.Connection] = []
    try:
        queries.database_now(database)  # opens this thread's connection while slots are free
        if stop.wait(delay):
            return
        exhaustion.log_offsets = [_log_size(worker) for worker in workers]
        try:
            _cut_off(database, fillers, exhaustion, stop)
            if stop.is_set():
                return
            exhaustion.began = queries.database_now(database)
            stop.wait(exhaustion.seconds)
        finally:
            for conn in fillers:
                conn.close()
        if exhaustion.began is not None:
            exhaustion.ended = queries.database_now(database)
    except BaseException as exc:
        failures.append(exc)
    finally:
        connections.close_all()


def _cut_off(
    database: str,
    fillers: list[psycopg.Connection],
    exhaustion: Exhaustion,
    stop: threading.Event,
) -> None:
    """Fill the server, end the workers' connections, and fill the slots they free, until
    none of the workers' connections is left: a worker may reconnect before the slot is
    taken."""
    limit = int(queries.server_setting(database, "max_connections"))
    params = connection_params(database, "taskbench filler")
    deadline = time.monotonic() + CUT_OFF_TIMEOUT
    while not stop.is_set():
        exhaustion.refusal = _fill(params, fillers, limit)
        exhaustion.fillers = len(fillers)
        ended = queries.terminate_workers(database)
        if not ended:
            return
        exhaustion.cut_off |= ended
        if time.monotonic() > deadline:
            raise BenchError(
                f"The workers' connections were still there {CUT_OFF_TIMEOUT:.0f}s after the "
                "benchmark began to end them."
            )
        stop.wait(CUT_OFF_POLL)


def _fill(params: dict[str, Any], fillers: list[psycopg.Connection], limit: int) -> str:
    """Open idle connections until the server refuses one; returns its refusal."""
    while True:
        try:
            fillers.append(psycopg.connect(**params, autocommit=True))
        except psycopg.OperationalError as exc:
            return str(exc).strip().splitlines()[-1]
        if len(fillers) > limit:
            # Connections to a pooler (PgBouncer) cost the server nothing: it never fills.
            raise BenchError(
                f"More than max_connections ({limit}) connections were accepted: "
                "--exhaust-connections needs a direct connection to PostgreSQL, not a pooler."
            )


def _log_size(worker: WorkerProcess) -> int:
    return os.fstat(worker.log.fileno()).st_size


def _logged_since(workers: Sequence[WorkerProcess], offsets: Sequence[int]) -> list[str]:
    """The workers' log lines written since ``offsets``, each prefixed with its worker's
    number. Read with pread: the worker writes through the same file offset, which a seek
    would move."""
    lines = []
    for number, (worker, offset) in enumerate(zip(workers, offsets, strict=True)):
        fd = worker.log.fileno()
        written = os.pread(fd, max(0, os.fstat(fd).st_size - offset), offset)
        text = written.decode(errors="replace")
        lines += [f"[worker {number}] {line}" for line in text.splitlines() if worth_showing(line)]
    return lines[:MAX_LOG_LINES]
