"""The reconnect backoff every long-running loop shares, and how those loops describe what
went wrong, on their own (no database)."""

import psycopg
import pytest

from django_tasks_q.backoff import Backoff, describe_database_error


def test_the_first_retry_waits_half_a_second():
    assert Backoff().next() == 0.5


def test_each_retry_waits_twice_as_long_as_the_one_before():
    backoff = Backoff()
    assert [backoff.next() for _ in range(5)] == [0.5, 1.0, 2.0, 4.0, 8.0]


def test_the_wait_stops_growing_at_thirty_seconds():
    backoff = Backoff()
    delays = [backoff.next() for _ in range(10)]
    assert delays[-4:] == [30.0, 30.0, 30.0, 30.0]
    assert max(delays) == 30.0


def test_a_reset_starts_again_from_the_first_delay():
    backoff = Backoff()
    for _ in range(4):
        backoff.next()
    backoff.reset()
    assert [backoff.next(), backoff.next()] == [0.5, 1.0]


def test_the_first_delay_and_the_cap_can_be_chosen():
    backoff = Backoff(first=0.1, cap=0.3)
    assert [backoff.next() for _ in range(4)] == [0.1, 0.2, 0.3, 0.3]


@pytest.mark.parametrize(("first", "cap"), [(0, 1), (-1, 1), (2, 1)])
def test_a_backoff_that_could_not_wait_or_grow_is_refused(first, cap):
    with pytest.raises(ValueError, match="backoff needs 0 < first <= cap"):
        Backoff(first=first, cap=cap)


def test_a_refused_connection_for_want_of_slots_is_one_line_that_says_what_to_do():
    exc = psycopg.OperationalError(
        'connection failed: connection to server on socket "/tmp/.s.PGSQL.5432" failed:\n'
        "FATAL:  sorry, too many clients already\n"
    )
    text = describe_database_error(exc)
    assert "\n" not in text
    assert "sorry, too many clients already" in text
    assert "max_connections" in text and "PgBouncer" in text


def test_other_database_errors_are_told_as_they_are_on_one_line():
    exc = psycopg.OperationalError("server closed the connection unexpectedly\n\tThis probably")
    assert describe_database_error(exc) == "server closed the connection unexpectedly This probably"
