"""send_task for a task another codebase implements: the calling process does not have it,
a worker that does runs it with the options it declares (docs/coming-from-celery.md)."""

import os
import textwrap

import pytest

from django_tasks_q import InvalidTask, UnknownTaskError, send_task
from django_tasks_q.models import Task
from tests.conftest import wait_for

pytestmark = pytest.mark.django_db(transaction=True)

REMOTE = """
from django_tasks_q import background_task


@background_task(max_retries=2, default_retry_delay=0, timeout=30)
def charge(amount):
    from django_tasks_q.models import Task

    mine = Task.objects.get(name="tq_remote_billing.tasks.charge", args=[amount])
    if mine.attempts < 2:
        raise RuntimeError("the payment service is busy")
    return amount * 2
"""


@pytest.mark.slow
def test_a_worker_that_has_the_task_runs_it_with_its_declared_retries(start_worker, tmp_path):
    package = tmp_path / "tq_remote_billing"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "tasks.py").write_text(textwrap.dedent(REMOTE))

    handle = send_task("tq_remote_billing.tasks.charge", [21], queue="billing")
    row = Task.objects.get(pk=handle.id)
    assert (row.name, row.queue, row.max_attempts, row.status) == (
        "tq_remote_billing.tasks.charge", "billing", 0, "READY",
    )  # fmt: skip

    path = os.pathsep.join(filter(None, [str(tmp_path), os.environ.get("PYTHONPATH")]))
    worker = start_worker(env={"PYTHONPATH": path})
    wait_for(lambda: Task.objects.get(pk=handle.id).status == "SUCCESSFUL", timeout=60,
             message="the worker that has the task to run it")  # fmt: skip
    row = Task.objects.get(pk=handle.id)
    # Its own retries applied: the first attempt failed, the second succeeded.
    assert (row.result, row.attempts, row.max_attempts) == (42, 2, 3)
    worker.terminate()
    assert worker.wait() == 0, worker.log()


def test_a_name_in_this_codebase_that_is_not_a_task_is_refused():
    with pytest.raises(UnknownTaskError, match=r"Did you mean 'tests\.testapp\.tasks\.add'"):
        send_task("tests.testapp.tasks.ad", [1, 2])
    with pytest.raises(InvalidTask, match="a dotted path"):
        send_task("not a name")
    assert not Task.objects.exists()


def test_a_row_sent_by_name_gets_the_declared_attempts_and_time_limit_where_it_runs():
    from datetime import UTC, datetime

    from django_tasks_q.queue import ClaimedTask
    from django_tasks_q.worker.runner import as_declared
    from tests.testapp import tasks

    now = datetime.now(UTC)
    sent = ClaimedTask(
        id=1, name=tasks.named_task.name, queue="other", priority=0, args=[], kwargs={},
        attempt=1, max_attempts=0, timeout=None, run_after=now, enqueued_at=now,
        started_at=now, last_attempted_at=now, errors=[],
    )  # fmt: skip
    declared = as_declared(sent)
    assert (declared.max_attempts, declared.timeout) == (1, 12.5)
    assert as_declared(declared) is declared
