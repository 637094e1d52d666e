"""What a worker is told to do: its options, checked as a whole before anything starts.

``runtaskworker`` builds one from its arguments and the ``TASKS_Q`` settings; code that runs a
worker in process may build one or pass the same keywords to
:class:`~django_tasks_q.worker.worker.Worker`.
"""

from __future__ import annotations

import difflib
import os
import socket
from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import Any

POOLS = ("threads", "processes")
# The worker id (the worker row's key, at most 100 characters) is the name and 7 more.
MAX_NAME_LENGTH = 90


def default_worker_name() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


@dataclass(frozen=True, kw_only=True)
class WorkerOptions:
    """A worker's options; invalid values raise :class:`ValueError` naming the value and the
    rule it breaks."""

    #: Queues to take tasks from; None (or empty): all.
    queues: Sequence[str] | None = None
    #: Child processes (process pool) or threads (thread pool) running tasks.
    concurrency: int = 4
    #: Threads in each child of the process pool.
    threads: int = 1
    #: Most tasks claimed in one statement.
    batch_size: int = 50
    #: Tasks held beyond capacity; None adapts to task durations.
    prefetch: int | None = None
    #: Seconds between looks at the queue when no notification arrives.
    poll_interval: float = 1.0
    lease_seconds: float = 60.0
    heartbeat_interval: float = 5.0
    #: Seconds running tasks get to finish after a stop; None: as long as they take.
    grace_period: float | None = None
    #: Seconds finished tasks are kept; None: forever.
    keep_successful: float | None = None
    keep_failed: float | None = None
    pool: str = "threads"
    max_tasks_per_child: int | None = None
    max_memory_per_child: float | None = None
    #: Wake on NOTIFY rather than only at the next poll.
    listen: bool = True
    #: Exit once no ready task is left.
    burst: bool = False
    #: The worker's name; empty (or None) becomes hostname-pid when the options are made.
    name: str = ""
    #: A file the main loop touches at least every second or so while it turns (liveness).
    health_file: str | None = None

    def __post_init__(self) -> None:
        # Frozen: normalised values are set through object.__setattr__, once, here.
        object.__setattr__(self, "queues", tuple(self.queues) if self.queues else None)
        object.__setattr__(self, "name", self.name or default_worker_name())
        if self.concurrency < 1:
            raise ValueError(f"concurrency must be at least 1, got {self.concurrency}")
        if self.threads < 1:
            raise ValueError(f"threads must be at least 1, got {self.threads}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {self.batch_size}")
        if self.poll_interval <= 0:
            raise ValueError(f"poll_interval must be > 0 seconds, got {self.poll_interval}")
        if self.prefetch is not None and self.prefetch < 0:
            raise ValueError(f"prefetch must be >= 0 or None (adaptive), got {self.prefetch}")
        if self.grace_period is not None and self.grace_period < 0:
            raise ValueError(f"grace period must be >= 0 seconds or None, got {self.grace_period}")
        if self.pool not in POOLS:
            raise ValueError(f"pool must be 'threads' or 'processes', got {self.pool!r}")
        if self.pool == "threads" and self.threads != 1:
            raise ValueError(
                "threads per child is for the process pool; with the thread pool, "
                "concurrency is the number of threads"
            )
        for option, value in (
            ("max_tasks_per_child", self.max_tasks_per_child),
            ("max_memory_per_child", self.max_memory_per_child),
        ):
            if value is not None and value <= 0:
                raise ValueError(f"{option} must be > 0 or None, got {value}")
        if len(self.name) > MAX_NAME_LENGTH:
            raise ValueError(
                f"worker name must be at most {MAX_NAME_LENGTH} characters, got {len(self.name)}"
            )
        check_retention(keep_successful=self.keep_successful, keep_failed=self.keep_failed)
        check_heartbeat(interval=self.heartbeat_interval, lease_seconds=self.lease_seconds)

    @classmethod
    def from_keywords(cls, **values: Any) -> WorkerOptions:
        """Options from keywords; a misspelt one is named with what it likely meant."""
        known = [item.name for item in fields(cls)]
        for key in values:
            if key not in known:
                close = difflib.get_close_matches(key, known, n=1)
                hint = f"; did you mean {close[0]!r}?" if close else f" (known: {', '.join(known)})"
                raise TypeError(f"unknown worker option {key!r}{hint}")
        return cls(**values)

    @property
    def capacity(self) -> int:
        """Tasks the worker runs at once: processes x threads each, or threads."""
        return self.concurrency * self.threads

    @property
    def queue_names(self) -> str:
        """The queues as the logs show them: comma-separated, or ``*`` for all."""
        return ",".join(self.queues) if self.queues else "*"


def check_retention(*, keep_successful: float | None, keep_failed: float | None) -> None:
    """The pruner's rule, also checked when a pruner is made on its own."""
    for option, keep in (("keep_successful", keep_successful), ("keep_failed", keep_failed)):
        if keep is not None and keep <= 0:
            raise ValueError(f"{option} must be None or > 0 seconds, got {keep}")


def check_heartbeat(*, interval: float, lease_seconds: float) -> None:
    """The heartbeat's rule: it must renew a lease before the lease runs out."""
    if interval <= 0 or lease_seconds <= interval:
        raise ValueError(
            f"heartbeat interval ({interval}s) must be > 0 and below the lease ({lease_seconds}s)"
        )
