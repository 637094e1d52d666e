"""The retry policy on its own: delays and which failures retry."""

import pytest

from django_tasks_q.exceptions import Retry
from django_tasks_q.retry import retry_delay, should_retry
from tests.testapp import tasks


def _replace(**options):
    from dataclasses import replace

    return replace(tasks.add, **options)


def test_without_backoff_the_default_retry_delay_is_used():
    task = _replace(default_retry_delay=42)
    assert [retry_delay(task, attempt) for attempt in (1, 2, 5)] == [42.0, 42.0, 42.0]


def test_backoff_doubles_from_the_base_and_is_capped():
    task = _replace(retry_backoff=3, retry_backoff_max=50, retry_jitter=False)
    assert [retry_delay(task, attempt) for attempt in range(1, 7)] == [3, 6, 12, 24, 48, 50]


def test_backoff_true_starts_at_one_second():
    task = _replace(retry_backoff=True, retry_jitter=False)
    assert [retry_delay(task, attempt) for attempt in (1, 2, 3)] == [1, 2, 4]


def test_full_jitter_draws_between_zero_and_the_backoff():
    task = _replace(retry_backoff=10, retry_backoff_max=1000, retry_jitter=True)
    delays = [retry_delay(task, 4) for _ in range(500)]
    assert all(0 <= d <= 80 for d in delays)
    # Spread over the whole range, not clustered at the top (as "equal jitter" would be).
    assert min(delays) < 20 and max(delays) > 60


def test_an_explicit_countdown_wins_over_the_policy():
    task = _replace(retry_backoff=True)
    assert retry_delay(task, 3, requested=7) == 7.0


def test_retries_stop_when_attempts_run_out():
    task = _replace(max_retries=2)
    assert should_retry(task, ValueError(), attempt=2, max_attempts=3)
    assert not should_retry(task, ValueError(), attempt=3, max_attempts=3)


def test_autoretry_for_restricts_retries_to_those_exceptions():
    task = _replace(max_retries=5, autoretry_for=(ConnectionError,))
    assert should_retry(task, ConnectionResetError(), attempt=1, max_attempts=6)
    assert not should_retry(task, KeyError(), attempt=1, max_attempts=6)
    # An explicit context.retry() always counts, whatever autoretry_for says.
    assert should_retry(task, Retry(), attempt=1, max_attempts=6)


@pytest.mark.parametrize("exc", [KeyboardInterrupt(), SystemExit(1)])
def test_process_exits_are_not_retried(exc):
    assert not should_retry(_replace(max_retries=5), exc, attempt=1, max_attempts=6)
