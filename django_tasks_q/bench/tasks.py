"""The tasks taskbench enqueues. Workers import this module by a task's name when they first
claim one, so nothing needs to import it at start-up."""

import time

from django_tasks_q.tasks import background_task


@background_task
def noop(n: int) -> int:
    return n


@background_task
def clock() -> float:
    """The wall clock when the task's function starts: taskbench's workers run on its machine,
    so this and the enqueuing side's clock are the same clock."""
    return time.time()


@background_task
def waits(milliseconds: float) -> list[float]:
    """Stands for a task that waits on I/O (an HTTP call, a query) for ``milliseconds``.

    Returns its argument and the milliseconds it did wait: a sleep ends late, the more so on a
    busy machine, and the I/O-bound phase tells that apart from the queue's own gaps."""
    began = time.perf_counter()
    time.sleep(milliseconds / 1000)
    return [milliseconds, (time.perf_counter() - began) * 1000]


@background_task(concurrency=1, limit_by="key")
def one_per_key(n: int, key: str) -> int:
    """The limited phase's task: at most one running per key, across every worker."""
    return n


@background_task
def joins(results: list[int]) -> int:
    """The chord phase's body: receives every header's result."""
    return len(results)


@background_task
def steady(n: int) -> int:
    """The steady-load phase's task: a no-op of its own name, counted apart."""
    return n
