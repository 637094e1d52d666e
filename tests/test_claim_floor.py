"""Claims start where the worker's last claim stopped (its claim floor), and still find rows
that became ready behind it: through the NOTIFY of the transaction that made them ready, or
through the claim from the start that follows every so often."""

from datetime import timedelta

import psycopg
import pytest

from django_tasks_q import queue
from django_tasks_q.models import Task
from django_tasks_q.queue import (
    FIRST_POSITION,
    ClaimedTask,
    ClaimPosition,
    QueueConnection,
    parse_ready_notice,
)
from django_tasks_q.worker import claim_floor
from django_tasks_q.worker.claim_floor import ClaimFloor
from tests.conftest import database_url_for_subprocess, transaction_in_another_session, wait_for
from tests.testapp import tasks

pytestmark = pytest.mark.django_db(transaction=True)


def claimed_task(task_id, *, priority=0, queue_name="default", run_after=None):
    when = run_after or FIRST_POSITION.run_after + timedelta(days=task_id)
    return ClaimedTask(
        id=task_id, name="t", queue=queue_name, priority=priority, args=[], kwargs={},
        attempt=1, max_attempts=1, timeout=None, run_after=when, enqueued_at=when,
        started_at=when, last_attempted_at=when, errors=[],
    )  # fmt: skip


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


# -- the floor's rules, without a database ----------------------------------------------------


def test_the_first_claim_starts_from_the_start_and_the_next_one_where_it_stopped():
    clock = Clock()
    floor = ClaimFloor(None, clock=clock)
    start = floor.start()
    assert start == claim_floor.ClaimStart((FIRST_POSITION,), from_start=True)
    picked = [claimed_task(1), claimed_task(2)]
    floor.advance(start, picked, limit=2, seconds=0.001)
    assert floor.start() == claim_floor.ClaimStart((picked[1].position,), from_start=False)


def test_a_notified_position_behind_the_floor_is_where_the_next_claim_starts():
    clock = Clock()
    floor = ClaimFloor(None, clock=clock)
    floor.advance(floor.start(), [claimed_task(5)], limit=1, seconds=0.001)
    late = ClaimPosition(0, claimed_task(2).run_after, 0)
    floor.lower("any-queue", late)
    floor.lower("any-queue", ClaimPosition(0, claimed_task(3).run_after, 0))  # not lower
    assert floor.start().positions == (late,)
    assert floor.start().positions == (claimed_task(5).position,)  # taken once


def test_a_short_claim_from_a_lowered_position_keeps_the_floor_it_had():
    clock = Clock()
    floor = ClaimFloor(None, clock=clock)
    floor.advance(floor.start(), [claimed_task(5)], limit=1, seconds=0.001)
    floor.lower("q", ClaimPosition(0, claimed_task(2).run_after, 0))
    start = floor.start()
    floor.advance(start, [claimed_task(2)], limit=10, seconds=0.001)
    assert floor.start().positions == (claimed_task(5).position,)


def test_a_full_claim_from_a_lowered_position_stops_the_floor_where_that_claim_stopped():
    clock = Clock()
    floor = ClaimFloor(None, clock=clock)
    floor.advance(floor.start(), [claimed_task(5)], limit=1, seconds=0.001)
    floor.lower("q", ClaimPosition(0, claimed_task(2).run_after, 0))
    floor.advance(floor.start(), [claimed_task(2)], limit=1, seconds=0.001)
    # Rows between 2 and 5 may remain: the next claim walks them.
    assert floor.start().positions == (claimed_task(2).position,)


def test_claims_from_the_start_come_back_after_the_interval_and_further_apart_when_slow():
    clock = Clock()
    floor = ClaimFloor(None, clock=clock)
    floor.advance(floor.start(), [claimed_task(1)], limit=1, seconds=0.001)
    clock.now = claim_floor.FULL_SCAN_INTERVAL - 0.01
    assert not floor.start().from_start
    clock.now = claim_floor.FULL_SCAN_INTERVAL
    slow = floor.start()
    assert slow.from_start
    floor.advance(slow, [claimed_task(2)], limit=1, seconds=0.5)
    spacing = 0.5 / claim_floor.FULL_SCAN_SHARE
    clock.now += spacing - 0.01
    assert not floor.start().from_start
    clock.now += 0.01
    assert floor.start().from_start


def test_a_notice_without_a_position_or_a_forgotten_floor_claims_from_the_start():
    clock = Clock()
    floor = ClaimFloor(None, clock=clock)
    floor.advance(floor.start(), [claimed_task(1)], limit=1, seconds=0.001)
    floor.lower("q", None)
    assert floor.start().from_start
    floor.advance(floor.start(), [claimed_task(2)], limit=1, seconds=0.001)
    floor.forget()
    assert floor.start().from_start


