from typing import Any

from django_tasks_q.worker.options import WorkerOptions

__all__ = ["Worker", "WorkerOptions"]


def __getattr__(name: str) -> Any:
    # Lazy: a child process of the process pool imports django_tasks_q.worker.pool before
    # Django is set up, and Worker pulls in the models.
    if name == "Worker":
        from django_tasks_q.worker.worker import Worker

        return Worker
    raise AttributeError(name)
