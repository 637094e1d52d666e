"""Where a worker's next claim starts walking the ready index: its claim floor.

A claim walks tasks_q_ready_idx in claim order and takes the first rows it can lock. Every
task claimed leaves a dead index entry at the head of that order, which PostgreSQL removes
only once no session may still see the row as READY. While a session holds the xmin horizon
back (a long report, an idle-in-transaction session, a replica's feedback), a claim from the
start steps over the entries of every task claimed since, and claims slow down for as long as
the horizon is held. So each claim starts where this worker's last one stopped: the floor.

Rows can become ready behind a floor, and each way has its answer:

- A transaction that enqueued, retried, released or recovered tasks commits after the floor
  passed their position (run_after is the transaction's start). Its NOTIFY carries the
  earliest position it made ready, and :meth:`ClaimFloor.lower` moves the floor back to it.
- What no notification announces (rows another worker locked and then left, a task of higher
  priority whose run_after came due, LISTEN/NOTIFY turned off, a notification missed while
  the listener reconnected): a claim from the start now and then finds it. They are spaced
  by at least FULL_SCAN_INTERVAL, and further while a claim from the start is slow, so that
  they never take more than FULL_SCAN_SHARE of the worker's time.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from django_tasks_q.queue import FIRST_POSITION, ClaimedTask, ClaimPosition

FULL_SCAN_INTERVAL = 1.0
# Claims queued behind a slow claim from the start wait for it: kept to a share of the time
# well under 1 %, they leave the claim lag's 99th percentile alone.
FULL_SCAN_SHARE = 0.005


@dataclass(frozen=True, slots=True)
class ClaimStart:
    """Where one claim starts: one position per queue (one in all for a worker of every
    queue), and whether it is a claim from the start."""

    positions: tuple[ClaimPosition, ...]
    from_start: bool


class ClaimFloor:
    """The floors of one worker; ``queues`` None means one floor for every queue.

    The main loop calls :meth:`start` before a claim and :meth:`advance` after it; the
    listener thread calls :meth:`lower`, which takes effect at the next claim.
    """

    def __init__(
        self, queues: Sequence[str] | None, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        # None: every queue shares floor 0.
        self._indexes = {queue: index for index, queue in enumerate(queues)} if queues else None
        self._clock = clock
        self._floors: list[ClaimPosition] = [FIRST_POSITION] * (len(queues) if queues else 1)
        self._next_full_scan = 0.0  # a claim from the start first
        # Written by the listener thread, taken by the next claim.
        self._lock = threading.Lock()
        self._lowered: dict[int, ClaimPosition] = {}
        self._anywhere = False

    @property
    def floors(self) -> tuple[ClaimPosition, ...]:
        """Where claims from the floor start now: one per queue, or one in all."""
        return tuple(self._floors)

    def start(self) -> ClaimStart:
        with self._lock:
            lowered, self._lowered = self._lowered, {}
            anywhere, self._anywhere = self._anywhere, False
        if anywhere or self._clock() >= self._next_full_scan:
            return ClaimStart((FIRST_POSITION,) * len(self._floors), from_start=True)
        positions = tuple(
            min(floor, lowered.get(index, floor)) for index, floor in enumerate(self._floors)
        )
        return ClaimStart(positions, from_start=False)

    def advance(
        self, start: ClaimStart, picked: Iterable[ClaimedTask], *, limit: int, seconds: float
    ) -> None:
        """Move the floors past what the claim started at ``start`` picked (claimed or
        cancelled instead) out of ``limit``; it took ``seconds``."""
        furthest: dict[int, ClaimPosition] = {}
        count = 0
        for task in picked:
            count += 1
            index = self._index(task.queue)
            if index is not None and (index not in furthest or task.position > furthest[index]):
                furthest[index] = task.position
        # A claim that came back short walked every due row after its start: whatever it did
        # not take is locked by other workers, so the old floor still holds. A full claim
        # stopped at its last row; rows after it remain.
        full = count >= limit
        for index, position in enumerate(start.positions):
            reached = furthest.get(index)
            if full:
                self._floors[index] = reached or position
            elif reached is not None:
                self._floors[index] = max(self._floors[index], reached)
        if start.from_start:
            self._next_full_scan = self._clock() + max(
                FULL_SCAN_INTERVAL, seconds / FULL_SCAN_SHARE
            )

    def lower(self, queue: str, position: ClaimPosition | None) -> None:
        """A row at ``position`` of ``queue`` became ready (None: somewhere unknown)."""
        index = self._index(queue)
        if index is None:
            return
        with self._lock:
            if position is None:
                self._anywhere = True
            elif index not in self._lowered or position < self._lowered[index]:
                self._lowered[index] = position

    def forget(self) -> None:
        """Claim from the start next time: something may have become ready anywhere (a
        recovery without notifications, a claim whose answer was lost)."""
        with self._lock:
            self._anywhere = True

    def _index(self, queue: str) -> int | None:
        return 0 if self._indexes is None else self._indexes.get(queue)
