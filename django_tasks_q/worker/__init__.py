from django_tasks_q.worker.worker import Worker

__all__ = ["Worker"]
