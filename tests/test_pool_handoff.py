"""What the process pool sends its children: how much work it queues in them, and tasks and
outcomes that cross the pipe unchanged. The whole path runs with real processes in
tests/test_process_pool.py."""

import multiprocessing
import pickle
import select
import threading
import time
from datetime import UTC, datetime

import pytest

from django_tasks_q.queue import ClaimedTask, Outcome
from django_tasks_q.worker.pool import MAX_QUEUED, QUEUED_WORK, _Inbound, queued_per_thread


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


def test_the_dispatcher_reads_whole_messages_in_order_however_the_pipe_splits_them():
    supervisor_end, child_end = multiprocessing.Pipe()
    inbound = _Inbound(supervisor_end)
    # A large result arrives in many pieces, more than one read's worth, between small ones.
    sent = [("first", 1), "x" * 3_000_000, {"after": [None, 2.5]}, ("last",)]
    sender = threading.Thread(target=lambda: [child_end.send(message) for message in sent])
    sender.start()
    received: list = []
    deadline = time.monotonic() + 10
    while len(received) < len(sent) and time.monotonic() < deadline:
        select.select([supervisor_end.fileno()], [], [], 0.5)
        messages, still_open = inbound.read()
        received.extend(messages)
        assert still_open
    sender.join(timeout=10)
    assert received == sent
    child_end.close()
    messages, still_open = inbound.read()
    assert (messages, still_open) == ([], False)
    inbound.close()
    supervisor_end.close()
