"""taskbench end to end on a tiny load: it must run real workers and verify what they did."""

import io
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest
from django.core.management import CommandError, call_command

from django_tasks_q.bench import queries
from django_tasks_q.bench.options import BenchError
from django_tasks_q.models import Task
from django_tasks_q.queue import load_statements
from tests.conftest import ROOT, database_url_for_subprocess
from tests.private_postgres import private_postgres


@pytest.mark.django_db(transaction=True)
def test_taskbench_reports_verified_rates_and_cleans_up(monkeypatch):
    # Its workers inherit the environment: point them at the test database.
    monkeypatch.setenv("DATABASE_URL", database_url_for_subprocess())
    out = io.StringIO()
    call_command(
        "taskbench", "--tasks", "300", "--workers", "1", "--concurrency", "2",
        "--latency-samples", "5", "--enqueue-threads", "2", "--chord-size", "50",
        "--limited-tasks", "200", "--limited-keys", "10", "--json",
        stdout=out, stderr=io.StringIO(),
    )  # fmt: skip
    results = json.loads(out.getvalue())
    # The enqueue phases' tasks drained while the workers start, then as many again once
    # every slot is ready.
    assert results["cold_drain_tasks"] == 300 + results["enqueue_single_tasks"]
    assert results["drain_tasks"] == 300
    assert results["cold_drain_per_s"] > 0 and results["workers_ready_s"] > 0
    assert results["drain_per_s"] > 0 and results["ceiling_per_s"] > 0
    # Each task is at least updated twice (claimed, finished) and the claims are committed.
    assert results["drain_rows_written_per_task"] >= 2
    assert results["drain_wal_bytes_per_task"] > 100
    assert 0 < results["drain_commits_per_task"] < 5
    assert results["latency_samples"] == 5
    # The chord's body checked it got every header's result; the time covers all of it.
    assert results["chord_size"] == 50 and results["chord_seconds"] > 0
    # The limited phase: every task ran, never two of one key at once (from the rows).
    assert (results["limited_tasks"], results["limited_most_per_key"]) == (200, 1)
    # The I/O-bound phase: 100 waits per slot. A wait never ends early, so the slots' time in
    # tasks is at least the share of the ideal rate, and no slot runs two at once.
    assert results["io_tasks"] == 100 * 2
    assert results["io_waited_ms"] >= results["io_task_ms"]
    assert 0 < results["io_pct_of_ideal"] <= results["io_slots_busy_pct"] <= 100
    assert 0 < results["latency_p50_ms"] <= results["latency_p99_ms"]
    # The whole start latency includes the database's part, from the commit to the claim.
    assert 0 < results["claim_latency_p50_ms"] <= results["claim_latency_p99_ms"]
    assert results["claim_latency_p50_ms"] < results["latency_p50_ms"]
    # The ceiling's rows are in a queue of their own, which the workers did not serve.
    assert not Task.objects.filter(queue__in=["taskbench", "taskbench.ceiling"]).exists()


@pytest.mark.django_db(transaction=True)
def test_the_steady_load_reports_each_window_while_the_xmin_horizon_is_held(monkeypatch):
    monkeypatch.setenv("DATABASE_URL", database_url_for_subprocess())
    out = io.StringIO()
    call_command(
        "taskbench", "--tasks", "100", "--workers", "1", "--concurrency", "2",
        "--latency-samples", "0", "--io-tasks-per-slot", "0", "--chord-size", "0", "--limited-tasks", "0", "--skip-ceiling",
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


@pytest.mark.django_db(transaction=True)
def test_the_steady_load_offers_a_fraction_of_the_drain_while_readers_scan_the_table(monkeypatch):
    monkeypatch.setenv("DATABASE_URL", database_url_for_subprocess())
    out = io.StringIO()
    call_command(
        "taskbench", "--tasks", "100", "--workers", "1", "--concurrency", "2",
        "--latency-samples", "0", "--io-tasks-per-slot", "0", "--chord-size", "0", "--limited-tasks", "0", "--skip-ceiling",
        "--enqueue-threads", "1", "--pressure", "2", "--pressure-window", "1",
        "--pressure-load", "0.25", "--readers", "2", "--hold-xmin", "--json",
        stdout=out, stderr=io.StringIO(),
    )  # fmt: skip
    results = json.loads(out.getvalue())
    assert results["pressure_load"] == 0.25
    assert results["pressure_rate"] == pytest.approx(0.25 * results["drain_per_s"])
    windows = results["pressure_windows"]
    assert results["pressure_readers"] == 2 and results["pressure_reader_scans"] > 0
    assert all(window["readers"] == 2 and window["xmin_held"] for window in windows)
    assert 0 < sum(window["reader_scans"] for window in windows) <= results["pressure_reader_scans"]
    assert not any(window["connections_exhausted"] for window in windows)
    assert not Task.objects.filter(queue="taskbench").exists()


def test_holding_the_xmin_horizon_needs_a_steady_load():
    with pytest.raises(CommandError, match="--hold-xmin applies to the steady load"):
        call_command("taskbench", "--hold-xmin", stdout=io.StringIO(), stderr=io.StringIO())


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--pressure", "5", "--pressure-load", "0"], "--pressure-load must be more than 0"),
        (["--pressure", "5", "--pressure-load", "-1"], "--pressure-load must be more than 0"),
        (["--pressure", "5", "--pressure-load", "1", "--pressure-rate", "10"], "not both"),
        (["--readers", "2"], "--readers applies to the steady load"),
        (["--pressure", "5", "--readers", "-1"], "--readers must be 0 or more"),
        (["--exhaust-connections", "1"], "--exhaust-connections applies to the steady load"),
        (["--pressure", "10", "--exhaust-connections", "-1"], "must be 0 or more seconds"),
        (["--pressure", "10", "--exhaust-connections", "6"], "at most half of --pressure"),
    ],
)
def test_the_steady_load_options_are_checked_before_anything_runs(arguments, message):
    with pytest.raises(CommandError, match=re.escape(message)):
        call_command("taskbench", *arguments, stdout=io.StringIO(), stderr=io.StringIO())


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


