"""Waiting for the database to show something, for callers that block (``wait()``)."""

from __future__ import annotations

import time
from collections.abc import Callable

# Looks start this often and slow down to this at most: quick answers for short tasks,
# one query a second for long ones.
LONGEST_POLL_INTERVAL = 1.0


def poll_until(done: Callable[[], bool], timeout: float | None, poll_interval: float) -> bool:
    """Call ``done`` until it returns true, the pause between calls growing from
    ``poll_interval`` by half each time up to a second. Returns False if ``timeout`` seconds
    passed first (None: wait as long as it takes)."""
    deadline = None if timeout is None else time.monotonic() + timeout
    interval = poll_interval
    while not done():
        if deadline is not None and time.monotonic() >= deadline:
            return False
        pause = (
            interval if deadline is None else min(interval, max(0.0, deadline - time.monotonic()))
        )
        time.sleep(pause)
        interval = min(interval * 1.5, LONGEST_POLL_INTERVAL)
    return True
