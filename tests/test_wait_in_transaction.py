"""wait() inside the transaction that enqueued the task fails at once, saying why."""

import time

import pytest
from django.db import transaction

from django_tasks_q import WaitInsideTransaction
from django_tasks_q.canvas import chain
from tests.conftest import run_burst_worker
from tests.testapp import tasks

pytestmark = pytest.mark.django_db(transaction=True)


def test_waiting_inside_the_enqueuing_transaction_fails_at_once():
    started = time.monotonic()
    with pytest.raises(WaitInsideTransaction, match="no worker can see it"), transaction.atomic():
        tasks.add.delay(1, 2).wait(timeout=30)
    with pytest.raises(WaitInsideTransaction, match="Workflow"), transaction.atomic():
        chain(tasks.add.s(1, 2), tasks.add.s(3)).apply_async().wait(timeout=30)
    assert time.monotonic() - started < 5  # at once, not after the 30 s timeouts


def test_waiting_inside_a_later_transaction_for_a_committed_task_works():
    handle = tasks.add.delay(1, 2)  # committed: autocommit
    run_burst_worker()
    with transaction.atomic():
        assert handle.wait(timeout=5).result == 3
    with transaction.atomic():
        other = tasks.add.delay(5, 5)  # this transaction's, but the wait is for the first
        assert handle.wait(timeout=5).result == 3
        assert other.status == "READY"
