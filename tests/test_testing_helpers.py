"""django_tasks_q.testing: assert on what a test enqueued and run it inside the test's
transaction (docs/testing.md). These are ordinary TestCase tests: no worker, nothing
committed."""

from datetime import timedelta

import pytest
from django.db import transaction
from django.test import TestCase, override_settings

from django_tasks_q import InvalidTask
from django_tasks_q.canvas import chain
from django_tasks_q.compat import FRAMEWORK
from django_tasks_q.models import Task
from django_tasks_q.testing import TaskQueue, TaskQueueMixin, task_queue  # noqa: F401
from tests.djangoapp import tasks as django_tasks
from tests.testapp import tasks
from tests.testapp.models import Execution, Note


def place_order(text: str) -> None:
    """What a view does: write a row and enqueue its task in one transaction."""
    with transaction.atomic():
        note = Note.objects.create(text=text)
        tasks.record.delay(f"order-{note.pk}")


class TaskQueueInATestCase(TaskQueueMixin, TestCase):
    def test_what_a_view_enqueued_is_seen_asserted_and_run_in_the_test(self):
        place_order("a")
        [handle] = self.assertEnqueued(tasks.record, kwargs={}, queue="default")
        assert handle.args[0].startswith("order-") and handle.status == "READY"
        self.assertNotEnqueued(tasks.add)
        self.assertEnqueued(tasks.record.name, count=1)  # by name too

        ran = self.run_enqueued()
        assert [(h.id, h.status) for h in ran] == [(handle.id, "SUCCESSFUL")]
        assert Execution.objects.filter(key=handle.args[0]).count() == 1

    def test_a_failed_assertion_says_what_was_enqueued(self):
        tasks.add.delay(1, 2)
        with pytest.raises(AssertionError) as caught:
            self.assertEnqueued(tasks.add, args=[2, 2])
        assert "Expected tests.testapp.tasks.add enqueued at least once with args=[2, 2]" in str(
            caught.value
        )
        assert "args=[1, 2]" in str(caught.value)
        with pytest.raises(AssertionError, match="found 1"):
            self.assertNotEnqueued(tasks.add, args=[1, 2])
        with pytest.raises(AssertionError, match=r"Tasks enqueued: tests\.testapp\.tasks\.add"):
            self.assertEnqueued(tasks.record)

    def test_tasks_enqueued_by_tasks_run_too(self):
        tasks.enqueues_a_record.delay("fan")
        ran = self.run_enqueued()
        assert [h.task.name for h in ran] == [tasks.enqueues_a_record.name, tasks.record.name]
        assert Execution.objects.filter(key="fan-child").exists()

    def test_retries_and_failures_are_those_of_production(self):
        retried = tasks.fail_until.delay("r", 3)
        failing = tasks.always_fails.delay()
        self.run_enqueued()
        retried.refresh()
        failing.refresh()
        assert (retried.status, retried.attempts) == ("SUCCESSFUL", 3)
        assert (failing.status, failing.attempts, len(failing.errors)) == ("FAILED", 3, 3)

    def test_a_later_task_runs_when_the_clock_is_moved_to_it(self):
        later = tasks.record.apply_async(("later",), countdown=3600)
        assert self.run_enqueued() == []
        assert [h.id for h in self.run_enqueued(until=timedelta(hours=2))] == [later.id]

    def test_a_workflow_runs_step_after_step(self):
        workflow = chain(tasks.add.s(1, 2), tasks.add.s(10)).apply_async()
        self.run_enqueued()
        assert [step.refresh() or step.result for step in workflow.steps] == [3, 13]

    def test_a_task_whose_query_fails_leaves_the_tests_transaction_usable(self):
        handle = tasks.breaks_a_query.delay("q")
        self.run_enqueued()
        handle.refresh()
        assert (handle.status, handle.attempts) == ("FAILED", 3)
        assert "IntegrityError" in handle.errors[-1].exception_class_path
        assert not Execution.objects.filter(key="q").exists()  # each attempt rolled back
        Note.objects.create(text="still usable")

    def test_limited_tasks_all_run_one_after_another(self):
        for n in range(3):
            tasks.one_per_customer.delay("acme", f"l{n}")
        assert len(self.run_enqueued()) == 3
        assert Execution.objects.filter(key__startswith="l").count() == 3

    def test_djangos_own_task_is_asserted_and_run(self):
        django_tasks.multiply.enqueue(6, 7)
        [handle] = self.assertEnqueued(django_tasks.multiply, args=[6, 7])
        [ran] = self.run_enqueued()
        assert (ran.id, ran.status, ran.result) == (handle.id, "SUCCESSFUL", 42)

    def test_a_runaway_task_stops_at_the_limit(self):
        for n in range(5):
            tasks.add.delay(n, n)
        with pytest.raises(AssertionError, match="More than 3 task attempts ran"):
            self.run_enqueued(limit=3)


@pytest.mark.django_db
def test_the_pytest_fixture(task_queue):  # noqa: F811
    tasks.add.delay(2, 3)
    task_queue.assert_enqueued(tasks.add, args=[2, 3])
    [ran] = task_queue.run()
    assert ran.result == 5
    assert Task.objects.get(pk=ran.id).status == "SUCCESSFUL"


@pytest.mark.django_db
def test_on_djangos_own_backends_the_queue_says_what_to_configure():
    immediate = {"default": {"BACKEND": f"{FRAMEWORK}.backends.immediate.ImmediateBackend"}}
    with override_settings(TASKS=immediate), pytest.raises(InvalidTask, match="ImmediateBackend"):
        TaskQueue()
