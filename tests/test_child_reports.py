"""How a process-pool child reports outcomes, and how deep the pool queues work in children.

The child's report batching is tested on a real pipe, with the batcher the child uses; the
whole path is covered with real processes in tests/test_process_pool.py.
"""

import pickle
import threading
from datetime import UTC, datetime
from multiprocessing import Pipe

import pytest

from django_tasks_q.queue import ClaimedTask, Outcome
from django_tasks_q.worker.child import REPORT_BATCH, ChildReport, _Reports
from django_tasks_q.worker.pool import MAX_QUEUED, QUEUED_WORK, queued_per_thread


def outcome(task_id: int) -> Outcome:
    return Outcome(id=task_id, attempt=1, status="SUCCESSFUL", result_json="1", duration=0.001)


@pytest.fixture
def pipe():
    receiver, sender = Pipe(duplex=False)
    yield receiver, _Reports(sender, threading.Lock())
    receiver.close()
    sender.close()


def received(receiver) -> list[int]:
    assert receiver.poll(5), "nothing was reported"
    report = receiver.recv()
    assert isinstance(report, ChildReport) and report.max_rss_mb > 0
    return [item.id for item in report.outcomes]


def test_an_outcome_is_sent_at_once_when_the_child_has_nothing_queued(pipe):
    receiver, reports = pipe
    reports.add(outcome(1), goes_on=False)
    assert receiver.poll(0)  # already there: no wait involved
    assert received(receiver) == [1]


def test_outcomes_of_tasks_run_back_to_back_go_in_one_report(pipe):
    receiver, reports = pipe
    for task_id in range(1, 4):
        reports.add(outcome(task_id), goes_on=True)
    reports.add(outcome(4), goes_on=False)
    assert received(receiver) == [1, 2, 3, 4]


def test_a_held_outcome_is_sent_even_if_no_other_task_ends(pipe):
    # The next task may run for hours: the outcome before it goes after a short delay.
    receiver, reports = pipe
    reports.add(outcome(7), goes_on=True)
    assert received(receiver) == [7]


def test_a_report_holds_at_most_a_batch(pipe):
    receiver, reports = pipe
    for task_id in range(REPORT_BATCH):
        reports.add(outcome(task_id), goes_on=True)
    assert received(receiver) == list(range(REPORT_BATCH))


def test_flush_sends_what_is_held_once(pipe):
    receiver, reports = pipe
    reports.add(outcome(1), goes_on=True)
    reports.flush()
    assert received(receiver) == [1]
    assert not receiver.poll(0.05)


@pytest.mark.parametrize(
    ("mean", "depth"),
    [
        (None, 1),  # nothing known yet: one queued behind each busy thread, as before
        (QUEUED_WORK * 2, 1),  # long tasks: one
        (QUEUED_WORK / 4, 4),
        (QUEUED_WORK / 1000, MAX_QUEUED),  # no-op tasks: capped
        (0.0, MAX_QUEUED),
    ],
)
def test_the_pool_queues_a_few_milliseconds_of_work_per_thread(mean, depth):
    assert queued_per_thread(mean) == depth


def test_tasks_and_outcomes_cross_the_pipe_unchanged():
    now = datetime.now(UTC)
    task = ClaimedTask(
        id=5, name="a.b", queue="q", priority=2, args=[1, {"x": [None]}], kwargs={"k": "v"},
        attempt=3, max_attempts=4, timeout=1.5, run_after=now, enqueued_at=now,
        started_at=now, last_attempted_at=now, errors=[{"attempt": 1}], lost_attempts=1,
        max_lost_attempts=3,
    )  # fmt: skip
    ended = Outcome(
        id=5, attempt=3, status="READY", error={"type": "x"}, max_attempts=5, retry_delay=2.0,
        duration=0.25, lost=True,
    )  # fmt: skip
    assert pickle.loads(pickle.dumps(task)) == task
    assert pickle.loads(pickle.dumps(ended)) == ended
