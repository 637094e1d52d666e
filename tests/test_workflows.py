"""Workflows: dependencies, chain, group, chord, callbacks (docs/workflows.md)."""

import threading

import pytest
from django.db import connection, connections, transaction
from django.db.models.functions import Now

from django_tasks_q import InvalidTask, SerializationError
from django_tasks_q.canvas import After, WorkflowHandle, chain, chord, group, signature
from django_tasks_q.models import Dependency, Task
from tests.conftest import run_burst_worker, transaction_in_another_session, wait_for
from tests.testapp import tasks
from tests.testapp.models import Execution

pytestmark = pytest.mark.django_db(transaction=True)


def test_a_chain_passes_each_result_to_the_next_step():
    workflow = chain(tasks.add.s(1, 2), tasks.add.s(10), tasks.add.s(100)).apply_async()
    assert [step.status for step in workflow.steps] == ["READY", "WAITING", "WAITING"]
    run_burst_worker()
    workflow.wait(timeout=5)
    assert workflow.status == "SUCCESSFUL"
    assert workflow.result == 113


def executions(key: str) -> int:
    return Execution.objects.filter(key=key).count()


def test_a_dependent_waits_and_runs_after_its_dependency_with_apply_async():
    first = tasks.add.delay(1, 1)
    second = tasks.record.apply_async(("after",), depends_on=[first])
    assert second.status == "WAITING"
    assert [h.id for h in second.dependencies()] == [first.id]
    assert [h.id for h in first.dependents()] == [second.id]
    assert second.workflow_id is not None
    run_burst_worker()
    assert second.wait(timeout=5).status == "SUCCESSFUL"
    assert executions("after") == 1


def test_a_dependency_that_already_finished_counts_at_once():
    first = tasks.add.delay(1, 1)
    run_burst_worker()
    second = tasks.record.apply_async(("late",), depends_on=[first.id])
    second.refresh()
    assert second.status == "READY"


def test_a_dependency_that_already_failed_cancels_the_new_dependent():
    failed = tasks.fails_recording.delay("x")
    run_burst_worker()
    late = tasks.record.apply_async(("never",), depends_on=[failed])
    late.refresh()
    assert late.status == "CANCELLED"
    assert late.errors[-1].type == "django_tasks_q.exceptions.DependencyNotMet"
    assert f"#{failed.id}" in late.errors[-1].message and "FAILED" in late.errors[-1].message


def test_depends_on_an_unknown_task_is_a_clear_error_and_writes_nothing():
    with pytest.raises(InvalidTask, match="#987654"):
        tasks.record.apply_async(("x",), depends_on=[987654])
    assert Task.objects.count() == 0


def test_a_failure_cancels_the_dependents_down_the_chain_and_fires_link_error_once():
    workflow = (
        chain(tasks.add.s(1, 2), tasks.fails_recording.si("mid"), tasks.record.si("end"))
        .on_error(tasks.on_error.s("errback"))
        .apply_async()
    )
    run_burst_worker()
    workflow.wait(timeout=5)
    first, middle, last, errback = workflow.steps
    assert (first.status, middle.status, last.status) == ("SUCCESSFUL", "FAILED", "CANCELLED")
    assert f"#{middle.id}" in last.errors[-1].message
    assert errback.status == "SUCCESSFUL" and errback.result == int(middle.id)
    assert list(Execution.objects.values_list("key", flat=True)) == [
        "mid",
        f"errback:{middle.id}:PermanentError",
    ]
    assert workflow.status == "FAILED"


def test_an_error_callback_that_is_not_needed_is_cancelled_saying_so():
    handle = tasks.add.apply_async((1, 2), link_error=tasks.on_error.s("unused"))
    run_burst_worker()
    [errback] = handle.dependents()
    assert errback.status == "CANCELLED"
    assert "none of its dependencies failed" in errback.errors[-1].message
    assert Execution.objects.count() == 0


def test_link_runs_the_callback_with_the_result_and_decorator_links_run_on_every_enqueue():
    handle = tasks.add.apply_async((1, 2), link=tasks.add.s(10))
    declared = tasks.add_then_more.delay(2, 3)
    run_burst_worker()
    [callback] = handle.dependents()
    assert callback.result == 13
    [declared_callback] = declared.dependents()
    assert declared_callback.result == 1005


