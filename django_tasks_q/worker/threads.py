"""The thread pool: tasks run on threads of the worker process itself.

The fastest pool for short and I/O-bound tasks, but a task's hard ``timeout`` cannot be
enforced (a thread cannot be killed) and a task that crashes the process takes the worker with
it. :class:`~django_tasks_q.worker.pool.ProcessPool` has the same interface.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable

from django_tasks_q.queue import ClaimedTask, Outcome
from django_tasks_q.worker.runner import Runner, close_event_loop

logger = logging.getLogger("django_tasks_q.worker")


class ThreadPool:
    def __init__(
        self,
        *,
        worker_id: str,
        runner: Runner,
        deliver: Callable[[Outcome], None],
        threads: int,
        on_start: Callable[[ClaimedTask], None] | None = None,
        on_all_ready: Callable[[], None] = lambda: None,
    ) -> None:
        self.worker_id = worker_id
        self.runner = runner
        self.deliver = deliver
        self.on_start = on_start  # told as a thread takes each task (metrics)
        self.capacity = threads
        self.ready = True
        self.on_all_ready = on_all_ready
        self._jobs: queue.SimpleQueue[ClaimedTask | None] = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []

    def start(self) -> None:
        for index in range(self.capacity):
            thread = threading.Thread(
                target=self._execute, name=f"tasks-q-executor-{index}", daemon=True
            )
            thread.start()
            self._threads.append(thread)
        self.on_all_ready()

    def submit(self, jobs: list[ClaimedTask]) -> None:
        for job in jobs:
            self._jobs.put(job)

    def cancel_requested_changed(self) -> None:
        """Nothing to pass on: the runner reads the worker's requests before each start."""

    def take_unstarted(self) -> list[int]:
        """Ids of submitted tasks no thread has started; they are forgotten here."""
        ids = []
        while True:
            try:
                job = self._jobs.get_nowait()
            except queue.Empty:
                return ids
            if job is not None:
                ids.append(job.id)

    def close(self, *, kill: bool = False) -> None:
        """Let the threads finish their tasks and end; with ``kill``, do not wait for them
        (they are daemon threads and end with the process)."""
        for _ in self._threads:
            self._jobs.put(None)
        if not kill:
            for thread in self._threads:
                thread.join(timeout=5)

    def _execute(self) -> None:
        from django.db import connections

        try:
            while (job := self._jobs.get()) is not None:
                # Runner.run never raises; should something still get through, the attempt
                # is recorded as failed and this thread carries on with the next task.
                try:
                    if self.on_start is not None:
                        self.on_start(job)
                    outcome = self.runner.run(job)
                except BaseException as exc:
                    outcome = self.runner.crashed(job, exc)
                self.deliver(outcome)
        finally:
            close_event_loop()
            connections.close_all()
