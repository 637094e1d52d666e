"""How many tasks a worker claims at a time, and when it records outcomes.

Claiming costs a round trip; holding tasks nobody runs yet keeps them from idle workers. The
sizer keeps running averages of both sides, the round trip and the task durations, and
claims enough that the executors never wait for the database, and no more. Outcomes are
recorded by the same statement, so the sizer also says when enough of them wait.
"""

from __future__ import annotations

import math

# Weight of the newest sample in the running averages: about the last ten count. Durations
# that grow count more at once, so that a switch to longer tasks stops the prefetching of
# many within a few outcomes.
AVERAGE_WEIGHT = 0.1
LONGER_WEIGHT = 0.5
# Tasks expected to end sooner than this keep a spare task for every slot (slots started
# together end together, and each then starts its spare without waiting for a round trip),
# plus what the slots finish while an outcome waits to be recorded and the claim that rides
# on it comes back. Longer ones are not held beyond what can start, so a worker does not sit
# on a task another worker could start.
SPARE_BELOW = 0.25
# Short tasks are held up to this many batches beyond the capacity: the slots work through
# one while the statement that records the other's outcomes and claims its replacement is
# on its way, so they do not run dry for the round trip (with one batch ahead, no-op tasks'
# slots idled during part of each statement; two drained a third more of them).
PREFETCH_BATCHES = 2
# Longest an outcome waits to be recorded while the worker's other tasks still run: outcomes
# that finish close together are then recorded by one statement and one commit, not one each.
RECORD_WITHIN = 0.003


class ClaimSizer:
    """The claim limit of a worker that runs ``capacity`` tasks at once."""

    def __init__(self, *, capacity: int, batch_size: int, prefetch: int | None) -> None:
        self.capacity = capacity
        self.batch_size = batch_size
        # None: adapt to task durations (see prefetch()); a number fixes it.
        self.fixed_prefetch = prefetch
        self.mean_duration: float | None = None
        self.mean_round_trip = 0.0

    def observe_round_trip(self, seconds: float) -> None:
        self.mean_round_trip = _moving_average(self.mean_round_trip, seconds)

    def observe_duration(self, seconds: float) -> None:
        self.mean_duration = mean_duration(self.mean_duration, seconds)

    def limit(self, held: int, *, riding: bool = False) -> int:
        """How many tasks to claim while holding ``held`` (claimed and not finished): 0, or
        a batch worth a round trip.

        Executors that have nothing to do always get work. Otherwise the prefetch buffer is
        refilled only once half a batch has room, so a steady stream of completions does not
        turn into a stream of one-row claims; unless the claim is ``riding`` on a statement
        that records outcomes anyway, which it then fills up at no extra round trip.
        """
        prefetch = self.prefetch()
        free = self.capacity + prefetch - held
        if free <= 0:
            return 0
        if riding or held < self.capacity or free >= min(self.batch_size, prefetch) // 2:
            return min(self.batch_size, free)
        return 0

    def record_now(self, *, held: int, unrecorded: int, waited: float) -> bool:
        """Whether ``unrecorded`` outcomes, the oldest ``waited`` seconds old, are to be
        recorded now, while holding ``held`` tasks (those included): at once when nothing
        else runs (no one to wait for) or half a batch waits, else after
        :data:`RECORD_WITHIN`."""
        if not unrecorded:
            return False
        return (
            held <= unrecorded
            or unrecorded >= max(1, self.batch_size // 2)
            or waited >= RECORD_WITHIN
        )

    def prefetch(self) -> int:
        """Tasks to hold beyond the executors' capacity.

        Adaptive by default. Short tasks: a spare for every slot, plus as many as the
        executors finish while a finished task's outcome waits to be recorded
        (:data:`RECORD_WITHIN`) and the claim that rides on it comes back, so that a slot
        never waits for the database. Long tasks: as many as finish during one round trip,
        usually none, so they are not hoarded by one worker while others idle. Capped at
        :data:`PREFETCH_BATCHES` batches.
        """
        if self.fixed_prefetch is not None:
            return self.fixed_prefetch
        if self.mean_duration is None:
            return 0
        duration = max(self.mean_duration, 1e-6)
        if self.mean_duration < SPARE_BELOW:
            refill = self.mean_round_trip + RECORD_WITHIN
            wanted = self.capacity + math.ceil(self.capacity * refill / duration)
        else:
            wanted = int(self.capacity * self.mean_round_trip / duration + 0.5)
        return min(PREFETCH_BATCHES * self.batch_size, wanted)


def mean_duration(current: float | None, sample: float) -> float:
    """The running mean of task durations after ``sample``: quick to rise, slow to fall."""
    if current is not None and sample > current:
        return current + LONGER_WEIGHT * (sample - current)
    return _moving_average(current, sample)


def _moving_average(current: float | None, sample: float) -> float:
    return sample if current is None else current + AVERAGE_WEIGHT * (sample - current)
