"""The admin in a real browser (Debian's Chromium through Playwright): an operator finds a
failure, reads its traceback, retries it and cancels a waiting task."""

import pytest
from playwright.sync_api import expect

from django_tasks_q.models import Task
from tests.conftest import run_burst_worker, save_screenshot
from tests.testapp import tasks

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]


@pytest.fixture
def tasks_in_every_state():
    succeeded = tasks.add.delay(2, 3)
    failed = tasks.always_fails.delay()
    run_burst_worker(concurrency=1)
    later = tasks.add.apply_async((1, 1), countdown=3600)
    waiting = tasks.record.delay("waiting")
    cancelled = tasks.add.delay(9, 9)
    cancelled.cancel()
    running = Task.objects.create(name=tasks.runs_long.name, args=["report", 60], status="RUNNING",
                                  attempts=1, worker_id="web-1-4242")  # fmt: skip
    return {"succeeded": succeeded.id, "failed": failed.id, "later": later.id,
            "waiting": waiting.id, "cancelled": cancelled.id, "running": str(running.pk)}  # fmt: skip


def row(page, task_id):
    return page.locator("#result_list tbody tr").filter(
        has=page.locator(f"a:text-is('#{task_id}')")
    )


def test_an_operator_finds_a_failure_reads_its_traceback_and_retries_it(
    admin_page, live_server, tasks_in_every_state, tmp_path
):
    page = admin_page
    page.goto(f"{live_server.url}/admin/django_tasks_q/task/")
    for task_id in tasks_in_every_state.values():
        expect(row(page, task_id)).to_have_count(1)
    page.click("#toggle-nav-sidebar")  # room for every column
    save_screenshot(page, tmp_path, "admin-tasks.png")

    page.locator("#changelist-filter a", has_text="Failed").first.click()
    expect(page.locator("#result_list tbody tr")).to_have_count(1)
    failed = tasks_in_every_state["failed"]
    expect(row(page, failed)).to_contain_text("3 / 3")

    row(page, failed).locator(f"a:text-is('#{failed}')").click()
    expect(page.locator("body")).to_contain_text("TransientError: it never works")
    expect(page.locator(".tasks-q-error")).to_have_count(3)
    expect(page.locator("input[name=_save]")).to_have_count(0)
    save_screenshot(page, tmp_path, "admin-task-failed.png", full_page=True)

    page.go_back()
    row(page, failed).locator("input.action-select").check()
    page.select_option("select[name=action]", "retry_now")
    page.click("button[name=index]")
    expect(page.locator(".messagelist")).to_contain_text("1 task will run again now")
    refreshed = Task.objects.get(pk=failed)
    assert (refreshed.status, refreshed.attempts, len(refreshed.errors)) == ("READY", 3, 3)


def test_an_operator_cancels_a_waiting_task_and_asks_a_running_one_to_stop(
    admin_page, live_server, tasks_in_every_state
):
    page = admin_page
    page.goto(f"{live_server.url}/admin/django_tasks_q/task/")
    for name in ("waiting", "running"):
        row(page, tasks_in_every_state[name]).locator("input.action-select").check()
    page.select_option("select[name=action]", "cancel_tasks")
    page.click("button[name=index]")
    expect(page.locator(".messagelist")).to_contain_text("1 task cancelled")
    expect(page.locator(".messagelist")).to_contain_text("1 running task was asked to stop")
    expect(row(page, tasks_in_every_state["waiting"])).to_contain_text("Cancelled")
    assert Task.objects.get(pk=tasks_in_every_state["running"]).cancel_requested_at is not None
    assert Task.objects.get(pk=tasks_in_every_state["later"]).status == "READY"


def test_searching_by_id_and_by_argument_text(admin_page, live_server, tasks_in_every_state):
    page = admin_page
    page.goto(f"{live_server.url}/admin/django_tasks_q/task/")
    page.fill("#searchbar", f"#{tasks_in_every_state['running']}")
    page.press("#searchbar", "Enter")
    expect(page.locator("#result_list tbody tr")).to_have_count(1)
    page.fill("#searchbar", "waiting")
    page.press("#searchbar", "Enter")
    expect(page.locator("#result_list tbody tr")).to_have_count(1)
    expect(row(page, tasks_in_every_state["waiting"])).to_have_count(1)


def test_the_dashboard_shows_tasks_in_every_state_and_refreshes_itself(
    admin_page, live_server, tasks_in_every_state, tmp_path
):
    from datetime import timedelta

    from django_tasks_q.models import Schedule, Worker

    Worker.objects.create(id="web-1-4242", hostname="web-1", pid=4242, concurrency=4)
    Schedule.objects.create(name="nightly report", task=tasks.record.name, args=["nightly"],
                            interval=timedelta(hours=24))  # fmt: skip
    page = admin_page
    page.goto(f"{live_server.url}/admin/")
    page.locator("a", has_text="Dashboard").first.click()
    cells = {"ready": "1", "running": "1", "scheduled": "1", "succeeded": "1", "failed": "1"}
    for column, number in cells.items():
        expect(page.locator(f'[data-cell="default:{column}"]')).to_have_text(number)
    expect(page.locator("#tasks-q-failing")).to_contain_text("TransientError")
    expect(page.locator("#tasks-q-workers")).to_contain_text("web-1")
    expect(page.locator("#tasks-q-schedules")).to_contain_text("nightly report")
    expect(page.locator("#tasks-q-throughput svg")).to_have_count(1)
    save_screenshot(page, tmp_path, "admin-dashboard.png", full_page=True)

    tasks.record.delay("arrives while the page is open")
    # No reload: the page's own refresh brings the new number.
    expect(page.locator('[data-cell="default:ready"]')).to_have_text("2", timeout=20_000)
