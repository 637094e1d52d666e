"""Probes for orchestrators: a worker's liveness file and heartbeat, a web process's readiness,
and the queue depth to scale on."""

import io
import json
import os
import signal
import socket
import subprocess
import sys
from datetime import timedelta

import pytest
from django.core.management import call_command
from django.db import connection
from django.test import RequestFactory
from django.utils import timezone

from django_tasks_q import health
from django_tasks_q.models import Task, Worker
from tests.conftest import ROOT, database_url_for_subprocess, wait_for


def probe(*args: str) -> subprocess.CompletedProcess:
    """``manage.py tasks health ...`` as an orchestrator runs it: a process of its own."""
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "tests.settings",
           "DATABASE_URL": database_url_for_subprocess()}  # fmt: skip
    return subprocess.run(
        [sys.executable, str(ROOT / "manage.py"), "tasks", "health", *args],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip


@pytest.mark.django_db(transaction=True)
def test_the_health_file_tells_a_turning_worker_from_a_frozen_or_stopped_one(
    start_worker, tmp_path
):
    path = tmp_path / "alive"
    worker = start_worker("--health-file", str(path))
    wait_for(path.exists, message="the health file")
    first = path.stat().st_mtime
    wait_for(lambda: path.stat().st_mtime > first, message="a second touch")
    assert probe("--file", str(path)).returncode == 0
    # With default flags too, the worker says when its child processes have all started.
    wait_for(lambda: probe("--file", str(path), "--ready").returncode == 0,
             timeout=60, message="every slot ready")  # fmt: skip

    os.kill(worker.pid, signal.SIGSTOP)  # a wedged worker: nothing in it turns
    try:
        wait_for(lambda: probe("--file", str(path), "--max-age", "2").returncode == 1,
                 timeout=30, message="the probe to fail")  # fmt: skip
        assert "was last touched" in probe("--file", str(path), "--max-age", "2").stdout
    finally:
        os.kill(worker.pid, signal.SIGCONT)
    wait_for(lambda: probe("--file", str(path), "--max-age", "2").returncode == 0,
             timeout=30, message="the probe to pass again")  # fmt: skip

    worker.terminate()
    assert worker.wait() == 0
    assert not path.exists()
    failed = probe("--file", str(path))
    assert failed.returncode == 1 and "does not exist" in failed.stdout


def test_a_worker_waiting_for_its_database_keeps_its_health_file_fresh(start_worker, tmp_path):
    path = tmp_path / "alive"
    with socket.socket() as closed:  # a port nothing listens on
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    worker = start_worker(
        "--health-file", str(path), env={"DATABASE_URL": f"postgres://postgres@127.0.0.1:{port}/x"}
    )
    wait_for(path.exists, message="the health file while the database is away")
    wait_for(lambda: "cannot reach the database to start" in worker.log(), message="the wait")
    assert probe("--file", str(path)).returncode == 0  # alive: waiting is not being stuck
    not_ready = probe("--file", str(path), "--ready")  # but it cannot run tasks
    assert not_ready.returncode == 1 and "not all ready" in not_ready.stdout
    worker.terminate()
    assert worker.wait() == 0
    assert not path.exists()


@pytest.mark.django_db(transaction=True)
def test_the_health_file_says_ready_once_every_child_process_has_started(start_worker, tmp_path):
    path, slow = tmp_path / "alive", tmp_path / "slow"
    slow.mkdir()
    # Its three children finish setting Django up 0, 2 and 4 seconds apart.
    worker = start_worker(
        "--health-file", str(path), "--concurrency", "3",
        env={"TASKS_Q_TEST_SLOW_CHILDREN": str(slow)},
    )  # fmt: skip
    wait_for(lambda: "ready: 3 slots" in worker.log(), timeout=60, message="the ready line")
    # Said once the last child was ready, not the first.
    assert sorted(done.name for done in slow.glob("*.done")) == ["0.done", "1.done", "2.done"]
    assert path.read_text() == "ready\n"
    assert probe("--file", str(path), "--ready").returncode == 0
    worker.terminate()
    assert worker.wait() == 0


@pytest.mark.django_db(transaction=True)
def test_the_heartbeat_probe_passes_for_a_running_worker_on_this_host(start_worker):
    assert "no running worker on" in probe().stdout
    worker = start_worker("--worker-id", "probe-me")
    wait_for(lambda: Worker.objects.filter(name="probe-me", state="RUNNING").exists(),
             message="the worker's registration")  # fmt: skip
    passed = probe()
    assert passed.returncode == 0, passed.stdout + passed.stderr
    assert passed.stdout.startswith("ok: ")
    assert probe("--worker-id", "probe-me", "--json").returncode == 0
    other = probe("--worker-id", "someone-else")
    assert other.returncode == 1 and "no running worker 'someone-else'" in other.stdout
    worker.terminate()
    assert worker.wait() == 0
    assert probe().returncode == 1  # stopped: no longer RUNNING


@pytest.mark.django_db
def test_the_heartbeat_probe_fails_for_a_silent_worker():
    Worker.objects.create(id="w-silent", name="silent", hostname=socket.gethostname(), pid=1,
                          concurrency=1, last_heartbeat_at=timezone.now() - timedelta(minutes=5))  # fmt: skip
    out = io.StringIO()
    with pytest.raises(SystemExit) as exited:
        call_command("tasks", "health", "--json", stdout=out)
    assert exited.value.code == 1
    result = json.loads(out.getvalue())
    assert result["healthy"] is False and "w-silent last heartbeat" in result["detail"]


@pytest.mark.django_db
def test_readiness_is_200_with_every_check_ok():
    response = health.readiness_view(RequestFactory().get("/healthz"))
    assert response.status_code == 200
    assert json.loads(response.content) == {
        "ready": True, "checks": {"database": "ok", "task_table": "ok", "migrations": "ok"}}  # fmt: skip


@pytest.mark.django_db(transaction=True)
def test_readiness_is_503_naming_migrations_not_applied_yet(monkeypatch):
    monkeypatch.setattr(health, "_migrated", set())
    *_, previous, last = sorted(
        path.stem for path in (ROOT / "django_tasks_q" / "migrations").glob("0*.py")
    )
    call_command("migrate", "django_tasks_q", previous, verbosity=0)
    try:
        response = health.readiness_view(RequestFactory().get("/healthz"))
        assert response.status_code == 503
        assert json.loads(response.content)["checks"]["migrations"] == f"unapplied: {last}"
    finally:
        call_command("migrate", "django_tasks_q", verbosity=0)
    assert health.readiness_view(RequestFactory().get("/healthz")).status_code == 200


@pytest.mark.django_db
def test_queue_depth_reports_ready_tasks_and_the_oldest_wait_per_queue():
    now = timezone.now()
    Task.objects.create(name="a", queue="mail", run_after=now - timedelta(seconds=120))
    Task.objects.create(name="a", queue="mail", run_after=now - timedelta(seconds=5))
    Task.objects.create(name="a", queue="mail", run_after=now + timedelta(hours=1))
    Task.objects.create(name="a", queue="reports", run_after=now - timedelta(seconds=1))
    depth = json.loads(health.queue_depth_view(RequestFactory().get("/depth")).content)
    assert depth["ready"] == 3
    assert depth["queues"]["mail"]["ready"] == 2 and depth["queues"]["mail"]["scheduled"] == 1
    assert 120 <= depth["oldest_ready_age_seconds"] < 180
    only = json.loads(
        health.queue_depth_view(RequestFactory().get("/depth?queue=reports&queue=idle")).content
    )
    assert only["ready"] == 1 and set(only["queues"]) == {"reports", "idle"}
    assert only["queues"]["idle"]["ready"] == 0


@pytest.mark.django_db
def test_the_sql_given_for_a_keda_scaler_counts_the_ready_tasks_of_a_queue():
    now = timezone.now()
    Task.objects.create(name="a", queue="emails", run_after=now - timedelta(seconds=3))
    Task.objects.create(name="a", queue="emails", run_after=now - timedelta(seconds=3))
    Task.objects.create(name="a", queue="emails", run_after=now + timedelta(hours=1))
    Task.objects.create(name="a", queue="emails", status="RUNNING", attempts=1)
    Task.objects.create(name="a", queue="default", run_after=now - timedelta(seconds=3))
    lines = (ROOT / "docs" / "operations.md").read_text().splitlines()
    start = next(n for n, line in enumerate(lines) if line.strip() == "query: >-")
    indent = len(lines[start]) - len(lines[start].lstrip())
    query_lines = []
    for line in lines[start + 1 :]:
        if len(line) - len(line.lstrip()) <= indent:
            break
        query_lines.append(line.strip())
    query = " ".join(query_lines)
    with connection.cursor() as cursor:
        cursor.execute(query)
        assert cursor.fetchone()[0] == 2