def test_a_group_gives_its_results_in_order():
    workflow = group(tasks.add.s(i, i) for i in range(5)).apply_async()
    assert workflow.completed_count() == 0 and not workflow.ready()
    run_burst_worker()
    assert workflow.get(timeout=5) == [0, 2, 4, 6, 8]
    assert workflow.completed_count() == 5 and workflow.ready()


def test_a_chord_body_receives_every_header_result_in_order():
    workflow = chord([tasks.add.s(i, 0) for i in range(10)])(tasks.tally.s("body"))
    run_burst_worker(concurrency=4)
    assert workflow.get(timeout=5) == [10, 45]
    assert executions("body") == 1


def test_a_failed_header_cancels_the_chord_body():
    workflow = chord([tasks.add.s(1, 1), tasks.fails_recording.si("h")], tasks.tally.s("b"))
    handle = workflow.apply_async()
    run_burst_worker()
    handle.wait(timeout=5)
    body = handle.steps[-1]
    assert body.status == "CANCELLED" and executions("b") == 0


def test_nesting_a_group_in_a_chain_and_a_chord_in_a_chain():
    workflow = (
        tasks.add.s(1, 1)
        | group(tasks.add.s(10), tasks.add.s(20))
        | tasks.tally.s("sum")
        | tasks.add.s(0, 0).set(immutable=True)
    )
    handle = workflow.apply_async()
    run_burst_worker()
    handle.wait(timeout=5)
    # 2 -> [12, 22] -> [2, 34] -> add(0, 0), immutable
    assert [step.result for step in handle.steps] == [2, 12, 22, [2, 34], 0]
    group_in_chord = chord([chain(tasks.add.s(1, 1), tasks.add.s(1)), tasks.add.s(5, 5)],
                           tasks.tally.s("nested"))  # fmt: skip
    nested = group_in_chord.apply_async()
    run_burst_worker()
    # header: add(1, 1) | add(1) -> 3, and add(5, 5) -> 10
    assert nested.get(timeout=5) == [2, 13]


def test_rolling_back_the_enqueuing_transaction_leaves_nothing():
    with pytest.raises(RuntimeError), transaction.atomic():
        chord([tasks.add.s(1, 1)] * 3, tasks.tally.s("rolled")).apply_async()
        assert Task.objects.count() == 4
        raise RuntimeError("the view failed")
    assert Task.objects.count() == 0 and Dependency.objects.count() == 0


def test_a_signature_survives_json_and_runs_from_its_dict():
    import json

    sig = tasks.add.s(2, 3).set(priority=5, queue="default")
    rebuilt = signature(json.loads(json.dumps(chain(sig, tasks.add.s(1)))))
    handle = rebuilt.apply_async()
    assert handle.steps[0].priority == 5
    run_burst_worker()
    assert handle.get(timeout=5) == 6


def test_retrying_a_failed_step_resumes_the_workflow_without_rerunning_done_steps():
    workflow = chain(
        tasks.record.si("one"), tasks.fail_until.si("two", 2), tasks.record.si("three")
    ).apply_async()
    # fail_until retries up to 3 times; make the first attempts run out: one attempt only.
    Task.objects.filter(pk=workflow.steps[1].id).update(max_attempts=1)
    run_burst_worker()
    workflow.refresh()
    assert [s.status for s in workflow.steps] == ["SUCCESSFUL", "FAILED", "CANCELLED"]
    from django_tasks_q import queue

    assert queue.retry_now([int(workflow.steps[1].id)], more_attempts=1, using="default",
                           notify=False) == [int(workflow.steps[1].id)]  # fmt: skip
    assert Task.objects.get(pk=workflow.steps[2].id).status == "WAITING"
    run_burst_worker()
    workflow.wait(timeout=5)
    assert workflow.status == "SUCCESSFUL"
    assert [executions(k) for k in ("one", "three")] == [1, 1]


def test_cancelling_a_workflow_cancels_every_step_not_finished():
    workflow = chain(tasks.add.s(1, 1), tasks.add.s(1), tasks.add.s(1)).apply_async()
    assert workflow.cancel() == 3
    assert workflow.status == "CANCELLED"
    assert {s.status for s in workflow.steps} == {"CANCELLED"}


