"""The admin dashboard: each panel's numbers, the throughput chart, permissions, an empty table.

Times are seeded relative to the database's now(). A test runs in one transaction, where
now() does not move, and the dashboard reads it in that same transaction: a test that crosses
a minute boundary still sees the minutes it seeded.
"""

import html as htmllib
import re
import xml.etree.ElementTree as ET
from datetime import datetime, timedelta
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
from django.contrib import admin
from django.contrib.auth.models import Permission
from django.contrib.staticfiles import finders
from django.db import connection
from django.test import RequestFactory
from django.urls import path

from django_tasks_q import metrics
from django_tasks_q.models import Schedule, Task, Worker

pytestmark = [pytest.mark.django_db, pytest.mark.urls(__name__)]

URL = "/admin/django_tasks_q/dashboard/"
SVG = "{http://www.w3.org/2000/svg}"
NOOP = "tests.testapp.tasks.scheduled_noop"


urlpatterns = [path("admin/", admin.site.urls)]


# Seeding, with times in seconds from the database's now() (negative: in the past).


def execute(sql: str, params=()) -> list[tuple]:
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        return cursor.fetchall() if cursor.description else []


def task(name: str, queue: str, status: str, *, run_after: float = -1, finished: float | None = None,
         ran_for: float | None = None, worker: str = "", errors=()) -> Task:  # fmt: skip
    created = Task.objects.create(name=name, queue=queue, status=status, worker_id=worker,
                                  attempts=1, errors=list(errors))  # fmt: skip
    execute(
        """UPDATE django_tasks_q_task SET
               run_after = now() + %s * interval '1 second',
               finished_at = now() + %s::float8 * interval '1 second',
               last_attempted_at = now() + (%s::float8 - %s::float8) * interval '1 second'
           WHERE id = %s""",
        [run_after, finished, finished, ran_for, created.pk],
    )
    return created


def finished_in_minute(minutes_ago: int, second: int, status: str = "SUCCESSFUL") -> None:
    """A task that finished ``second`` seconds into the minute ``minutes_ago`` minutes before
    the current one (0: the current minute, which has begun by definition)."""
    created = Task.objects.create(name="app.tick", queue="mail", status=status, attempts=1)
    execute(
        """UPDATE django_tasks_q_task
           SET finished_at = date_trunc('minute', now()) + make_interval(mins => -%s, secs => %s)
           WHERE id = %s""",
        [minutes_ago, second, created.pk],
    )


def worker(worker_id: str, *, silent_for: float, concurrency: int = 4, state: str = "RUNNING"):
    Worker.objects.create(id=worker_id, hostname="host-" + worker_id, pid=100, queues=["mail"],
                          concurrency=concurrency, state=state, tasks_succeeded=7, tasks_failed=1)  # fmt: skip
    execute(
        "UPDATE django_tasks_q_worker SET last_heartbeat_at = now() - %s * interval '1 second' "
        "WHERE id = %s",
        [silent_for, worker_id],
    )


def schedule(name: str, *, due_in: float, enabled: bool = True, last_run: float | None = None):
    created = Schedule(name=name, task=NOOP, interval=timedelta(hours=1), enabled=enabled)
    created.save()
    execute(
        """UPDATE django_tasks_q_schedule
           SET next_run_at = now() + %s * interval '1 second',
               last_run_at = now() + %s::float8 * interval '1 second'
           WHERE id = %s""",
        [due_in, last_run, created.pk],
    )
    return created


def database_minute() -> datetime:
    return execute("SELECT date_trunc('minute', now())")[0][0]


# Reading the page.


VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "wbr"}


class Cells(HTMLParser):
    """The text of every element carrying ``data-cell``, by its value."""

    def __init__(self) -> None:
        super().__init__()
        self.found: dict[str, str] = {}
        self.open: list[tuple[str, int]] = []  # (cell, depth it opened at)
        self.depth = 0

    def handle_starttag(self, tag, attrs):
        if tag in VOID:
            return
        self.depth += 1
        cell = dict(attrs).get("data-cell")
        if cell is not None:
            self.found[cell] = ""
            self.open.append((cell, self.depth))

    def handle_endtag(self, tag):
        if tag in VOID:
            return
        if self.open and self.open[-1][1] == self.depth:
            self.open.pop()
        self.depth -= 1

    def handle_data(self, data):
        for cell, _ in self.open:
            self.found[cell] += data


def cells(html: str, within: str = "") -> dict[str, str]:
    parser = Cells()
    parser.feed(section(html, within) if within else html)
    return {key: " ".join(text.split()) for key, text in parser.found.items()}


