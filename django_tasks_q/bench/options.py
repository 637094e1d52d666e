"""What a taskbench run is asked to do, and the one error it raises."""

from __future__ import annotations

import os
from dataclasses import dataclass, replace

from django_tasks_q.conf import settings as conf


class BenchError(Exception):
    """The benchmark cannot run or its results cannot be trusted."""


# The steady load offers this fraction of the drain rate unless told otherwise: enough to keep
# the workers busy, not so much that a backlog builds up.
DEFAULT_PRESSURE_LOAD = 0.5


CEILING_SUFFIX = ".ceiling"


@dataclass(frozen=True, slots=True)
class BenchOptions:
    tasks: int = 20_000
    workers: int | None = None  # None: os.cpu_count()
    concurrency: int | None = None  # None: TASKS_Q["CONCURRENCY"]
    batch_size: int | None = None  # None: TASKS_Q["BATCH_SIZE"]
    queue: str = "taskbench"
    latency_samples: int = 200
    # The I/O-bound phase: tasks that wait this long each, this many per slot (0: skip).
    io_task_ms: float = 10.0
    io_tasks_per_slot: int = 100
    # The chord phase: this many no-op header tasks and one body (0: skip).
    chord_size: int = 10_000
    # The limited phase: this many tasks limited to one running per key, over this many keys
    # (0 tasks: skip).
    limited_tasks: int = 10_000
    limited_keys: int = 100
    # The steady-load phase: seconds (0: skip), tasks/s offered, or else that fraction of the
    # drain rate (None: DEFAULT_PRESSURE_LOAD), and seconds per reported window. Meanwhile,
    # optionally: a transaction holds the xmin horizon, sessions re-scan the task table in
    # REPEATABLE READ transactions, and the server's free connections are taken for a while.
    pressure_seconds: float = 0.0
    pressure_rate: float | None = None
    pressure_load: float | None = None
    pressure_window: float = 10.0
    hold_xmin: bool = False
    readers: int = 0
    exhaust_connections: float = 0.0
    enqueue_threads: int = 8
    pool: str = "processes"
    skip_ceiling: bool = False
    keep: bool = False

    def resolved(self) -> BenchOptions:
        """These options with every default filled in, validated."""
        resolved = replace(
            self,
            workers=self.workers or os.cpu_count() or 1,
            concurrency=self.concurrency or conf.CONCURRENCY,
            batch_size=self.batch_size or conf.BATCH_SIZE,
        )
        for name in ("tasks", "workers", "concurrency", "batch_size", "enqueue_threads"):
            if getattr(resolved, name) < 1:
                raise BenchError(f"--{name.replace('_', '-')} must be at least 1.")
        if resolved.latency_samples < 0:
            raise BenchError("--latency-samples must be 0 or more.")
        if resolved.limited_tasks < 0 or resolved.limited_keys < 1:
            raise BenchError("--limited-tasks must be 0 or more, --limited-keys at least 1.")
        if resolved.chord_size < 0:
            raise BenchError("--chord-size must be 0 or more.")
        if resolved.io_tasks_per_slot < 0:
            raise BenchError("--io-tasks-per-slot must be 0 or more.")
        if resolved.pressure_seconds < 0:
            raise BenchError("--pressure must be 0 or more seconds.")
        if resolved.pressure_rate is not None and resolved.pressure_rate <= 0:
            raise BenchError("--pressure-rate must be more than 0 tasks per second.")
        if resolved.pressure_load is not None and resolved.pressure_load <= 0:
            raise BenchError("--pressure-load must be more than 0 (a fraction of the drain rate).")
        if resolved.pressure_rate is not None and resolved.pressure_load is not None:
            raise BenchError("Give --pressure-rate or --pressure-load, not both.")
        if resolved.pressure_rate is None:
            resolved = replace(
                resolved, pressure_load=resolved.pressure_load or DEFAULT_PRESSURE_LOAD
            )
        if resolved.pressure_window <= 0:
            raise BenchError("--pressure-window must be more than 0 seconds.")
        if resolved.readers < 0:
            raise BenchError("--readers must be 0 or more.")
        if resolved.exhaust_connections < 0:
            raise BenchError("--exhaust-connections must be 0 or more seconds.")
        for flag, given in (
            ("--hold-xmin", resolved.hold_xmin),
            ("--readers", resolved.readers),
            ("--exhaust-connections", resolved.exhaust_connections),
        ):
            if given and not resolved.pressure_seconds:
                raise BenchError(f"{flag} applies to the steady load: give --pressure SECONDS.")
        # It starts at the middle of the load, so that the windows show the load before it,
        # and the load goes on until the end, so that they show the workers coming back.
        if resolved.exhaust_connections > resolved.pressure_seconds / 2:
            raise BenchError(
                "--exhaust-connections starts at the middle of the steady load and must end "
                "within it: at most half of --pressure."
            )
        if not 0 < resolved.io_task_ms <= 60_000:
            raise BenchError("--io-task-ms must be more than 0 and at most 60000.")
        if resolved.pool not in ("threads", "processes"):
            raise BenchError("--pool must be 'threads' or 'processes'.")
        # runtaskworker takes a comma-separated list: a comma would name two queues. The
        # ceiling's queue adds a suffix, and a queue name has at most 100 characters.
        longest = 100 - len(CEILING_SUFFIX)
        if not resolved.queue or "," in resolved.queue or len(resolved.queue) > longest:
            raise BenchError(
                f"--queue must be one queue name of at most {longest} characters, no commas."
            )
        return resolved

    @property
    def ceiling_queue(self) -> str:
        """The SQL ceiling's queue: one the workers do not serve."""
        return f"{self.queue}{CEILING_SUFFIX}"

    @property
    def slots(self) -> int:
        """Tasks the benchmark's workers run at once."""
        return (self.workers or 1) * (self.concurrency or 1)

    def worker_arguments(self) -> list[str]:
        """runtaskworker options for the benchmark's workers; a new worker option is one line."""
        return [
            "--queues", self.queue,
            "--concurrency", str(self.concurrency),
            "--batch-size", str(self.batch_size),
            "--pool", self.pool,
        ]  # fmt: skip