def test_cancelling_a_waiting_step_cancels_its_dependents():
    workflow = chain(tasks.add.s(1, 1), tasks.add.s(1), tasks.add.s(1)).apply_async()
    assert workflow.steps[1].cancel()
    workflow.refresh()
    assert [s.status for s in workflow.steps] == ["READY", "CANCELLED", "CANCELLED"]


def test_a_workflow_handle_can_be_loaded_from_its_id():
    workflow = group(tasks.add.s(1, 1), tasks.add.s(2, 2)).apply_async()
    run_burst_worker()
    loaded = WorkflowHandle.load(workflow.id)
    assert loaded.get(timeout=5) == [2, 4]
    assert tasks.add.delay(1, 1).workflow is None
    assert workflow.steps[0].workflow.id == workflow.id


def test_bad_canvas_input_is_a_clear_error():
    with pytest.raises(InvalidTask, match="time_limit"):
        tasks.add.s(1, 2).set(time_limit=3)
    with pytest.raises(InvalidTask, match="signature"):
        signature({"kind": "nope"})
    with pytest.raises(InvalidTask, match="no body"):
        chord([tasks.add.s(1, 1)]).apply_async()
    with pytest.raises(SerializationError, match="step 2"):
        chain(tasks.add.s(1, 1), tasks.add.s(object())).apply_async()
    assert Task.objects.count() == 0


def test_a_cancelled_dependency_cancels_dependents_but_fires_no_error_callback():
    handle = tasks.add.apply_async(
        (1, 1), link=tasks.record.si("link"), link_error=tasks.on_error.s("err")
    )
    assert handle.cancel()
    callback, errback = handle.dependents()
    assert callback.status == "CANCELLED" and "ended CANCELLED" in callback.errors[-1].message
    assert errback.status == "CANCELLED" and "none of its dependencies failed" in (
        errback.errors[-1].message
    )


def test_decorator_callbacks_also_run_through_djangos_enqueue():
    handle = tasks.add_then_more.enqueue(4, 5)
    run_burst_worker()
    [callback] = handle.dependents()
    assert callback.wait(timeout=5).result == 1009


def test_after_finished_runs_the_dependent_whatever_the_dependency_did():
    failed = tasks.fails_recording.delay("f")
    anyway = tasks.record.apply_async(("anyway",), depends_on=[After(failed, run_if="finished")])
    run_burst_worker()
    assert anyway.wait(timeout=5).status == "SUCCESSFUL"


def test_a_scheduled_task_with_decorator_callbacks_is_enqueued_by_beat_with_them():
    from datetime import timedelta

    from django_tasks_q import queue
    from django_tasks_q.beat import Beat
    from django_tasks_q.models import Schedule

    schedule = Schedule(name="linked", task=tasks.add_then_more.name, args=[1, 1],
                        interval=timedelta(hours=1))  # fmt: skip
    schedule.full_clean()
    schedule.save()
    tick = queue.database_now("default") - timedelta(seconds=2)
    Schedule.objects.filter(pk=schedule.pk).update(next_run_at=tick)
    Beat(listen=False, sync=False).run_once()
    [task] = Task.objects.filter(schedule=schedule)
    assert task.scheduled_for == tick
    [callback] = Dependency.objects.filter(depends_on_id=task.pk).values_list("task", flat=True)
    run_burst_worker()
    assert Task.objects.get(pk=callback).result == 1002


def test_enqueue_many_of_a_task_with_callbacks_enqueues_each_with_its_callbacks():
    handles = tasks.add_then_more.enqueue_many([(1, 1), (2, 2)])
    assert [len(h.dependents()) for h in handles] == [1, 1]
    run_burst_worker()
    assert [h.dependents()[0].result for h in handles] == [1002, 1004]


def test_options_of_a_chain_apply_to_its_steps_unless_a_step_sets_its_own():
    workflow = chain(tasks.add.s(1, 1), tasks.add.s(1).set(priority=9)).apply_async(
        queue="bulk", priority=3
    )
    assert [(s.queue, s.priority) for s in workflow.steps] == [("bulk", 3), ("bulk", 9)]


def _finish(task_id: int, status: str = "SUCCESSFUL") -> bool:
    """What a worker's outcome does to the row, as one statement."""
    return bool(Task.objects.filter(pk=task_id).update(status=status, result=7, finished_at=Now()))


