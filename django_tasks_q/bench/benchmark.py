"""The order of taskbench's phases and the line each one reports: :func:`run`."""

from __future__ import annotations

import os
import time
from importlib import metadata

from django_tasks_q.bench import phases, pressure, queries
from django_tasks_q.bench.options import BenchError, BenchOptions
from django_tasks_q.bench.report import (
    LABEL_WIDTH,
    Report,
    Results,
    header,
    megabytes,
    phase_line,
)
from django_tasks_q.bench.tasks import clock, noop, one_per_key, steady, waits
from django_tasks_q.bench.workers import (
    WorkerProcess,
    peak_memory_mb,
    running_workers,
    signals_interrupt,
    stop_workers,
    wait_until_ready,
)
from django_tasks_q.conf import settings as conf
from django_tasks_q.tasks import BackgroundTask

MIN_SINGLE_ENQUEUES = 1000
# Seconds for idle backends to add their counts to the server's statistics (PostgreSQL flushes
# them at most once a second).
STATISTICS_DELAY = 1.5
# The workers' log lines printed after an exhaustion of connections; --json has them all.
LOG_LINES_SHOWN = 12


def run(options: BenchOptions, report: Report) -> Results:
    """Run every phase in order, reporting one line per phase. Raises ``BenchError``."""
    options = options.resolved()
    database = queries.database_alias()
    live_rows, dead_rows = queries.table_rows(database)
    results = Results(
        version=_package_version(),
        postgres=queries.server_setting(database, "server_version"),
        cpus=os.cpu_count() or 1,
        tasks=options.tasks,
        workers=options.workers,
        concurrency=options.concurrency,
        pool=options.pool,
        batch_size=options.batch_size,
        listen_notify=conf.LISTEN_NOTIFY,
        queue=options.queue,
        autovacuum=queries.server_setting(database, "autovacuum") == "on",
        table_live_rows=live_rows,
        table_dead_rows=dead_rows,
    )
    report(header(results))
    own_queues = (options.queue, options.ceiling_queue)
    for queue_name in own_queues:
        queries.refuse_foreign_rows(database, queue_name)
    task = noop.using(queue_name=options.queue)
    with signals_interrupt():
        for queue_name in own_queues:
            queries.delete_bench_rows(database, queue_name)
        try:
            _run_phases(options, database, task, results, report)
        finally:
            if not options.keep:
                for queue_name in own_queues:
                    queries.delete_bench_rows(database, queue_name, report=report)
    return results


def _run_phases(
    options: BenchOptions, database: str, task: BackgroundTask, results: Results, report: Report
) -> None:
    _enqueue_phases(options, task, results, report)
    _worker_phases(options, database, task, results, report)


def _ceiling_phase(options: BenchOptions, database: str, results: Results, report: Report) -> None:
    """The SQL ceiling, right after the drain it is compared with: the same table, the same
    dead rows, the same moment of the machine's other load."""
    if options.skip_ceiling:
        report(f"{'   SQL ceiling':<{LABEL_WIDTH}}skipped (--skip-ceiling)")
        return
    rows, seconds = phases.sql_ceiling(database, options)
    results.ceiling_per_s = rows / seconds
    results.drain_vs_ceiling_pct = 100 * results.drain_per_s / results.ceiling_per_s
    report(phase_line(f"   SQL ceiling, {options.workers} connections", rows, seconds, "rows"))
    report(f"{'   drain / ceiling':<{LABEL_WIDTH}}{results.drain_vs_ceiling_pct:>8.0f}%")


