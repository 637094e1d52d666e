"""Example tasks behind the demo page's buttons."""

import random
import time

from django_tasks_q import background_task


@background_task
def add(x: int, y: int) -> int:
    """The quick one."""
    return x + y


@background_task(queue="default", timeout=30)
def slow_report(seconds: float = 5.0) -> str:
    """The slow one."""
    time.sleep(seconds)
    return f"report built in {seconds:.1f}s"


class FlakyServiceError(Exception):
    pass


@background_task(max_retries=3, retry_backoff=1, retry_jitter=False, bind=True)
def flaky_call(context, fail_times: int = 2) -> str:
    """Fails on its first ``fail_times`` attempts, then succeeds on a retry."""
    if context.attempt <= fail_times:
        raise FlakyServiceError(f"service unavailable (attempt {context.attempt})")
    return f"succeeded on attempt {context.attempt}"


@background_task(max_retries=2, default_retry_delay=2)
def always_fails(reason: str = "this task always fails") -> None:
    """Fails every time; ends FAILED with one error per attempt."""
    raise RuntimeError(reason)


@background_task
def roll_dice() -> int:
    return random.randint(1, 6)
