"""A workflow in the admin, in a real browser: the task page draws its steps, links to each,
filters the list to them, and cancels the whole workflow (change permission only)."""

import pytest
from django.contrib.auth.models import Permission
from playwright.sync_api import expect

from django_tasks_q.canvas import chain, chord, group
from django_tasks_q.models import Task
from tests.conftest import run_burst_worker, save_screenshot
from tests.testapp import tasks
from tests.testapp.models import Execution

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]


def test_the_task_page_draws_the_workflow_and_cancels_it(admin_page, live_server, tmp_path):
    page = admin_page
    done = chain(tasks.add.s(1, 1), tasks.fails_recording.si("step")).apply_async()
    run_burst_worker()
    workflow = chain(
        tasks.add.s(1, 2), group(tasks.add.s(10), tasks.add.s(20)), tasks.tally.s("t")
    ).apply_async()
    first = workflow.steps[0]
    page.goto(f"{live_server.url}/admin/django_tasks_q/task/{first.id}/change/")
    graph = page.locator("svg.tasks-q-graph")
    expect(graph.locator("rect")).to_have_count(4)
    expect(graph.locator("rect.tasks-q-graph-current")).to_have_count(1)
    expect(graph.locator("rect.tasks-q-graph-waiting")).to_have_count(3)
    expect(graph.locator("path.tasks-q-graph-edge")).to_have_count(4)  # 1->2, 1->3, 2->4, 3->4
    save_screenshot(page, tmp_path, "admin-workflow.png", full_page=True)

    graph.locator("a").nth(3).click()  # the body's own page
    expect(page).to_have_url(
        f"{live_server.url}/admin/django_tasks_q/task/{workflow.steps[3].id}/change/"
    )
    page.locator("a", has_text="Every step in the task list").click()
    expect(page.locator("#result_list tbody tr")).to_have_count(4)

    page.goto(f"{live_server.url}/admin/django_tasks_q/task/{first.id}/change/")
    page.locator("button.tasks-q-cancel-workflow").click()
    expect(page.locator(".messagelist")).to_contain_text("4 steps of the workflow cancelled")
    workflow.refresh()
    assert {step.status for step in workflow.steps} == {"CANCELLED"}
    expect(page.locator("button.tasks-q-cancel-workflow")).to_have_count(0)  # nothing left
    # A finished workflow offers no cancel button either.
    page.goto(f"{live_server.url}/admin/django_tasks_q/task/{done.steps[0].id}/change/")
    expect(page.locator("svg.tasks-q-graph rect.tasks-q-graph-failed")).to_have_count(1)
    expect(page.locator("button.tasks-q-cancel-workflow")).to_have_count(0)


def test_a_large_chord_is_drawn_as_one_box_per_column(admin_page, live_server):
    workflow = chord([tasks.add.s(i, 1) for i in range(500)], tasks.tally.s("big")).apply_async()
    page = admin_page
    page.goto(f"{live_server.url}/admin/django_tasks_q/task/{workflow.steps[-1].id}/change/")
    graph = page.locator("svg.tasks-q-graph")
    expect(graph.locator("rect")).to_have_count(2)
    expect(graph).to_contain_text("500 \N{MULTIPLICATION SIGN} add")
    expect(graph).to_contain_text("500 ready")
    graph.locator("a").first.click()
    expect(page.locator("#result_list tbody tr")).to_have_count(100)  # one page of the 500
    expect(page.locator(".paginator")).to_contain_text("500")


def test_cancelling_a_workflow_needs_the_change_permission(client, django_user_model):
    workflow = chain(tasks.add.s(1, 1), tasks.add.s(1)).apply_async()
    viewer = django_user_model.objects.create_user("viewer", password="x", is_staff=True)
    viewer.user_permissions.add(Permission.objects.get(codename="view_task"))
    client.force_login(viewer)
    page = client.get(f"/admin/django_tasks_q/task/{workflow.steps[0].id}/change/")
    assert page.status_code == 200 and b"tasks-q-graph" in page.content
    assert b"tasks-q-cancel-workflow" not in page.content
    url = f"/admin/django_tasks_q/task/{workflow.steps[0].id}/cancel-workflow/"
    assert client.post(url).status_code == 403
    assert client.get(url).status_code == 405
    assert set(Task.objects.values_list("status", flat=True)) == {"READY", "WAITING"}


def test_retry_now_in_the_admin_resumes_the_workflow_from_the_failed_step(admin_client):
    workflow = chain(
        tasks.record.si("one"), tasks.fail_until.si("two", 2), tasks.record.si("three")
    ).apply_async()
    _, failing, last = workflow.steps
    Task.objects.filter(pk=failing.id).update(max_attempts=1)  # its one attempt fails
    run_burst_worker()
    changelist = "/admin/django_tasks_q/task/"
    # The step cancelled by the failure is not retried on its own: it waits for its dependency.
    page = admin_client.post(changelist, {"action": "retry_now", "_selected_action": [last.id]},
                             follow=True)  # fmt: skip
    assert "a dependency did not succeed comes back when that dependency is retried" in (
        page.content.decode()
    )
    assert Task.objects.get(pk=last.id).status == "CANCELLED"
    page = admin_client.post(changelist, {"action": "retry_now",
                                          "_selected_action": [failing.id]}, follow=True)  # fmt: skip
    assert "1 task will run again now" in page.content.decode()
    assert Task.objects.get(pk=last.id).status == "WAITING"
    run_burst_worker()
    workflow.wait(timeout=10)
    assert workflow.status == "SUCCESSFUL"
    assert list(Execution.objects.order_by("id").values_list("key", flat=True)) == [
        "one",
        "two",
        "two",
        "three",
    ]