def _enqueue_phases(
    options: BenchOptions, task: BackgroundTask, results: Results, report: Report
) -> None:
    singles = max(options.tasks // 10, min(MIN_SINGLE_ENQUEUES, options.tasks))
    elapsed = phases.enqueue_one_by_one(task, singles)
    results.enqueue_single_tasks = singles
    results.enqueue_single_per_s = singles / elapsed
    report(phase_line("1. enqueue, one commit each", singles, elapsed, "tasks"))

    # Commits from many web processes at once share WAL flushes (group commit): the rate a
    # site sees under load, beyond one connection's commit latency.
    threads = options.enqueue_threads
    elapsed = phases.enqueue_concurrently(task, range(singles, 2 * singles), threads)
    results.enqueue_threads = threads
    results.enqueue_concurrent_per_s = singles / elapsed
    report(phase_line(f"   the same from {threads} threads", singles, elapsed, "tasks"))
    results.enqueue_single_tasks = 2 * singles

    numbers = range(2 * singles, 2 * singles + options.tasks)
    elapsed = phases.enqueue_in_bulk(task, [(n,) for n in numbers])
    results.enqueue_bulk_per_s = options.tasks / elapsed
    label = f"2. enqueue_many, {phases.BULK_CHUNK} a call"
    report(phase_line(label, options.tasks, elapsed, "tasks"))


def _worker_phases(
    options: BenchOptions, database: str, task: BackgroundTask, results: Results, report: Report
) -> None:
    # No other worker may have touched the backlog. Ours start only now, so that they face
    # all of it from their first claim.
    queries.refuse_foreign_workers(database, options.queue)
    before = queries.database_cost(database)
    started = time.monotonic()
    with running_workers(options) as workers:
        # The enqueue phases' tasks, while the workers start: what a restart does to a backlog.
        expected = results.enqueue_single_tasks + options.tasks
        drained, seconds = phases.drain(database, options.queue, workers, expected)
        results.cold_drain_tasks, results.cold_drain_seconds = drained, seconds
        results.cold_drain_per_s = drained / seconds
        slots = "threads" if options.pool == "threads" else "processes"
        label = f"3. drain, {options.workers} workers x {options.concurrency} {slots}"
        report(label)
        verified = "  (results verified)"
        report(phase_line("   workers starting", drained, seconds, "tasks") + verified)
        # Idle backends add to the statistics at most a second late.
        time.sleep(STATISTICS_DELAY)
        cost = queries.database_cost(database) - before
        results.drain_wal_bytes_per_task = cost.wal_bytes / drained
        results.drain_commits_per_task = cost.commits / drained
        results.drain_rows_written_per_task = cost.rows_written / drained
        report(
            f"{'   database cost per task':<{LABEL_WIDTH}}"
            f"{results.drain_wal_bytes_per_task:>8,.0f} B of WAL, "
            f"{results.drain_commits_per_task:.3f} commits, "
            f"{results.drain_rows_written_per_task:.2f} rows written  (whole database)"
        )

        results.workers_ready_s = wait_until_ready(workers, started)
        report(
            f"{'   every slot ready after':<{LABEL_WIDTH}}{results.workers_ready_s:>8.2f} s"
            "  (from the workers' start)"
        )
        # The same number of tasks again, all committed at once, to workers that are ready:
        # the rate of a running deployment, the number compared with the ceiling.
        after_id = queries.last_id(database)
        numbers = range(expected, expected + options.tasks)
        phases.enqueue_in_bulk(task, [(n,) for n in numbers], one_commit=True)
        drained, seconds = phases.drain(
            database, options.queue, workers, options.tasks, after_id=after_id
        )
        results.drain_tasks, results.drain_seconds = drained, seconds
        results.drain_per_s = drained / seconds
        report(phase_line("   workers ready", drained, seconds, "tasks") + verified)
        _ceiling_phase(options, database, results, report)

        _io_bound_phase(options, database, workers, results, report)
        _chord_phase(options, database, workers, results, report)
        _limited_phase(options, database, workers, results, report)

        if options.latency_samples:
            latencies = phases.measure_latency(
                database, clock.using(queue_name=options.queue), workers, options.latency_samples
            )
            p50, p95, p99 = (phases.percentile(latencies.start, q) for q in (50, 95, 99))
            results.latency_samples = len(latencies.start)
            results.latency_p50_ms, results.latency_p95_ms, results.latency_p99_ms = p50, p95, p99
            claim = [phases.percentile(latencies.claim, q) for q in (50, 95, 99)]
            results.claim_latency_p50_ms, results.claim_latency_p95_ms = claim[0], claim[1]
            results.claim_latency_p99_ms = claim[2]
            report(
                f"{'4. latency, idle workers':<{LABEL_WIDTH}}{len(latencies.start):>8,} tasks   "
                f"p50 {p50:.1f} ms  p95 {p95:.1f} ms  p99 {p99:.1f} ms"
                "  (enqueue call to the task's first line)"
            )
            report(
                f"{'   of which commit to claim':<{LABEL_WIDTH}}{'':>8}         "
                f"p50 {claim[0]:.1f} ms  p95 {claim[1]:.1f} ms  p99 {claim[2]:.1f} ms"
                "  (database clock)"
            )
        else:
            report(f"{'4. latency, idle workers':<{LABEL_WIDTH}}skipped (--latency-samples 0)")

        _steady_load_phase(options, database, workers, results, report)

        # Read before stopping: the peak is gone with the process.
        results.worker_peak_mb = peak_memory_mb(workers)
        stop_workers(workers)
        report(
            f"{'5. peak worker memory':<{LABEL_WIDTH}}{megabytes(results.worker_peak_mb)} "
            f"(largest VmHWM of {len(workers)} workers, children included); all exited cleanly"
        )


def _io_bound_phase(
    options: BenchOptions,
    database: str,
    workers: list[WorkerProcess],
    results: Results,
    report: Report,
) -> None:
    """Tasks that wait, as calls to other services do: how close the workers come to keeping
    every slot busy (slots / task duration)."""
    label = f"3b. I/O-bound, {options.io_task_ms:g} ms tasks"
    count = options.io_tasks_per_slot * options.slots
    if not count:
        report(f"{label:<{LABEL_WIDTH}}skipped (--io-tasks-per-slot 0)")
        return
    phases.enqueue_in_bulk(waits.using(queue_name=options.queue), [(options.io_task_ms,)] * count)
    phases.wait_until_drained(database, options.queue, workers)
    drained, seconds, waited_ms = queries.verify_waits(database, options.queue, count)
    queries.refuse_foreign_workers(database, options.queue, queries.WAITS_NAME)
    results.io_task_ms, results.io_tasks = options.io_task_ms, drained
    results.io_per_s = drained / seconds
    results.io_ideal_per_s = options.slots * 1000 / options.io_task_ms
    results.io_pct_of_ideal = 100 * results.io_per_s / results.io_ideal_per_s
    # Sleeps end late (the more so on a busy machine): the share of slot time spent inside
    # the tasks tells the queue's own gaps apart from that.
    results.io_waited_ms = waited_ms
    results.io_slots_busy_pct = 100 * results.io_per_s * waited_ms / 1000 / options.slots
    report(
        phase_line(label, drained, seconds, "tasks")
        + f"  ({results.io_pct_of_ideal:.0f}% of {results.io_ideal_per_s:,.0f}/s: "
        f"{options.slots} slots busy all the time)"
    )
    report(
        f"{'   time in tasks':<{LABEL_WIDTH}}{results.io_slots_busy_pct:>8.0f}%    of the slots' "
        f"time (a {options.io_task_ms:g} ms wait took {waited_ms:.2f} ms on average)"
    )


def _chord_phase(
    options: BenchOptions,
    database: str,
    workers: list[WorkerProcess],
    results: Results,
    report: Report,
) -> None:
    """A chord of no-op tasks: from the call that enqueues it to the end of its body, which
    must have received every header's result."""
    label = f"3c. chord, {options.chord_size:,} no-op tasks"
    if not options.chord_size:
        report(f"{label:<{LABEL_WIDTH}}skipped (--chord-size 0)")
        return
    seconds = phases.run_chord(database, options.queue, workers, options.chord_size)
    results.chord_size, results.chord_seconds = options.chord_size, seconds
    report(
        f"{label:<{LABEL_WIDTH}}{seconds:>8.2f} s    from the enqueue call to the body's end "
        f"({options.chord_size / seconds:,.0f} tasks/s)"
    )


def _limited_phase(
    options: BenchOptions,
    database: str,
    workers: list[WorkerProcess],
    results: Results,
    report: Report,
) -> None:
    """No-op tasks limited to one running per key (docs/flow-control.md): what the limit costs
    the drain, and proof from the rows that it held."""
    count, keys = options.limited_tasks, options.limited_keys
    label = f"3d. limited, 1 per key, {keys:,} keys"
    if not count:
        report(f"{label:<{LABEL_WIDTH}}skipped (--limited-tasks 0)")
        return
    task = one_per_key.using(queue_name=options.queue)
    phases.enqueue_in_bulk(task, [(n, f"key-{n % keys}") for n in range(count)])
    drained, seconds = phases.drain(database, options.queue, workers, count, queries.LIMITED_NAME)
    most = queries.most_running_per_key(database, options.queue, queries.LIMITED_NAME)
    results.limited_tasks, results.limited_keys = drained, keys
    results.limited_per_s, results.limited_most_per_key = drained / seconds, most
    report(
        phase_line(label, drained, seconds, "tasks")
        + f"  (most running for one key at once: {most})"
    )
    if most > 1:
        raise BenchError(f"{most} tasks of one key ran at once; the limit is 1.")


def _steady_load_phase(
    options: BenchOptions,
    database: str,
    workers: list[WorkerProcess],
    results: Results,
    report: Report,
) -> None:
    """A steady load, window by window, optionally under stress (a held xmin horizon,
    REPEATABLE READ readers, the server's connections taken). Then how long the backlog takes
    to drain once it ends."""
    label = "4b. steady load"
    if not options.pressure_seconds:
        report(f"{label:<{LABEL_WIDTH}}skipped (--pressure 0)")
        return
    if options.pressure_load is None:
        rate = options.pressure_rate
        share = ""
    else:
        rate = max(1.0, results.drain_per_s * options.pressure_load)
        share = f" ({options.pressure_load:g} x the drain rate)"
    stress = pressure.Stress(
        hold_xmin=options.hold_xmin,
        readers=options.readers,
        exhaust_seconds=options.exhaust_connections,
    )
    report(
        f"{label}: {rate:,.0f} tasks/s offered{share} for {options.pressure_seconds:g} s"
        f"{_stress_description(stress, options.pressure_seconds)}"
    )
    load = pressure.steady_load(
        database,
        steady.using(queue_name=options.queue),
        workers,
        seconds=options.pressure_seconds,
        rate=rate,
        window=options.pressure_window,
        stress=stress,
        on_window=lambda window: report(window.line()),
    )
    results.pressure_seconds, results.pressure_rate = options.pressure_seconds, rate
    results.pressure_load = options.pressure_load
    results.pressure_hold_xmin = options.hold_xmin
    results.pressure_readers, results.pressure_reader_scans = options.readers, load.reader_scans
    results.pressure_windows = [window.as_json() for window in load.windows]
    stopped = queries.database_now(database)
    drained, _ = phases.drain(database, options.queue, workers, load.offered, queries.STEADY_NAME)
    last = queries.last_finish(database, options.queue, queries.STEADY_NAME)
    results.pressure_drain_after_s = max(0.0, (last - stopped).total_seconds())
    if load.exhaustion:
        _exhaustion_lines(options, database, load, results, report)
    report(
        f"{'   backlog drained after the load':<{LABEL_WIDTH}}"
        f"{results.pressure_drain_after_s:.2f} s  ({drained:,} tasks, results verified)"
    )


def _stress_description(stress: pressure.Stress, seconds: float) -> str:
    parts = []
    if stress.hold_xmin:
        parts.append("a transaction holding the xmin horizon")
    if stress.readers:
        parts.append(f"{stress.readers} REPEATABLE READ readers scanning the task table")
    if stress.exhaust_seconds:
        parts.append(
            f"every free connection taken for {stress.exhaust_seconds:g} s "
            f"from {seconds / 2:g} s on"
        )
    return "".join(f", {part}" for part in parts)


def _exhaustion_lines(
    options: BenchOptions,
    database: str,
    load: pressure.SteadyLoad,
    results: Results,
    report: Report,
) -> None:
    """What taking the server's connections did: how many it took, how many of the workers'
    connections it ended, when the workers claimed again, and what they logged."""
    exhaustion = load.exhaustion
    results.pressure_exhaust_seconds = options.exhaust_connections
    results.pressure_filler_connections = exhaustion.fillers
    results.pressure_refusal = exhaustion.refusal
    results.pressure_worker_connections_ended = len(exhaustion.cut_off)
    results.pressure_worker_log = load.worker_log
    label = "   connections exhausted"
    if exhaustion.began is None or exhaustion.ended is None:
        report(f"{label:<{LABEL_WIDTH}}did not happen: the load ended first")
        return
    results.pressure_exhausted_from_s = (exhaustion.began - load.started).total_seconds()
    results.pressure_exhausted_until_s = (exhaustion.ended - load.started).total_seconds()
    report(
        f"{label:<{LABEL_WIDTH}}from {results.pressure_exhausted_from_s:.1f} s to "
        f"{results.pressure_exhausted_until_s:.1f} s: {exhaustion.fillers:,} connections "
        f"took the free slots, {len(exhaustion.cut_off)} of the workers' were ended "
        f"(the server's refusal: {_short_refusal(exhaustion.refusal)})"
    )
    resumed = queries.first_claim_after(
        database, options.queue, queries.STEADY_NAME, exhaustion.ended
    )
    if resumed is not None:
        results.pressure_resumed_after_s = (resumed - exhaustion.ended).total_seconds()
        report(
            f"{'   workers claimed again':<{LABEL_WIDTH}}"
            f"{results.pressure_resumed_after_s:.2f} s after the connections were freed"
        )
    shown = load.worker_log[:LOG_LINES_SHOWN]
    more = len(load.worker_log) - len(shown)
    report(f"   the workers' log from then on ({len(load.worker_log)} lines):")
    for line in shown:
        report(f"     {line}")
    if more:
        report(f"     ... {more} more in --json's pressure_worker_log")


def _short_refusal(refusal: str) -> str:
    """The server's own words, without libpq's preamble naming the socket or host."""
    return refusal.rpartition("FATAL:")[2].strip() or refusal


def _package_version() -> str:
    try:
        return metadata.version("django-tasks-q")
    except metadata.PackageNotFoundError:
        return "dev"
