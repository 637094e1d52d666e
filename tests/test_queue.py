"""The queue SQL on its own: claim order, locking, fencing, release, cancel."""

import threading
from datetime import timedelta

import pytest
from django.db import connection, transaction
from django.utils import timezone

from django_tasks_q import queue
from django_tasks_q.models import Task, TaskStatus
from django_tasks_q.queue import Outcome, QueueConnection
from tests.conftest import transaction_in_another_session
from tests.testapp import tasks

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def qconn():
    conn = QueueConnection("default")
    yield conn
    conn.close()


def claim(conn, limit=10, worker_id="w1", queues=None):
    return conn.claim(worker_id=worker_id, queues=queues, limit=limit, lease_seconds=60)


def test_claim_takes_higher_priority_first_then_oldest(qconn):
    low = tasks.add.apply_async(args=(1, 1), priority=-5)
    first = tasks.add.apply_async(args=(1, 2))
    second = tasks.add.apply_async(args=(1, 3))
    urgent = tasks.add.apply_async(args=(1, 4), priority=50)

    claimed = claim(qconn, limit=3)
    assert [str(t.id) for t in claimed] == [urgent.id, first.id, second.id]
    assert [str(t.id) for t in claim(qconn)] == [low.id]


def test_claim_skips_tasks_scheduled_for_later(qconn):
    tasks.add.apply_async(args=(1, 1), countdown=3600)
    now = tasks.add.delay(1, 2)
    assert [str(t.id) for t in claim(qconn)] == [now.id]


def test_claim_filters_by_queue(qconn):
    tasks.add.apply_async(args=(1, 1), queue="a")
    b = tasks.add.apply_async(args=(1, 2), queue="b")
    assert [str(t.id) for t in claim(qconn, queues=["b", "c"])] == [b.id]


def test_a_claim_from_one_queue_takes_only_its_tasks_in_claim_order(qconn):
    tasks.add.apply_async(args=(1, 1), queue="a", priority=90)
    later = tasks.add.apply_async(args=(1, 2), queue="b")
    first = tasks.add.apply_async(args=(1, 3), queue="b", priority=5)
    tasks.add.apply_async(args=(1, 4), queue="b", countdown=3600)

    def claim_b(paused=queue.NOTHING_PAUSED):
        return qconn.finish_and_claim(
            worker_id="w1", queues=["b"], limit=10, lease_seconds=60, paused=paused
        ).claimed

    # A task that became READY in a paused queue (a retry, say) waits for the resume.
    assert claim_b(queue.Paused(queues=frozenset({"b"}), task_names=frozenset())) == []
    assert [str(t.id) for t in claim_b()] == [first.id, later.id]
    assert claim_b() == []


def test_claim_marks_running_counts_the_attempt_and_records_the_holder(qconn):
    handle = tasks.add.delay(1, 2)
    [claimed] = claim(qconn, worker_id="worker-a")
    row = Task.objects.get(pk=handle.id)
    assert (row.status, row.attempts, row.worker_id) == ("RUNNING", 1, "worker-a")
    assert claimed.attempt == 1 and claimed.args == [1, 2]
    assert row.started_at is not None and row.lease_expires_at > row.started_at


def test_a_locked_row_is_skipped_not_waited_for(qconn):
    first = tasks.add.delay(1, 1)
    second = tasks.add.delay(1, 2)
    # Another session holds the first row's lock (as a concurrent claim would).
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute("SELECT id FROM django_tasks_q_task WHERE id = %s FOR UPDATE", [first.id])
        assert [str(t.id) for t in claim(qconn)] == [second.id]


def test_two_claims_never_return_the_same_task():
    tasks.add.enqueue_many([(i, i) for i in range(40)])
    a, b = QueueConnection("default"), QueueConnection("default")
    try:
        seen = []
        while batch := claim(a, limit=7, worker_id="a") + claim(b, limit=5, worker_id="b"):
            seen += [t.id for t in batch]
    finally:
        a.close()
        b.close()
    assert len(seen) == len(set(seen)) == 40