def _waiting_on_a_lock(application_name: str) -> bool:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
            "AND application_name = %s",
            [application_name],
        )
        return cursor.fetchone()[0] > 0


def _enqueue_in_thread(results: list, **options) -> threading.Thread:
    def enqueue() -> None:
        try:
            with connections["default"].cursor() as cursor:
                cursor.execute("SET application_name = 'adding-a-dependent'")
            results.append(tasks.record.apply_async(("child",), **options))
        finally:
            connections.close_all()

    thread = threading.Thread(target=enqueue)
    thread.start()
    return thread


def test_a_dependent_committed_while_its_dependency_finishes_is_released_once():
    # The finishing statement holds the dependency's row; the transaction adding the edge
    # commits meanwhile: its deferred trigger waits for the row, then sees the dependency
    # finished and releases the dependent itself.
    parent = tasks.add.delay(1, 1)
    added: list = []
    with transaction_in_another_session(lambda: _finish(int(parent.id))):
        thread = _enqueue_in_thread(added, depends_on=[parent])
        wait_for(lambda: _waiting_on_a_lock("adding-a-dependent"), message="the edge's commit")
    thread.join(timeout=10)
    [child] = added
    child.refresh()
    assert child.status == "READY"


def test_a_dependency_finished_after_the_edge_committed_releases_its_dependent():
    parent = tasks.add.delay(1, 1)
    child = tasks.record.apply_async(("child",), depends_on=[parent])
    assert Task.objects.get(pk=parent.id).has_dependents
    _finish(int(parent.id))
    child.refresh()
    assert child.status == "READY"
    assert Task.objects.get(pk=child.id).args == ["child"]  # it receives nothing


def test_a_dependent_added_in_a_long_transaction_does_not_hold_up_the_dependency():
    # The lock on the dependency is taken at commit, not when the dependent is added: a view
    # that adds one and goes on working does not stall the worker finishing the dependency.
    parent = tasks.add.delay(1, 1)
    added: list = []

    def add_dependent() -> None:
        added.append(tasks.record.apply_async(("child",), depends_on=[parent]))

    with transaction_in_another_session(add_dependent):
        assert _finish(int(parent.id))  # would block if the row were locked
    [child] = added
    child.refresh()
    assert child.status == "READY"


def test_a_steps_own_retries_keep_its_dependents_waiting_then_they_run_once():
    workflow = chain(tasks.fail_until.si("flaky", 3), tasks.record.si("next")).apply_async()
    run_burst_worker()
    workflow.wait(timeout=10)
    assert [s.status for s in workflow.steps] == ["SUCCESSFUL", "SUCCESSFUL"]
    assert (executions("flaky"), executions("next")) == (3, 1)


def test_a_chord_as_a_chain_step_passes_its_body_result_on():
    workflow = chain(
        tasks.add.s(1, 1), chord([tasks.add.s(1), tasks.add.s(2)], tasks.tally.s("c")),
        tasks.record.si("after"),
    ).apply_async()  # fmt: skip
    run_burst_worker()
    workflow.wait(timeout=10)
    # 2 -> [3, 4] -> tally -> [2, 7] -> record("after")
    assert [s.result for s in workflow.steps] == [2, 3, 4, [2, 7], "after"]


def test_an_expired_dependency_cancels_its_dependents():
    parent = tasks.add.apply_async((1, 1), expires=60)
    child = tasks.record.apply_async(("never",), depends_on=[parent])
    Task.objects.filter(pk=parent.id).update(expires_at=Now())
    run_burst_worker()
    child.refresh()
    assert child.status == "CANCELLED" and "ended CANCELLED" in child.errors[-1].message
    assert executions("never") == 0


def test_a_signature_dict_from_outside_is_checked_as_it_is_rebuilt():
    rebuilt = signature({"kind": "signature", "task": tasks.add.name, "args": [1, 2]})
    handle = rebuilt.apply_async()
    run_burst_worker()
    assert handle.get(timeout=5) == 3
    with pytest.raises(InvalidTask, match="task name"):
        signature({"kind": "signature", "args": "not a list"})
    with pytest.raises(InvalidTask, match="time_limit"):
        signature({"kind": "chain", "tasks": [], "options": {"time_limit": 3}})
    with pytest.raises(InvalidTask, match="must be a list"):
        signature({"kind": "group", "tasks": "abc"})