def test_a_worker_of_some_queues_keeps_a_floor_per_queue_and_ignores_other_queues():
    clock = Clock()
    floor = ClaimFloor(["a", "b"], clock=clock)
    start = floor.start()
    a, b = claimed_task(3, queue_name="a"), claimed_task(4, queue_name="b")
    floor.advance(start, [a, b, claimed_task(9, queue_name="c")], limit=2, seconds=0.001)
    assert floor.start().positions == (a.position, b.position)
    floor.lower("c", ClaimPosition(-5, a.run_after, 0))
    floor.lower("b", ClaimPosition(-5, a.run_after, 0))
    assert floor.start().positions == (a.position, ClaimPosition(-5, a.run_after, 0))


def test_a_full_claim_that_took_nothing_of_a_queue_keeps_that_queue_at_its_start():
    floor = ClaimFloor(["a", "b"], clock=Clock())
    floor.advance(floor.start(), [claimed_task(3, queue_name="a")], limit=1, seconds=0.001)
    assert floor.start().positions == (claimed_task(3).position, FIRST_POSITION)


# -- the statement: claims after a position ----------------------------------------------------


def test_a_claim_takes_only_rows_after_its_position_in_claim_order():
    handles = [tasks.add.using(priority=p).enqueue(1, 1) for p in (0, 5, 0, 5)]
    rows = {int(h.id): Task.objects.get(pk=h.id) for h in handles}
    order = sorted(rows.values(), key=lambda r: (-r.priority, r.run_after, r.pk))
    qconn = QueueConnection("default")

    def claim(**options):
        claimed = qconn.finish_and_claim(worker_id="w1", limit=10, **options).claimed
        Task.objects.update(status="READY", attempts=0, worker_id="")
        return [task.id for task in claimed]

    try:
        positions = [position_of(r) for r in order]
        assert claim() == [r.pk for r in order]
        assert claim(after=[positions[1]]) == [r.pk for r in order[2:]]
        assert claim(after=[positions[3]]) == []
        assert claim(queues=["other", "default"], after=[FIRST_POSITION, positions[2]]) == [
            order[3].pk
        ]
    finally:
        qconn.close()


def test_the_ready_notification_carries_the_position_of_the_task_it_announces():
    with psycopg.connect(database_url_for_subprocess(), autocommit=True) as listening:
        listening.execute(f"LISTEN {queue.NOTIFY_CHANNEL}")
        handle = tasks.add.using(priority=7, queue_name="other").enqueue(1, 2)
        [notice] = list(listening.notifies(timeout=10, stop_after=1))
    row = Task.objects.get(pk=handle.id)
    assert parse_ready_notice(notice.payload) == queue.ReadyNotice(
        "other", ClaimPosition(-7, row.run_after, 0)
    )
    assert parse_ready_notice("other").position is None  # an older version's payload


# -- a real worker ------------------------------------------------------------------------------


def position_of(row):
    return ClaimPosition(-row.priority, row.run_after, row.pk)


def ran(key):
    return Task.objects.filter(args=[key], status="SUCCESSFUL").exists()


def test_a_task_committed_after_later_ones_ran_runs_when_its_transaction_commits(
    worker_in_thread, monkeypatch
):
    # Only the notification may find it: no claim from the start after the first one.
    monkeypatch.setattr(claim_floor, "FULL_SCAN_INTERVAL", 3600.0)
    worker = worker_in_thread(listen=True)
    wait_for(lambda: worker.listener._connection is not None, message="the listener")
    # run_after is the start of the transaction that enqueues it, which commits last.
    with transaction_in_another_session(lambda: tasks.record.enqueue("late")):
        for key in ("early-1", "early-2"):
            tasks.record.enqueue(key)
        wait_for(lambda: ran("early-1") and ran("early-2"), message="the later tasks ran")
        assert worker.claim_floor.floors[0] > position_of(Task.objects.get(args=["early-1"]))
    wait_for(lambda: ran("late"), message="the late task ran")


def test_a_row_left_behind_without_a_notification_runs_after_the_next_claim_from_the_start(
    worker_in_thread,
):
    behind = tasks.record.enqueue("left-behind")
    # Another session holds the row while the worker claims past it, then lets go without
    # changing it: no notification says it is ready.
    with transaction_in_another_session(
        lambda: list(Task.objects.select_for_update().filter(pk=behind.id))
    ):
        worker = worker_in_thread(listen=True)
        tasks.record.enqueue("after")
        wait_for(lambda: ran("after"), message="the task after it ran")
        assert not ran("left-behind")
    assert worker.claim_floor.floors[0] > position_of(Task.objects.get(pk=behind.id))
    wait_for(lambda: ran("left-behind"), message="the row left behind ran")
