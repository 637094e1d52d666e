"""taskbench end to end on a tiny load: it must run real workers and verify what they did."""

import io
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from django.core.management import CommandError, call_command

from django_tasks_q.bench import queries
from django_tasks_q.bench.options import BenchError
from django_tasks_q.models import Task
from django_tasks_q.queue import load_statements
from tests.conftest import ROOT, database_url_for_subprocess


@pytest.mark.django_db(transaction=True)
def test_taskbench_reports_verified_rates_and_cleans_up(monkeypatch):
    # Its workers inherit the environment: point them at the test database.
    monkeypatch.setenv("DATABASE_URL", database_url_for_subprocess())
    out = io.StringIO()
    call_command(
        "taskbench", "--tasks", "300", "--workers", "1", "--concurrency", "2",
        "--latency-samples", "5", "--enqueue-threads", "2", "--json", stdout=out, stderr=io.StringIO(),
    )  # fmt: skip
    results = json.loads(out.getvalue())
    assert results["drain_tasks"] == 300 + results["enqueue_single_tasks"]
    assert results["drain_per_s"] > 0 and results["ceiling_per_s"] > 0
    assert results["latency_samples"] == 5
    assert 0 < results["latency_p50_ms"] <= results["latency_p99_ms"]
    # The whole start latency includes the database's part, from the commit to the claim.
    assert 0 < results["claim_latency_p50_ms"] <= results["claim_latency_p99_ms"]
    assert results["claim_latency_p50_ms"] < results["latency_p50_ms"]
    assert not Task.objects.filter(queue="taskbench").exists()


@pytest.mark.django_db(transaction=True)
def test_the_steady_load_reports_each_window_while_the_xmin_horizon_is_held(monkeypatch):
    monkeypatch.setenv("DATABASE_URL", database_url_for_subprocess())
    out = io.StringIO()
    call_command(
        "taskbench", "--tasks", "100", "--workers", "1", "--concurrency", "2",
        "--latency-samples", "0", "--io-tasks-per-slot", "0", "--skip-ceiling",
        "--enqueue-threads", "1", "--pressure", "2", "--pressure-window", "1",
        "--pressure-rate", "100", "--hold-xmin", "--json", stdout=out, stderr=io.StringIO(),
    )  # fmt: skip
    results = json.loads(out.getvalue())
    windows = results["pressure_windows"]
    assert results["pressure_hold_xmin"] and len(windows) == 2
    assert all(window["offered_per_s"] > 0 and window["run_per_s"] > 0 for window in windows)
    assert all(0 < window["claim_lag_p50_ms"] <= window["claim_lag_p99_ms"] for window in windows)
    assert results["pressure_drain_after_s"] >= 0
    assert not Task.objects.filter(queue="taskbench").exists()


def test_holding_the_xmin_horizon_needs_a_steady_load():
    with pytest.raises(CommandError, match="--hold-xmin applies to the steady load"):
        call_command("taskbench", "--hold-xmin", stdout=io.StringIO(), stderr=io.StringIO())


def test_the_benchmark_is_not_imported_at_start_up_yet_its_task_is_found_by_name():
    # A fresh process: in this one, the test above may have imported the benchmark already.
    script = (
        "import sys, django; django.setup()\n"
        "from django_tasks_q import registry\n"
        "print([m for m in sys.modules if m.startswith('django_tasks_q.bench')])\n"
        "task = registry.find('django_tasks_q.bench.tasks.noop')\n"
        "print(task.name, task.func(7))\n"
    )
    completed = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=60,
        env={**os.environ, "DJANGO_SETTINGS_MODULE": "tests.settings"},
    )  # fmt: skip
    assert completed.returncode == 0, completed.stderr
    assert completed.stdout.splitlines() == ["[]", "django_tasks_q.bench.tasks.noop 7"]


def test_every_statement_the_benchmark_runs_is_in_its_sql_file():
    source = Path(queries.__file__).read_text()
    used = set(re.findall(r'\bsql\("(\w+)"\)', source))
    assert used and used == set(load_statements("django_tasks_q.bench", "queries.sql"))


@pytest.mark.django_db
def test_taskbench_refuses_a_queue_holding_other_tasks():
    Task.objects.create(name="tests.testapp.tasks.add", queue="taskbench", args=[1, 2])
    with pytest.raises(BenchError, match="1 task\\(s\\) that the benchmark did not create"):
        queries.refuse_foreign_rows("default", "taskbench")


@pytest.mark.django_db
def test_taskbench_reports_no_rate_when_its_tasks_did_not_all_succeed():
    Task.objects.create(name=queries.NOOP_NAME, queue="taskbench", args=[1])
    with pytest.raises(BenchError, match=r"Only 0 of 1 .* \(by status: READY 1\)"):
        queries.verify("default", "taskbench", queries.NOOP_NAME, 1)
