"""Workflows: dependencies, chain, group, chord, callbacks (docs/workflows.md)."""

import pytest
from django.db import transaction

from django_tasks_q.canvas import After, chain, chord, group
from django_tasks_q.models import Dependency, Task
from tests.conftest import run_burst_worker
from tests.testapp import tasks

pytestmark = pytest.mark.django_db(transaction=True)


def test_a_chain_passes_each_result_to_the_next_step():
    workflow = chain(tasks.add.s(1, 2), tasks.add.s(10), tasks.add.s(100)).apply_async()
    assert [step.status for step in workflow.steps] == ["READY", "WAITING", "WAITING"]
    run_burst_worker()
    workflow.wait(timeout=5)
    assert workflow.status == "SUCCESSFUL"
    assert workflow.result == 113
