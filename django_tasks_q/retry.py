"""How an attempt ends: every rule the worker and the recovery of lost attempts follow.

- **Success**: the task returned a value that can be stored: SUCCESSFUL.
- **Its own error**: the task raised. Another attempt (READY, after :func:`retry_delay`)
  while the task's retry budget lasts (``max_retries``; ``context.retry()`` and
  ``autoretry_for`` refine it), FAILED after that. A return value that cannot be stored
  is a failure with no retry: running again would store nothing either.
- **Cancelled**: the task stopped on a cancellation (``raise_if_cancelled``, or killed with
  ``cancel(terminate=True)``), or raised while its cancellation was requested: CANCELLED, no
  further attempt. A task whose cancellation is requested before it starts never starts.
- **Lost**: the attempt ended for a reason that is not the task's: its worker was killed,
  froze past its lease or was restarted, its process-pool child was killed from outside, a
  sibling task made its child be killed, or the database went away under it. It runs again
  without spending the task's retries (at once; after 1, 2, 4... s when the database went
  away), until ``max_lost_attempts`` attempts were lost
  (``TASKS_Q["MAX_LOST_ATTEMPTS"]``, 3): then it is FAILED, so a task that kills every worker
  it lands on cannot loop forever.
- **Expired**: no attempt starts after ``expires_at``: the claim cancels such a task instead
  (``finish_and_claim`` in ``sql/queue.sql``), recording ``TaskExpired``.
- **Unknown name**: a worker that does not know a task's name gives it back without counting
  an attempt (due again 1 s later; that worker leaves it to the others for 10 s), for a
  worker that does, and fails it only once it has waited ``TASKS_Q["UNKNOWN_TASK_GRACE"]``
  seconds since it was enqueued.
- **No database connection**: a task whose executor has no connection to the queue's
  database and cannot open one (the server is out of connections, or restarting) does not
  start: it is given back without counting an attempt, due again 1 s later.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

from django_tasks_q.exceptions import MaxRetriesExceededError, Retry, TaskCancelled

if TYPE_CHECKING:
    from django_tasks_q.tasks import BackgroundTask


READY, FAILED, CANCELLED = "READY", "FAILED", "CANCELLED"


@dataclass(frozen=True, slots=True)
class Decision:
    """What becomes of a task after an attempt: its status (READY: run again after
    ``delay`` seconds) and the number of attempts it may have in all."""

    status: str
    max_attempts: int
    delay: float = 0.0


def after_error(
    task: BackgroundTask,
    exc: BaseException,
    *,
    attempt: int,
    max_attempts: int,
    lost_attempts: int = 0,
    cancel_requested: bool = False,
    retry: bool = True,
) -> Decision:
    """The task raised ``exc`` on ``attempt``. ``max_attempts`` counts the attempts allowed so
    far, lost ones included; ``retry=False`` rules out another attempt."""
    if isinstance(exc, TaskCancelled) or cancel_requested:
        return Decision(CANCELLED, max_attempts)
    requested_delay = None
    if isinstance(exc, Retry):
        if exc.max_retries is not None:
            max_attempts = exc.max_retries + 1 + lost_attempts
        requested_delay = exc.countdown
    if retry and should_retry(task, exc, attempt, max_attempts):
        return Decision(READY, max_attempts, retry_delay(task, attempt, requested_delay))
    return Decision(FAILED, max_attempts)


def after_lost(
    *,
    max_attempts: int,
    lost_attempts: int,
    max_lost_attempts: int,
    cancel_requested: bool,
    database: bool = False,
) -> Decision:
    """An attempt was lost; ``lost_attempts`` were lost before it. It is given one more attempt
    in place of the lost one, unless this loss reaches the cap. It runs again at once, or,
    lost because the database went away (``database``), after 1, 2, 4... seconds: a database
    that is restarting must not use up the lost attempts in a moment."""
    if cancel_requested:
        return Decision(CANCELLED, max_attempts)
    if lost_attempts + 1 >= max_lost_attempts:
        return Decision(FAILED, max_attempts)
    delay = min(2.0**lost_attempts, 30.0) if database else 0.0
    return Decision(READY, max_attempts + 1, delay)


def unknown_task_waited_enough(
    *, enqueued_at: datetime, claimed_at: datetime, grace: float
) -> bool:
    """Whether a task no worker here knows has waited its grace period (both times are the
    database's, so workers on other hosts agree)."""
    return (claimed_at - enqueued_at).total_seconds() >= grace


# Seconds before a task given back for an unknown name is due again, and how long the
# worker that gave it back leaves it to the others: otherwise that worker, polling on its own
# rhythm, could be the first to see it due every time, and a worker that knows it never would.
UNKNOWN_TASK_DELAY = 1.0
# Seconds before a task that could not start for want of a database connection is due again
# (given back without counting an attempt).
UNREACHABLE_RETRY_DELAY = 1.0
UNKNOWN_TASK_AVOID = 10.0


def should_retry(task: BackgroundTask, exc: BaseException, attempt: int, max_attempts: int) -> bool:
    if attempt >= max_attempts:
        return False
    if isinstance(exc, Retry):
        return True
    if isinstance(exc, MaxRetriesExceededError):
        return False
    if not isinstance(exc, Exception):  # SystemExit, KeyboardInterrupt: the process is going away
        return False
    return not task.autoretry_for or isinstance(exc, task.autoretry_for)


def retry_delay(task: BackgroundTask, attempt: int, requested: float | None = None) -> float:
    """Seconds to wait before the attempt after ``attempt`` (1-based).

    An explicit ``countdown`` wins. With ``retry_backoff`` the delay doubles from the base
    (``True`` means 1 s) up to ``retry_backoff_max``, and ``retry_jitter`` draws it uniformly
    from ``[0, delay]`` ("full jitter") so failing tasks do not retry in lockstep.
    Otherwise it is ``default_retry_delay``.
    """
    if requested is not None:
        return max(0.0, float(requested))
    backoff = task.retry_backoff
    if backoff is False:
        return float(task.default_retry_delay)
    base = 1.0 if backoff is True else float(backoff)
    delay = min(float(task.retry_backoff_max), base * 2 ** (attempt - 1))
    if task.retry_jitter:
        delay = random.uniform(0, delay)  # noqa: S311 - spreading retries, not cryptography
    return delay