def test_finish_records_success_failure_and_retry_in_one_statement(qconn):
    ok, bad, again = (tasks.add.delay(1, i) for i in range(3))
    claim(qconn)
    error = {"type": "builtins.ValueError", "message": "nope", "traceback": "...", "attempt": 1}
    updated = qconn.finish(
        worker_id="w1",
        outcomes=[
            Outcome(id=int(ok.id), attempt=1, status="SUCCESSFUL", result_json='{"a": 1}'),
            Outcome(id=int(bad.id), attempt=1, status="FAILED", error=error),
            Outcome(
                id=int(again.id),
                attempt=1,
                status="READY",
                error=error,
                max_attempts=3,
                retry_delay=30,
            ),
        ],
    )
    assert updated == {int(ok.id), int(bad.id), int(again.id)}
    ok_row, bad_row, again_row = (Task.objects.get(pk=h.id) for h in (ok, bad, again))
    assert (ok_row.status, ok_row.result, ok_row.finished_at is not None) == (
        "SUCCESSFUL",
        {"a": 1},
        True,
    )
    assert bad_row.status == "FAILED" and bad_row.errors[0]["message"] == "nope"
    assert "at" in bad_row.errors[0]
    assert again_row.status == "READY" and again_row.finished_at is None
    assert again_row.run_after > timezone.now() + timedelta(seconds=25)
    assert again_row.max_attempts == 3


def test_finish_by_a_worker_that_no_longer_holds_the_task_changes_nothing(qconn):
    handle = tasks.add.delay(1, 2)
    claim(qconn, worker_id="owner")
    stale = [Outcome(id=int(handle.id), attempt=1, status="SUCCESSFUL", result_json="3")]
    assert qconn.finish(worker_id="someone-else", outcomes=stale) == set()
    wrong_attempt = [Outcome(id=int(handle.id), attempt=2, status="SUCCESSFUL", result_json="3")]
    assert qconn.finish(worker_id="owner", outcomes=wrong_attempt) == set()
    assert Task.objects.get(pk=handle.id).status == "RUNNING"


def test_release_returns_unstarted_tasks_without_counting_the_attempt(qconn):
    handle = tasks.add.delay(1, 2)
    claim(qconn, worker_id="w1")
    assert qconn.release(worker_id="other", ids=[int(handle.id)]) == 0
    assert qconn.release(worker_id="w1", ids=[int(handle.id)]) == 1
    row = Task.objects.get(pk=handle.id)
    assert (row.status, row.attempts, row.started_at) == ("READY", 0, None)


def test_cancel_stops_ready_tasks_at_once_and_flags_running_ones(qconn):
    ready = tasks.add.delay(1, 1)
    running = tasks.add.delay(1, 2)
    assert ready.cancel() == "cancelled"
    assert ready.status == TaskStatus.CANCELLED and ready.finished_at is not None
    claim(qconn)
    assert (
        running.cancel() == "stop_requested"
    )  # asked to stop; it stays RUNNING until its worker sees it
    row = Task.objects.get(pk=running.id)
    assert (row.status, row.cancel_requested_at is not None) == ("RUNNING", True)
    # The holder's heartbeat hands the request over.
    _, _, requested, terminate = qconn.heartbeat(
        worker_id="w1", lease_seconds=60, succeeded=0, failed=0, held=[int(running.id)]
    )
    assert (requested, terminate) == ([int(running.id)], [])


def test_a_heartbeat_extends_the_leases_it_can_and_never_waits_for_a_locked_row(qconn):
    # The worker's main connection locks rows while it records their outcomes, in its own
    # order; a heartbeat waiting on them could deadlock with it.
    busy, free = tasks.add.delay(1, 1), tasks.add.delay(2, 2)
    claim(qconn, worker_id="w1")
    Task.objects.filter(pk__in=[busy.id, free.id]).update(lease_expires_at=timezone.now())
    beats = QueueConnection("default")

    def heartbeat(held):
        return beats.heartbeat(worker_id="w1", lease_seconds=60, succeeded=0, failed=0, held=held)

    beat: list = []
    thread = threading.Thread(target=lambda: beat.append(heartbeat([int(busy.id), int(free.id)])))

    def lock_busy():
        return Task.objects.select_for_update().filter(pk=busy.id).exists()

    try:
        with transaction_in_another_session(lock_busy):
            thread.start()
            thread.join(timeout=10)
            assert beat, "the heartbeat waited for a row another transaction locked"
            leases = dict(Task.objects.values_list("pk", "lease_expires_at"))
        assert beat[0][1] == 1
        assert leases[int(free.id)] > timezone.now() + timedelta(seconds=30)
        assert leases[int(busy.id)] < timezone.now()
        # Once the lock is gone, the next beat extends it.
        assert heartbeat([int(busy.id)])[1] == 1
    finally:
        if thread.ident:
            thread.join(timeout=30)
        beats.close()