def section(html: str, element_id: str) -> str:
    """The panel with this id, up to the next panel."""
    start = html.index(f'id="{element_id}"')
    end = html.find('<div class="module tasks-q-panel', start)
    return html[start : end if end != -1 else len(html)]


def text(html: str) -> str:
    return " ".join(htmllib.unescape(re.sub(r"<[^>]+>", " ", html)).split())


def rows(html: str, element_id: str) -> list[str]:
    body = section(html, element_id).split("<tbody>", 1)[1].split("</tbody>", 1)[0]
    return [text(row) for row in re.findall(r"<tr\b.*?</tr>", body, flags=re.DOTALL)]


def chart(html: str) -> ET.Element:
    svg = re.search(r'<svg class="tasks-q-chart".*?</svg>', html, flags=re.DOTALL).group(0)
    return ET.fromstring(svg)  # also proves the chart is well-formed XML


def page(client) -> str:
    response = client.get(URL)
    assert response.status_code == 200
    return response.content.decode()


# A queue of every kind of task.


@pytest.fixture
def scene(settings):
    settings.TASKS_Q = {**settings.TASKS_Q, "LEASE_SECONDS": 60, "HEARTBEAT_INTERVAL": 5}
    send, report = "app.send", "app.report"
    for run_after in (-90, -30, 0):
        task(send, "mail", "READY", run_after=run_after)
    for run_after in (3600, 7200):
        task(send, "mail", "READY", run_after=run_after)
    task(send, "mail", "RUNNING", worker="fresh")
    task(send, "mail", "RUNNING", worker="fresh")
    for finished, ran_for in ((-60, 1), (-120, 2), (-180, 3), (-240, 4)):
        task(send, "mail", "SUCCESSFUL", finished=finished, ran_for=ran_for)
    first = {"attempt": 1, "type": "builtins.ValueError", "message": "first try"}
    latest = {"attempt": 2, "type": "builtins.KeyError", "message": "'missing'"}
    task(send, "mail", "FAILED", finished=-300, ran_for=10, errors=[first])
    latest_failure = task(send, "mail", "FAILED", finished=-30, ran_for=20, errors=[first, latest])
    task(send, "mail", "FAILED", finished=-7200, ran_for=1, errors=[first])  # today, not this hour
    task(send, "mail", "CANCELLED", finished=-60)
    task(report, "reports", "READY", run_after=-10)
    task(report, "reports", "RUNNING", worker="stale")
    timeout = {"attempt": 1, "type": "builtins.TimeoutError", "message": "took too long"}
    task(report, "reports", "FAILED", finished=-600, ran_for=30, errors=[timeout])
    task(report, "reports", "SUCCESSFUL", finished=-2 * 86400, ran_for=99)  # days ago
    task("app.ancient", "reports", "FAILED", finished=-2 * 86400, ran_for=1, errors=[timeout])
    worker("fresh", silent_for=1)
    worker("stale", silent_for=15, concurrency=2)  # missed two 5 s heartbeats, within the lease
    worker("lost", silent_for=120)  # past the 60 s lease
    worker("stopped", silent_for=1, state="STOPPED")
    return {"latest_failure": latest_failure}


def test_queues_show_ready_running_scheduled_and_the_last_hours_outcomes(admin_client, scene):
    found = cells(page(admin_client), within="tasks-q-queues")
    assert found == {
        "mail:ready": "3", "mail:running": "2", "mail:scheduled": "2", "mail:waiting": "0",
        "mail:succeeded": "4", "mail:failed": "2", "mail:oldest": "1.5 min",
        "reports:ready": "1", "reports:running": "1", "reports:scheduled": "0",
        "reports:waiting": "0", "reports:succeeded": "0", "reports:failed": "1", "reports:oldest": "10.0 s",
        "*:ready": "4", "*:running": "3", "*:scheduled": "2", "*:waiting": "0",
        "*:succeeded": "4", "*:failed": "3", "*:oldest": "1.5 min",
    }  # fmt: skip


def test_a_queue_number_links_to_the_tasks_it_counts(admin_client, scene):
    html = section(page(admin_client), "tasks-q-queues")
    href = re.search(r'data-cell="mail:failed"><a href="([^"]+)"', html).group(1)
    url = href.replace("&amp;", "&")
    query = parse_qs(urlsplit(url).query)
    assert query["status__exact"] == ["FAILED"]
    assert query["queue"] == ["mail"]
    assert "finished_at__gte" in query
    response = admin_client.get(url)
    assert response.status_code == 200
    listed = response.context["cl"].result_list
    assert sorted(t.name for t in listed) == ["app.send", "app.send"]
    assert {t.status for t in listed} == {"FAILED"}


