"""The task taskbench enqueues. Workers import this module by the task's name when they first
claim one, so nothing needs to import it at start-up."""

from django_tasks_q.tasks import background_task


@background_task
def noop(n: int) -> int:
    return n
