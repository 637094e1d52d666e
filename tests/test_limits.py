"""Concurrency and rate limits across every worker (docs/flow-control.md)."""

import pytest

from django_tasks_q.models import Task
from tests.conftest import run_burst_worker
from tests.testapp import tasks
from tests.testapp.models import Execution

pytestmark = pytest.mark.django_db(transaction=True)


def test_smoke():
    handles = [tasks.two_at_a_time.delay(f"k{i}", 0.0) for i in range(6)]
    row = Task.objects.get(pk=handles[0].id)
    assert row.concurrency_limits == {f"task:{tasks.two_at_a_time.name}": 2}
    run_burst_worker(concurrency=4)
    assert Execution.objects.count() == 6
