"""How long a loop that lost the database waits before trying again.

Every long-running loop (the worker's main loop and listener, the heartbeat, beat) retries
after a failure. Waits that double from a short first delay reconnect at once after a blip,
yet stop a database that is down for minutes from being hammered by every worker; the cap
keeps recovery within seconds of the database coming back.
"""

from __future__ import annotations

FIRST_DELAY = 0.5
MAX_DELAY = 30.0


class Backoff:
    """Delays for successive retries: ``first``, doubling up to ``cap``, until :meth:`reset`.

    >>> backoff = Backoff()
    >>> [backoff.next() for _ in range(3)]
    [0.5, 1.0, 2.0]
    """

    def __init__(self, *, first: float = FIRST_DELAY, cap: float = MAX_DELAY) -> None:
        if first <= 0 or cap < first:
            raise ValueError(f"backoff needs 0 < first <= cap, got first={first}, cap={cap}")
        self.first = first
        self.cap = cap
        self._delay = first

    def next(self) -> float:
        """The delay to wait before this retry; the one after it is twice as long."""
        delay = self._delay
        self._delay = min(delay * 2, self.cap)
        return delay

    def reset(self) -> None:
        """Call after a success: the next failure is retried after ``first`` again."""
        self._delay = self.first


# libpq's words when the server refuses a connection for want of free slots (SQLSTATE 53300).
_NO_FREE_CONNECTION = ("too many clients", "remaining connection slots are reserved")


def describe_database_error(exc: BaseException) -> str:
    """The error on one line (libpq's span several), and, where the cause is known, what to do
    about it."""
    text = " ".join(str(exc).split())
    if getattr(exc, "sqlstate", None) == "53300" or any(
        words in text for words in _NO_FREE_CONNECTION
    ):
        text += (
            " [the server has no free connection: raise its max_connections, put a pooler"
            " such as PgBouncer in front, or run fewer workers; this process waits and"
            " retries]"
        )
    return text