def test_top_failing_tasks_of_the_day_with_their_latest_error(admin_client, scene):
    html = page(admin_client)
    assert rows(html, "tasks-q-failing") == [
        "app.send 3 builtins.KeyError: 'missing' 30.0 s ago",
        "app.report 1 builtins.TimeoutError: took too long 10.0 min ago",
    ]
    latest = scene["latest_failure"].pk
    change = f'href="/admin/django_tasks_q/task/{latest}/change/">builtins.KeyError: '
    assert change in section(html, "tasks-q-failing")


def test_slowest_tasks_of_the_hour_with_median_and_95th_percentile(admin_client, scene):
    # app.send ran 1, 2, 3, 4, 10 and 20 s: p50 = 3.5, p95 = 10 + 0.75 * (20 - 10) = 17.5.
    assert rows(page(admin_client), "tasks-q-slowest") == [
        "app.report 1 30.0 s 30.0 s",
        "app.send 6 3.5 s 17.5 s",
    ]


def test_workers_with_heartbeat_age_what_they_run_and_stale_ones_marked(admin_client, scene):
    html = page(admin_client)
    panel = section(html, "tasks-q-workers")
    assert "Workers: 2 alive, 2 with a stale heartbeat" in text(panel)
    marked = dict(re.findall(r'<tr class="tasks-q-(\w+)" data-worker="(\w+)"', panel))
    assert marked == {"lost": "lost", "stale": "stale", "live": "fresh"}  # class -> worker
    assert rows(html, "tasks-q-workers") == [  # longest silent first; stopped workers left out
        "lost host-lost · 100 mail 2.0 min ago lost 0 / 4 idle 7 1",
        "stale host-stale · 100 mail 15.0 s ago stale 1 / 2 app.report 7 1",
        "fresh host-fresh · 100 mail 1.0 s ago 2 / 4 app.send (2) 7 1",
    ]
    assert "status__exact=RUNNING&amp;worker_id=fresh&amp;name=app.send" in panel


def test_schedules_due_next_soonest_first_enabled_only_ten_at_most(admin_client, scene):
    schedule("overdue", due_in=-300, last_run=-3900)
    schedule("soon", due_in=30)
    schedule("disabled", due_in=10, enabled=False)
    for n in range(10):
        schedule(f"later {n}", due_in=3600 + n)
    listed = rows(page(admin_client), "tasks-q-schedules")
    assert len(listed) == 10
    assert listed[0].startswith("overdue " + NOOP)
    assert "overdue by 5.0 min: is a beat running?" in listed[0]
    assert listed[1].startswith("soon " + NOOP)
    assert "in 30.0 s" in listed[1]
    assert listed[1].endswith("—")  # never ran
    assert [row.split()[1] for row in listed[2:]] == [str(n) for n in range(8)]


def test_the_chart_has_a_bar_per_minute_with_the_counts_of_that_minute(admin_client):
    finished_in_minute(0, 0)  # the current minute's first second has passed
    for second in (10, 20, 30):
        finished_in_minute(5, second)
    finished_in_minute(5, 50, status="FAILED")
    finished_in_minute(59, 1)
    finished_in_minute(59, 59)
    finished_in_minute(60, 30)  # a minute before the window
    finished_in_minute(7, 5, status="CANCELLED")  # neither succeeded nor failed
    minute = database_minute()

    html = page(admin_client)
    svg = chart(html)
    bars = svg.findall(f"{SVG}g[@class='tasks-q-minute']")
    assert len(bars) == 60
    starts = [datetime.fromisoformat(bar.get("data-minute")) for bar in bars]
    assert starts == [minute - timedelta(minutes=59 - n) for n in range(60)]
    counts = {59 - n: (int(bar.get("data-succeeded")), int(bar.get("data-failed")))
              for n, bar in enumerate(bars)}  # fmt: skip
    assert {ago: pair for ago, pair in counts.items() if pair != (0, 0)} == {
        0: (1, 0),
        5: (3, 1),
        59: (2, 0),
    }
    five_ago = bars[54]
    assert five_ago.find(f"{SVG}title").text.endswith(": 3 succeeded, 1 failed")
    assert len(five_ago.findall(f"{SVG}rect[@class='tasks-q-bar-successful']")) == 1
    failed_link = five_ago.find(f"{SVG}a").get("href")
    response = admin_client.get(failed_link)
    assert [t.status for t in response.context["cl"].result_list] == ["FAILED"]
    assert bars[50].findall(f"{SVG}rect[@class='tasks-q-bar-failed']") == []


