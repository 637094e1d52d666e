"""The listener: turns NOTIFY into a wake-up of the worker's main loop.

It runs on its own thread and connection, because waiting for notifications blocks the
connection it waits on. Three channels: the queue's (a task became ready: look for work now
rather than at the next poll), the cancel channel (a task's cancellation was requested:
a claimed task that has not started must never start, so the worker hears of it at once
rather than at its next heartbeat) and the pause channel (a queue or task name was paused
or resumed: read what is paused before the next claim). A notification missed while
reconnecting costs at most one poll interval or one heartbeat; what is paused is read again
after each reconnection.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

import psycopg

from django_tasks_q.backoff import Backoff, describe_database_error
from django_tasks_q.queue import CANCEL_CHANNEL, PAUSE_CHANNEL, listen_connection

logger = logging.getLogger("django_tasks_q.worker")


class Listener:
    """Calls ``on_ready(payload)`` for each queue notification, ``on_cancel(task_id,
    terminate)`` for each cancellation request, and ``on_connected()`` each time it has
    (re)connected: the database answers again."""

    def __init__(
        self,
        *,
        database: str,
        worker_id: str,
        on_ready: Callable[[str], None],
        on_cancel: Callable[[int, bool], None],
        on_connected: Callable[[], None] | None = None,
        on_pause: Callable[[], None] | None = None,
    ) -> None:
        self.database = database
        self.worker_id = worker_id
        self.on_ready = on_ready
        self.on_cancel = on_cancel
        self.on_connected = on_connected
        self.on_pause = on_pause
        self._connection: psycopg.Connection | None = None

    def listen(self) -> psycopg.Connection:
        """The listening connection, connecting first unless already listening (what was
        sent before it listened is not received)."""
        if self._connection is None or self._connection.closed:
            self._connection = listen_connection(
                self.database,
                application_name=f"django_tasks_q listener {self.worker_id}",
                also=[CANCEL_CHANNEL, PAUSE_CHANNEL],
            )
            if self.on_connected is not None:
                self.on_connected()
        return self._connection

    def run_once(self, timeout: float = 1.0) -> None:
        """Wait up to ``timeout`` seconds for a notification and dispatch what arrived."""
        for notice in self.listen().notifies(timeout=timeout, stop_after=1):
            if notice.channel == CANCEL_CHANNEL:
                self._cancel_notice(notice.payload)
            elif notice.channel == PAUSE_CHANNEL:
                if self.on_pause is not None:
                    self.on_pause()
            else:
                self.on_ready(notice.payload)

    def run(self, stopping: threading.Event) -> None:
        """Listen until ``stopping`` is set; reconnect with a backoff after database loss."""
        backoff = Backoff()
        try:
            while not stopping.is_set():
                try:
                    self.listen()
                    backoff.reset()
                    while not stopping.is_set():
                        self.run_once()
                except psycopg.Error as exc:
                    delay = backoff.next()
                    logger.warning(
                        "Worker %s listener lost the database (%s); reconnecting in %.1fs",
                        self.worker_id, describe_database_error(exc), delay,
                    )  # fmt: skip
                    self.close()
                    stopping.wait(delay)
        finally:
            self.close()

    def close(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None

    def _cancel_notice(self, payload: str) -> None:
        # The payload is "<task id>", or "<task id> terminate" for cancel(terminate=True).
        task_id, _, terminate = payload.partition(" ")
        try:
            parsed = int(task_id)
        except ValueError:
            return
        self.on_cancel(parsed, bool(terminate))
