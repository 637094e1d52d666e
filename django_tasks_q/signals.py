"""Task lifecycle signals.

django_tasks_q sends Django's own ``task_enqueued``, ``task_started`` and ``task_finished``
(re-exported here) with ``sender`` = the backend class and ``task_result`` = a
:class:`~django_tasks_q.results.TaskHandle`. ``task_finished`` carries the outcome in
``task_result.status``. It adds ``task_retried``, sent when a failed attempt is scheduled again,
with ``task_result``, ``error`` (the exception) and ``delay`` (seconds until the next attempt).
"""

from django.dispatch import Signal

from django_tasks_q.compat import task_enqueued, task_finished, task_started

task_retried = Signal()

__all__ = ["task_enqueued", "task_finished", "task_retried", "task_started"]
