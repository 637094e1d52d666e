"""taskbench's steady-load phase: tasks offered at a fixed rate for a while, reported window by
window, optionally while another session holds the xmin horizon back.

An application database always has someone holding that horizon: a long report, a replica's
feedback, a session left idle in a transaction. Until it moves, no dead row version can be
removed, and each claim walks past the index entries of the tasks claimed since. This phase
shows what that does to the claim lag on the user's own database.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from django.db import connections, transaction

from django_tasks_q.bench import queries
from django_tasks_q.bench.options import BenchError
from django_tasks_q.bench.workers import WorkerProcess, check_alive, worker_logs
from django_tasks_q.tasks import BackgroundTask

# The enqueuer commits this often, as a steady stream of web requests would.
TICK = 0.01


@dataclass(frozen=True)
class Window:
    """One reporting window of the steady load (database clock)."""

    ends_after_s: float  # since the load started
    offered_per_s: float
    run_per_s: float
    claim_lag_p50_ms: float | None
    claim_lag_p99_ms: float | None
    backlog: int  # still READY when the window closed

    def as_json(self) -> dict[str, Any]:
        return asdict(self)

    def line(self) -> str:
        def ms(value: float | None) -> str:
            return "-" if value is None else f"{value:.1f} ms"

        return (
            f"   {self.ends_after_s:>6.0f} s  offered {self.offered_per_s:>7,.0f}/s  "
            f"run {self.run_per_s:>7,.0f}/s  claim lag p50 {ms(self.claim_lag_p50_ms)}  "
            f"p99 {ms(self.claim_lag_p99_ms)}  backlog {self.backlog:,}"
        )


def steady_load(
    database: str,
    task: BackgroundTask,
    workers: Sequence[WorkerProcess],
    *,
    seconds: float,
    rate: float,
    window: float,
    hold_xmin: bool,
    on_window: Callable[[Window], None],
) -> tuple[list[Window], int]:
    """Offer ``rate`` tasks/s of ``task`` for ``seconds``; call ``on_window`` with each
    :class:`Window` as it closes. Returns the windows and the number of tasks offered."""
    stop = threading.Event()
    failures: list[BaseException] = []
    held = threading.Event()
    offered = [0]
    threads = [threading.Thread(target=_offer, args=(task, rate, stop, offered, failures))]
    if hold_xmin:
        threads.append(threading.Thread(target=_hold, args=(database, stop, held, failures)))
    started = queries.database_now(database)
    for thread in threads:
        thread.start()
    windows: list[Window] = []
    try:
        if hold_xmin and not held.wait(10):
            raise BenchError("Could not open the transaction that holds the xmin horizon.")
        since, began = started, time.monotonic()
        while (elapsed := time.monotonic() - began) < seconds:
            time.sleep(min(window, seconds - elapsed))
            check_alive(workers)
            if failures:
                raise BenchError(f"The steady load failed: {failures[0]!r}")
            until = queries.database_now(database)
            stats = queries.window(database, task.queue_name, task.name, since, until)
            span = max((until - since).total_seconds(), 1e-9)
            current = Window(
                ends_after_s=(until - started).total_seconds(),
                offered_per_s=stats.offered / span,
                run_per_s=stats.claimed / span,
                claim_lag_p50_ms=stats.lag_p50_ms,
                claim_lag_p99_ms=stats.lag_p99_ms,
                backlog=stats.backlog,
            )
            windows.append(current)
            on_window(current)
            since = until
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=30)
    if failures:
        raise BenchError(f"The steady load failed: {failures[0]!r}{worker_logs(workers)}")
    return windows, offered[0]


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