ENTRY_KEYS = {"attempt", "worker_id", "type", "message", "traceback", "at"}


def test_a_task_cancelled_while_claimed_is_released_as_cancelled_with_its_entry(qconn):
    handle = tasks.add.delay(1, 2)
    claim(qconn, worker_id="w1")
    assert handle.cancel() == "stop_requested"
    assert qconn.release(worker_id="w1", ids=[int(handle.id)]) == 1
    row = Task.objects.get(pk=handle.id)
    [entry] = row.errors
    assert row.status == "CANCELLED" and set(entry) == ENTRY_KEYS
    assert (entry["type"], entry["message"]) == (
        "django_tasks_q.exceptions.TaskCancelled",
        "cancelled before it started",
    )
    assert (entry["attempt"], entry["worker_id"], entry["traceback"]) == (1, "w1", "")


@pytest.mark.parametrize(
    "queues", [None, ["default"], ["default", "other"]], ids=["any", "one queue", "queues"]
)
@pytest.mark.parametrize("recording", [False, True], ids=["claim", "finish and claim"])
def test_a_claim_cancels_expired_and_cancel_requested_tasks_with_their_entries(
    qconn, recording, queues
):
    outcomes = []
    if recording:
        tasks.add.delay(0, 0)
        [held] = claim(qconn, limit=1)
        outcomes = [Outcome(id=held.id, attempt=1, status="SUCCESSFUL", result_json="0")]
    expired = tasks.add.apply_async(args=(1, 1), expires=timezone.now() + timedelta(seconds=30))
    requested = tasks.add.delay(1, 2)
    runs = tasks.add.delay(1, 3)
    Task.objects.filter(pk=expired.id).update(expires_at=timezone.now() - timedelta(seconds=1))
    Task.objects.filter(pk=requested.id).update(cancel_requested_at=timezone.now())
    exchanged = qconn.finish_and_claim(
        worker_id="w1", outcomes=outcomes, queues=queues, limit=10, lease_seconds=60
    )
    assert exchanged.finished == {o.id for o in outcomes}
    assert [task.id for task in exchanged.claimed] == [int(runs.id)]
    assert sorted(task.id for task in exchanged.skipped) == sorted(
        [int(expired.id), int(requested.id)]
    )
    rows = {row.pk: row for row in Task.objects.filter(pk__in=[expired.id, requested.id])}
    # Cancelled, not started: no attempt counted, no holder, no lease.
    for row in rows.values():
        unstarted = (row.attempts, row.worker_id, row.started_at, row.lease_expires_at)
        assert unstarted == (0, "", None, None)
        assert row.finished_at is not None
    started = Task.objects.get(pk=runs.id)
    assert (started.status, started.attempts, started.worker_id) == ("RUNNING", 1, "w1")
    assert started.lease_expires_at is not None and started.finished_at is None
    [gone] = rows[int(expired.id)].errors
    [stopped] = rows[int(requested.id)].errors
    assert set(gone) == set(stopped) == ENTRY_KEYS
    assert gone["type"] == "django_tasks_q.exceptions.TaskExpired"
    assert gone["message"].startswith("not started before it expired at 20")
    assert (stopped["type"], stopped["message"]) == (
        "django_tasks_q.exceptions.TaskCancelled",
        "cancelled before it started",
    )
    assert all(row.status == "CANCELLED" for row in rows.values())


def test_cancel_after_the_end_changes_nothing():
    handle = tasks.add.delay(1, 1)
    Task.objects.filter(pk=handle.id).update(status="SUCCESSFUL")
    assert handle.cancel() == "already_finished"
    assert Task.objects.get(pk=handle.id).cancel_requested_at is None