def test_the_chart_is_described_for_screen_readers_and_as_a_table(admin_client):
    for second in (10, 20):
        finished_in_minute(3, second)
    finished_in_minute(3, 30, status="FAILED")
    html = page(admin_client)
    svg = chart(html)
    assert svg.get("role") == "img"
    assert svg.find(f"{SVG}title").text == "Tasks finished per minute"
    assert "2 succeeded, 1 failed" in svg.find(f"{SVG}desc").text
    axis = " ".join(t.text for t in svg.iter(f"{SVG}text"))
    assert "tasks per minute" in axis and "minute (UTC)" in axis
    label = (database_minute() - timedelta(minutes=3)).strftime("%H:%M")
    table = text(section(html, "tasks-q-throughput").split("<table", 1)[1])
    assert f"{label} 2 1" in table


def test_the_app_index_links_to_the_dashboard_for_those_who_may_view_tasks(
    client, django_user_model
):
    user = django_user_model.objects.create_user("viewer", is_staff=True)
    client.force_login(user)
    assert client.get("/admin/").content.decode().count(URL) == 0
    user.user_permissions.add(Permission.objects.get(codename="view_task"))
    assert f'href="{URL}"' in client.get("/admin/django_tasks_q/").content.decode()


def test_anonymous_visitors_are_sent_to_the_login_page(client):
    response = client.get(URL)
    assert response.status_code == 302
    assert response["Location"] == f"/admin/login/?next={URL}"


@pytest.mark.parametrize(
    ("permissions", "status"),
    [
        ((), 403),
        (("view_dashboard",), 403),  # the page follows Task's permissions, not the proxy's
        (("view_worker", "view_schedule"), 403),
        (("view_task",), 200),
        (("change_task",), 200),
    ],
)
def test_staff_need_a_permission_to_view_tasks(client, django_user_model, permissions, status):
    user = django_user_model.objects.create_user("staff", is_staff=True)
    user.user_permissions.add(*Permission.objects.filter(codename__in=permissions))
    client.force_login(user)
    assert client.get(URL).status_code == status


def test_the_proxy_has_no_pages_besides_the_dashboard(admin_client):
    pk = Task.objects.create(name="app.send").pk
    assert admin_client.get(f"{URL}{pk}/change/").status_code == 404
    assert admin_client.get(f"{URL}add/").status_code == 404


def test_an_empty_table_shows_a_page_with_nothing_to_report(admin_client):
    html = page(admin_client)
    for panel, empty in [
        ("tasks-q-queues", "No task is waiting or running, and none finished in the last hour."),
        ("tasks-q-failing", "No task failed in the last 24 hours."),
        ("tasks-q-slowest", "No task finished in the last hour."),
        ("tasks-q-workers", "No worker is running."),
        ("tasks-q-schedules", "No enabled schedule."),
    ]:
        assert empty in text(section(html, panel)), panel
    bars = chart(html).findall(f"{SVG}g[@class='tasks-q-minute']")
    assert len(bars) == 60
    assert {(bar.get("data-succeeded"), bar.get("data-failed")) for bar in bars} == {("0", "0")}


def test_the_page_refreshes_with_a_static_script_and_works_without_it(admin_client):
    html = page(admin_client)
    assert '<script src="/static/django_tasks_q/dashboard.js" defer></script>' in html
    assert 'id="tasks-q-dashboard" data-refresh-seconds="5"' in html
    assert "Reload the page to see new numbers." in html  # what a page without JS says
    script = Path(finders.find("django_tasks_q/dashboard.js")).read_text()
    assert 'getElementById("tasks-q-dashboard")' in script and "visibilitychange" in script
    # Nothing a strict Content-Security-Policy would block: no inline script or handler.
    dashboard = html.split('id="tasks-q-dashboard"', 1)[1]
    assert not re.search(r"<script(?![^>]*\bsrc=)|\son[a-z]+=|style=", dashboard)


def test_the_prometheus_gauges_read_the_same_backlog(scene):
    body = metrics.metrics_view(RequestFactory().get("/metrics")).content.decode()
    assert 'django_tasks_q_queue_ready{queue="mail"} 3.0' in body
    assert 'django_tasks_q_queue_scheduled{queue="mail"} 2.0' in body
    assert 'django_tasks_q_queue_running{queue="reports"} 1.0' in body
    age = float(re.search(r'oldest_ready_age_seconds\{queue="mail"\} (\S+)', body).group(1))
    assert age == 90  # by the database's clock, which has not moved in this transaction
