"""Retry policy: whether a failed attempt runs again, and after how long."""

from __future__ import annotations

import random

from django_tasks_q.exceptions import MaxRetriesExceededError, Retry
from django_tasks_q.tasks import BackgroundTask


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