def explain(statement: str, **params) -> str:
    with connection.cursor() as cursor:
        cursor.execute("EXPLAIN " + queue.sql(statement), params)
        return "\n".join(row[0] for row in cursor.fetchall())


def explain_claim(statement: str, **extra) -> str:
    empty = {
        name: []
        for name in (
            "ids",
            "attempts",
            "statuses",
            "results",
            "errors",
            "max_attempts",
            "retry_delays",
            "lost",
            "avoid",
            "paused_queues",
            "paused_names",
        )
    }
    first = queue.FIRST_POSITION
    floors = {
        "floor_rank": first.rank, "floor_run_after": first.run_after, "floor_id": first.id,
        "floor_ranks": [first.rank] * len(extra.get("queues", [])),
        "floor_run_afters": [first.run_after] * len(extra.get("queues", [])),
        "floor_ids": [first.id] * len(extra.get("queues", [])),
    }  # fmt: skip
    params = {"limit": 10, "worker_id": "w", "lease_seconds": 60, **empty, **floors, **extra}
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE django_tasks_q_task")
        cursor.execute("EXPLAIN " + queue.sql(statement), params)
        return "\n".join(row[0] for row in cursor.fetchall())


@pytest.fixture
def backlog():
    """A big backlog in the default queue behind a little work in a second queue."""
    tasks.add.enqueue_many([(i, i) for i in range(5000)])
    tasks.add.using(queue_name="rare").enqueue_many([(i, i) for i in range(20)])
    old = Task.objects.order_by("id").values("id")[:2000]
    Task.objects.filter(id__in=old).update(status="SUCCESSFUL")


@pytest.mark.parametrize("statement", ["claim", "finish_and_claim"])
def test_claim_walks_the_partial_ready_index(backlog, statement):
    plan = explain_claim(statement)
    assert "Index Scan using tasks_q_ready_idx" in plan, plan
    assert "Seq Scan on django_tasks_q_task" not in plan, plan


@pytest.mark.parametrize("statement", ["claim", "finish_and_claim"])
def test_a_claim_starts_its_index_walk_at_its_floor(backlog, statement):
    # The floor is the index's start key, not a filter over the entries walked to reach it:
    # otherwise a claim would still step over every task claimed before it.
    for plan in (explain_claim(statement),
                 explain_claim(f"{statement}_from_queue", queue="rare"),
                 explain_claim(f"{statement}_from_queues", queues=["rare"])):  # fmt: skip
        conditions = [line for line in plan.splitlines() if "Index Cond" in line]
        assert any("ROW((priority * '-1'::integer), run_after, id) >" in line
                   for line in conditions), plan  # fmt: skip


def test_the_workers_statements_fit_psycopgs_cache_of_parsed_statements():
    # A longer statement is parsed again on every execution: tens of microseconds on every
    # round trip of the worker's main loop. Shorten it, or split it into parts.
    from psycopg._queries import MAX_CACHED_STATEMENT_LENGTH

    for name in ("finish", "claim", "claim_from_queue", "claim_from_queues",
                 "finish_and_claim", "finish_and_claim_from_queue",
                 "finish_and_claim_from_queues"):  # fmt: skip
        assert len(queue.sql(name).encode()) <= MAX_CACHED_STATEMENT_LENGTH, name


def test_loading_a_statement_keeps_quoted_text_as_written():
    code = """
        SELECT 'two  spaces -- not a comment',  -- a comment
               "odd  name"
        FROM   t  -- another
        WHERE  x = 'it''s'
    """
    assert queue._compact(code) == (
        """SELECT 'two  spaces -- not a comment', "odd  name" FROM t WHERE x = 'it''s'"""
    )


