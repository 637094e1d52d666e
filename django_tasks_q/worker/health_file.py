"""``runtaskworker --health-file``: a file the worker's main loop touches while it turns.

Its age answers a liveness probe without a web server in the worker and without a database
query: the loop turns at least every poll interval, and while the database is away it turns at
every reconnection attempt (at most 30 s apart), so an old file means a wedged worker, not an
unreachable database. ``manage.py tasks health --file PATH`` checks it.

Its content says whether every slot is ready: empty while the process pool's children are
still setting Django up, ``ready`` from then on (``tasks health --file PATH --ready``), for a
startup probe, or a rolling deploy that should wait until the new workers can run tasks.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

logger = logging.getLogger("django_tasks_q.worker")

READY = "ready\n"

# Seconds between two touches: a probe's max age is tens of seconds, and a touch is a system
# call the busy loop need not make on every turn.
TOUCH_EVERY = 1.0


def says_ready(path: str | os.PathLike[str]) -> bool:
    """Whether the health file at ``path`` says every slot of its worker is ready. Raises
    FileNotFoundError when there is none."""
    return Path(path).read_text() == READY


class HealthFile:
    def __init__(self, path: str | None) -> None:
        self.path = Path(path) if path else None
        self._next_touch = 0.0
        self._failed = False

    def touch(self) -> None:
        if self.path is None:
            return
        now = time.monotonic()
        if now < self._next_touch:
            return
        self._next_touch = now + TOUCH_EVERY
        try:
            self.path.touch()
        except OSError as exc:
            if not self._failed:  # once: a probe will say the rest
                logger.error("Cannot touch the health file %s: %s", self.path, exc)
            self._failed = True
        else:
            self._failed = False

    def mark_ready(self) -> None:
        """Write ``ready`` into the file, in one step (a probe never reads half of it)."""
        if self.path is None:
            return
        partial = self.path.with_name(f".{self.path.name}.{os.getpid()}")
        try:
            partial.write_text(READY)
            os.replace(partial, self.path)
        except OSError as exc:
            logger.error("Cannot write the health file %s: %s", self.path, exc)

    def remove(self) -> None:
        """A stopped worker is not alive: its file goes with it."""
        if self.path is not None:
            try:
                os.unlink(self.path)
            except FileNotFoundError:
                pass
            except OSError as exc:
                logger.warning("Cannot remove the health file %s: %s", self.path, exc)