@pytest.mark.django_db
def test_the_io_bound_phase_reports_no_rate_when_its_tasks_did_not_all_succeed():
    Task.objects.create(name=queries.WAITS_NAME, queue="taskbench", args=[10.0])
    with pytest.raises(BenchError, match=r"Only 0 of 1 .* \(by status: READY 1\)"):
        queries.verify_waits("default", "taskbench", 1)


@pytest.mark.django_db
def test_taskbench_refuses_a_phase_whose_tasks_a_foreign_worker_ran():
    Task.objects.create(
        name=queries.WAITS_NAME, queue="taskbench", args=[10.0], worker_id="someone-else-1"
    )
    queries.refuse_foreign_workers("default", "taskbench", queries.NOOP_NAME)  # not its tasks
    with pytest.raises(BenchError, match="1 benchmark task\\(s\\) were run by a worker"):
        queries.refuse_foreign_workers("default", "taskbench", queries.WAITS_NAME)


# -- connections exhausted: on a PostgreSQL of the test's own, never one other tests share ----

MAX_CONNECTIONS = 30  # few, so that filling the server takes a moment


@pytest.fixture
def small_postgres():
    settings = {"max_connections": MAX_CONNECTIONS}
    with private_postgres(databases=["exhausted"], settings=settings) as server:
        yield server, server.url("exhausted")


@pytest.mark.slow
def test_the_steady_load_takes_every_connection_and_the_workers_come_back(small_postgres):
    info, url = small_postgres
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "tests.settings", "DATABASE_URL": url}
    manage = [sys.executable, str(ROOT / "manage.py")]
    migrated = subprocess.run([*manage, "migrate", "-v0"], cwd=ROOT, env=env, timeout=120)
    assert migrated.returncode == 0
    # Another client's worker on the same database: its connection must survive the run.
    with psycopg.connect(host=str(info.socket_dir), port=info.port, user="postgres",
                         dbname="exhausted", application_name="django_tasks_q worker someone",
                         autocommit=True) as bystander:  # fmt: skip
        completed = subprocess.run(
            [*manage, "taskbench", "--tasks", "100", "--workers", "1", "--concurrency", "2",
             "--latency-samples", "0", "--io-tasks-per-slot", "0", "--chord-size", "0", "--limited-tasks", "0", "--skip-ceiling",
             "--enqueue-threads", "1", "--pressure", "8", "--pressure-window", "1",
             "--pressure-rate", "100", "--exhaust-connections", "3", "--json"],
            cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        assert completed.returncode == 0, completed.stderr
        assert bystander.execute("SELECT 1").fetchone() == (1,)
    results = json.loads(completed.stdout)
    assert 0 < results["pressure_filler_connections"] < MAX_CONNECTIONS
    assert results["pressure_worker_connections_ended"] >= 1
    assert results["pressure_exhausted_from_s"] < results["pressure_exhausted_until_s"]
    flags = [window["connections_exhausted"] for window in results["pressure_windows"]]
    assert not flags[0] and any(flags)
    # The workers claimed again once the connections were freed, and every task offered ran
    # (the drain after the load checked each result, or the command had failed).
    assert results["pressure_resumed_after_s"] is not None
    assert any("lost the database" in line for line in results["pressure_worker_log"])