def test_recording_outcomes_looks_their_rows_up_by_id(backlog):
    # Never by walking tasks_q_running_idx: while the xmin horizon is held it holds an entry
    # for every task run since, and a statement that walks it gets slower with every task.
    qconn = QueueConnection("default")
    try:
        running = [task.id for task in qconn.claim(
            worker_id="w", queues=None, limit=50, lease_seconds=60)]  # fmt: skip
    finally:
        qconn.close()
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE django_tasks_q_task")
    outcomes = {
        "ids": running, "attempts": [1] * 50, "statuses": ["SUCCESSFUL"] * 50,
        "results": ["1"] * 50, "errors": [None] * 50, "max_attempts": [1] * 50,
        "retry_delays": [0.0] * 50, "lost": [False] * 50,
    }  # fmt: skip
    plans = {
        "finish_and_claim": explain_claim("finish_and_claim", **outcomes),
        "finish": explain_claim("finish", **outcomes),
        "heartbeat": explain(
            "heartbeat",
            worker_id="w",
            lease_seconds=60,
            succeeded=0,
            failed=0,
            ids=running,
        ),
        "record_lost": explain(
            "record_lost",
            ids=running,
            attempts=[1] * 50,
            holders=["w"] * 50,
            statuses=["READY"] * 50,
            max_attempts=[1] * 50,
            errors=[None] * 50,
            notify=False,
        ),
    }
    for name, plan in plans.items():
        assert "tasks_q_running_idx" not in plan, f"{name}:\n{plan}"


def test_the_look_for_expired_leases_starts_its_walk_at_its_floor(backlog):
    plan = explain("lost_expired", limit=100, after=timezone.now())
    conditions = [line for line in plan.splitlines() if "Index Cond" in line]
    assert any("lease_expires_at >=" in line for line in conditions), plan


@pytest.mark.parametrize("statement", ["claim", "finish_and_claim"])
def test_claim_from_a_small_queue_does_not_walk_the_big_backlog(backlog, statement):
    for plan in (explain_claim(f"{statement}_from_queue", queue="rare"),
                 explain_claim(f"{statement}_from_queues", queues=["rare", "default"])):  # fmt: skip
        assert "Index Scan using tasks_q_ready_queue_idx" in plan, plan
        assert "Seq Scan on django_tasks_q_task" not in plan, plan


def test_one_statement_records_outcomes_and_claims(qconn):
    done = tasks.add.delay(1, 1)
    [claimed] = claim(qconn, limit=1)
    waiting = tasks.add.delay(2, 2)
    updated, more, *_ = qconn.finish_and_claim(
        worker_id="w1",
        outcomes=[Outcome(id=claimed.id, attempt=1, status="SUCCESSFUL", result_json="2")],
        limit=5,
        lease_seconds=60,
    )
    assert updated == {int(done.id)}
    assert [str(t.id) for t in more] == [waiting.id]
    assert Task.objects.get(pk=done.id).status == "SUCCESSFUL"


def test_enqueue_notifies_listeners_only_on_commit():
    listener = queue.listen_connection("default")
    try:
        with transaction.atomic():
            tasks.add.delay(1, 2)
            assert list(listener.notifies(timeout=0.2)) == []
        notes = list(listener.notifies(timeout=5, stop_after=1))
        assert [n.channel for n in notes] == ["django_tasks_q"]
        assert queue.parse_ready_notice(notes[0].payload).queue == "default"
    finally:
        listener.close()


def test_release_unknown_returns_only_tasks_the_worker_does_not_know_it_holds(qconn):
    kept, lost = tasks.add.delay(1, 1), tasks.add.delay(2, 2)
    claim(qconn, worker_id="w1")
    assert qconn.release_unknown(worker_id="w1", known={int(kept.id)}) == 1
    assert Task.objects.get(pk=kept.id).status == "RUNNING"
    assert (Task.objects.get(pk=lost.id).status, Task.objects.get(pk=lost.id).attempts) == (
        "READY",
        0,
    )


@pytest.mark.parametrize("queues", [None, ["default"]])
def test_a_claim_leaves_the_tasks_it_is_told_to_avoid(qconn, queues):
    avoided, other = tasks.add.delay(1, 1), tasks.add.delay(2, 2)
    exchanged = qconn.finish_and_claim(
        worker_id="w1", queues=queues, limit=10, lease_seconds=60, avoid=[int(avoided.id)]
    )
    assert [str(t.id) for t in exchanged.claimed] == [other.id]
    assert [str(t.id) for t in claim(qconn, worker_id="w2", queues=queues)] == [avoided.id]
