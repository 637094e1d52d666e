"""taskbench's results and the lines it prints: the header, one line per phase, the summary."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

Report = Callable[[str], None]

LABEL_WIDTH = 36
# With this many dead rows a claim was seen to take up to 2.5 times as long as after a VACUUM.
DEAD_ROWS_WARNING = 1_000_000


@dataclass(slots=True)
class Results:
    version: str
    postgres: str
    cpus: int
    tasks: int
    workers: int
    concurrency: int
    pool: str
    batch_size: int
    listen_notify: bool
    queue: str
    autovacuum: bool
    table_live_rows: int
    table_dead_rows: int
    enqueue_single_tasks: int = 0  # enqueued one by one, from one thread and from several
    enqueue_single_per_s: float = 0.0
    enqueue_threads: int = 0
    enqueue_concurrent_per_s: float = 0.0
    enqueue_bulk_per_s: float = 0.0
    # The enqueue phases' tasks, drained by workers that start at the same time (the process
    # pool's children set Django up meanwhile), and how long until every slot was ready.
    cold_drain_tasks: int = 0
    cold_drain_seconds: float = 0.0
    cold_drain_per_s: float = 0.0
    workers_ready_s: float = 0.0
    # ``tasks`` tasks enqueued in one transaction to workers whose every slot is ready: the
    # rate a running deployment drains a backlog at.
    drain_tasks: int = 0
    drain_seconds: float = 0.0
    drain_per_s: float = 0.0
    # What the drain cost the database per task: WAL bytes, commits (a commit is a statement
    # round trip of a worker's queue connection, or a task's own write) and rows written.
    # Database-wide, so whatever else runs there counts too.
    drain_wal_bytes_per_task: float | None = None
    drain_commits_per_task: float | None = None
    drain_rows_written_per_task: float | None = None
    # Tasks that wait io_task_ms each, drained by every slot: the rate against the ideal
    # (slots / duration), so a user sees how full their own slots are kept.
    io_task_ms: float | None = None
    io_tasks: int = 0
    io_per_s: float | None = None
    io_ideal_per_s: float | None = None
    io_pct_of_ideal: float | None = None
    # The mean milliseconds a task's wait really took, and the share of the slots' time spent
    # in tasks: what is missing from 100 % is the queue's (claims, hand-offs, recording).
    io_waited_ms: float | None = None
    io_slots_busy_pct: float | None = None
    # A chord of chord_size no-op tasks: seconds from the enqueue call to the body's end.
    chord_size: int = 0
    chord_seconds: float | None = None
    # limited_tasks tasks at most one running per key over limited_keys keys: their drain,
    # and the most that ran at once for one key (from the rows: must be 1).
    limited_tasks: int = 0
    limited_keys: int = 0
    limited_per_s: float | None = None
    limited_most_per_key: int | None = None
    # The steady load: what was offered (pressure_load: as a fraction of drain_per_s, None
    # when --pressure-rate set it), what pressed on the database meanwhile, each window as
    # reported, and how long the backlog left when it stopped took to drain.
    pressure_seconds: float | None = None
    pressure_rate: float | None = None
    pressure_load: float | None = None
    pressure_hold_xmin: bool = False
    pressure_readers: int = 0
    pressure_reader_scans: int = 0  # REPEATABLE READ scans the readers completed
    pressure_windows: list[dict[str, Any]] = field(default_factory=list)
    pressure_drain_after_s: float | None = None
    # --exhaust-connections: seconds asked for; connections it took to fill the server and
    # its refusal; worker connections ended; when (seconds since the load began, database
    # clock) the server was full with the workers cut off, and when the fillers were closed;
    # the workers' first claim after that; what the workers logged from then on.
    pressure_exhaust_seconds: float | None = None
    pressure_filler_connections: int | None = None
    pressure_refusal: str | None = None
    pressure_worker_connections_ended: int | None = None
    pressure_exhausted_from_s: float | None = None
    pressure_exhausted_until_s: float | None = None
    pressure_resumed_after_s: float | None = None
    pressure_worker_log: list[str] = field(default_factory=list)
    latency_samples: int = 0
    latency_p50_ms: float | None = None
    latency_p95_ms: float | None = None
    latency_p99_ms: float | None = None
    # The part of it from the enqueueing commit to the claim, by the database's timestamps.
    claim_latency_p50_ms: float | None = None
    claim_latency_p95_ms: float | None = None
    claim_latency_p99_ms: float | None = None
    worker_peak_mb: float | None = None
    ceiling_per_s: float | None = None
    drain_vs_ceiling_pct: float | None = None

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


def header(results: Results) -> str:
    lines = [
        f"django_tasks_q {results.version}, PostgreSQL {results.postgres}, {results.cpus} CPUs",
        f"tasks={results.tasks} workers={results.workers} concurrency={results.concurrency} "
        f"batch_size={results.batch_size} listen_notify={_on_off(results.listen_notify)} "
        f"queue={results.queue}",
        f"task table: ~{results.table_live_rows:,} live rows, ~{results.table_dead_rows:,} dead; "
        f"autovacuum={_on_off(results.autovacuum)}",
    ]
    if results.table_dead_rows > max(DEAD_ROWS_WARNING, results.table_live_rows):
        # Claims walk the ready index past entries of dead rows until a vacuum removes them.
        lines.append(
            "warning: that many dead rows can slow claims down; after VACUUM ANALYZE "
            "django_tasks_q_task the numbers would reflect a vacuumed table."
        )
    return "\n".join(lines) + "\n"


def phase_line(label: str, count: int, seconds: float, unit: str) -> str:
    """One phase's count, time and rate, aligned with the other phases' lines."""
    rate = count / seconds
    return f"{label:<{LABEL_WIDTH}}{count:>8,} {unit:<5} {seconds:>7.2f} s {rate:>10,.0f} {unit}/s"


def megabytes(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1f} MB"


def summary(results: Results) -> str:
    """The compact table printed at the end."""

    def rate(value: float | None, unit: str) -> str:
        return "skipped" if value is None else f"{value:,.0f} {unit}/s"

    if results.latency_p50_ms is None:
        latency = "skipped"
    else:
        latency = (
            f"{results.latency_p50_ms:.1f} / {results.latency_p95_ms:.1f} / "
            f"{results.latency_p99_ms:.1f} ms"
        )
    memory = megabytes(results.worker_peak_mb)
    ratio = (
        "skipped"
        if results.drain_vs_ceiling_pct is None
        else f"{results.drain_vs_ceiling_pct:.0f}%"
    )
    rows = [
        ("enqueue, one commit each", rate(results.enqueue_single_per_s, "tasks")),
        (
            f"  the same, {results.enqueue_threads} threads",
            rate(results.enqueue_concurrent_per_s, "tasks"),
        ),
        ("enqueue_many", rate(results.enqueue_bulk_per_s, "tasks")),
        ("drain, workers starting", rate(results.cold_drain_per_s, "tasks")),
        ("drain", rate(results.drain_per_s, "tasks")),
        (
            "I/O-bound"
            if results.io_task_ms is None
            else f"I/O-bound, {results.io_task_ms:g} ms tasks",
            "skipped"
            if results.io_pct_of_ideal is None
            else f"{rate(results.io_per_s, 'tasks')} ({results.io_pct_of_ideal:.0f}% of ideal, "
            f"{results.io_slots_busy_pct:.0f}% of the slots' time in tasks)",
        ),
        (
            f"chord of {results.chord_size:,}",
            "skipped" if results.chord_seconds is None else f"{results.chord_seconds:.2f} s",
        ),
        (
            f"limited, 1 per key over {results.limited_keys:,} keys",
            "skipped"
            if results.limited_per_s is None
            else f"{rate(results.limited_per_s, 'tasks')} "
            f"(most per key at once: {results.limited_most_per_key})",
        ),
        ("start latency p50 / p95 / p99", latency),
        ("steady load, worst window p99", _worst_lag(results)),
        ("peak worker memory", memory),
        ("SQL ceiling", rate(results.ceiling_per_s, "rows")),
        ("drain / ceiling", ratio),
    ]
    width = max(len(label) for label, _ in rows)
    return "\nSummary\n" + "\n".join(f"  {label:<{width}}  {value}" for label, value in rows)


def _on_off(value: bool) -> str:
    return "on" if value else "off"


def _worst_lag(results: Results) -> str:
    lags = [w["claim_lag_p99_ms"] for w in results.pressure_windows if w["claim_lag_p99_ms"]]
    if not lags:
        return "skipped"
    pressed = [
        "xmin held" if results.pressure_hold_xmin else "",
        f"{results.pressure_readers} readers" if results.pressure_readers else "",
        "connections exhausted" if results.pressure_exhausted_from_s is not None else "",
    ]
    return ", ".join([f"{max(lags):.1f} ms claim lag", *filter(None, pressed)])
