"""The worker's listener, stepped directly (run_once) against the real database: NOTIFY on the
queue's channel wakes the worker, NOTIFY on the cancel channel passes the request on."""

import threading
from datetime import timedelta

import pytest
from django.db import connection as django_connection
from django.utils import timezone

from django_tasks_q import queue
from django_tasks_q.backend import get_backend
from django_tasks_q.models import Task
from django_tasks_q.queue import CANCEL_CHANNEL, NOTIFY_CHANNEL
from django_tasks_q.worker import Worker
from django_tasks_q.worker.listener import Listener
from tests.conftest import wait_for
from tests.testapp import tasks

pytestmark = pytest.mark.django_db(transaction=True)


class Recorder:
    def __init__(self):
        self.woken = 0
        self.payloads = []
        self.cancels = []

    def on_ready(self, payload):
        self.woken += 1
        self.payloads.append(payload)

    def on_cancel(self, task_id, terminate):
        self.cancels.append((task_id, terminate))


@pytest.fixture
def heard():
    return Recorder()


@pytest.fixture
def listener(heard):
    listener = Listener(
        database="default",
        worker_id="listener-000000",
        on_ready=heard.on_ready,
        on_cancel=heard.on_cancel,
    )
    listener.listen()
    yield listener
    listener.close()


def notify(channel, payload):
    with django_connection.cursor() as cursor:
        cursor.execute("SELECT pg_notify(%s, %s)", [channel, payload])


def test_an_enqueued_task_wakes_the_worker(listener, heard):
    tasks.add.delay(1, 2)
    listener.run_once(timeout=10)
    assert (heard.woken, heard.cancels) == (1, [])


def test_any_notification_on_the_queue_channel_wakes_the_worker(listener, heard):
    notify(NOTIFY_CHANNEL, "some-queue")
    listener.run_once(timeout=10)
    assert heard.woken == 1


def test_a_cancellation_request_is_passed_on_with_the_task_id(listener, heard):
    notify(CANCEL_CHANNEL, "42")
    listener.run_once(timeout=10)
    assert (heard.woken, heard.cancels) == (0, [(42, False)])


def test_cancel_with_terminate_of_a_running_task_is_passed_on_as_terminate(listener, heard):
    row = Task.objects.create(
        name="tests.testapp.tasks.add", args=[1, 2], status="RUNNING", attempts=1,
        max_attempts=1, worker_id="listener-000000",
        lease_expires_at=timezone.now() + timedelta(seconds=60),
    )  # fmt: skip
    assert queue.cancel(row.pk, using="default", terminate=True) == "RUNNING"
    listener.run_once(timeout=10)
    assert heard.cancels == [(row.pk, True)]


def test_a_cancel_notification_that_names_no_task_is_ignored(listener, heard):
    notify(CANCEL_CHANNEL, "not-a-task-id")
    listener.run_once(timeout=10)
    assert (heard.woken, heard.cancels) == (0, [])


def test_run_once_returns_after_the_timeout_when_nothing_was_sent(listener, heard):
    listener.run_once(timeout=0.05)
    assert (heard.woken, heard.cancels) == (0, [])


def test_the_loop_listens_again_after_losing_its_connection(heard):
    listener = Listener(database="default", worker_id="listener-reconnects",
                        on_ready=heard.on_ready, on_cancel=heard.on_cancel)  # fmt: skip
    stopping = threading.Event()
    thread = threading.Thread(target=listener.run, args=(stopping,), daemon=True)
    thread.start()
    try:
        [first] = wait_for(lambda: _listener_pids("listener-reconnects"), message="listening")
        with django_connection.cursor() as cursor:
            cursor.execute("SELECT pg_terminate_backend(%s)", [first])
        wait_for(lambda: _listener_pids("listener-reconnects") not in ([], [first]),
                 message="listening on a new connection")  # fmt: skip

        def woken():
            notify(NOTIFY_CHANNEL, "")
            return heard.woken

        wait_for(woken, message="a wake-up after the reconnect")
    finally:
        stopping.set()
        thread.join(timeout=10)
    assert not thread.is_alive()
    # Closed on the way out; the server's backend process ends a moment after the client.
    wait_for(lambda: _listener_pids("listener-reconnects") == [], message="the session gone")


def test_the_worker_acts_on_a_cancel_notice_only_for_a_task_it_holds():
    worker = Worker(backend=get_backend(), concurrency=1, listen=False)
    worker._held.add(7)
    worker._on_cancel_notice(8, True)
    assert (worker._cancel_requested, worker._terminate_requested) == (set(), set())
    worker._on_cancel_notice(7, True)
    assert (worker._cancel_requested, worker._terminate_requested) == ({7}, {7})


def _listener_pids(worker_id):
    with django_connection.cursor() as cursor:
        cursor.execute(
            "SELECT pid FROM pg_stat_activity WHERE application_name = %s",
            [f"django_tasks_q listener {worker_id}"],
        )
        return [pid for (pid,) in cursor.fetchall()]
