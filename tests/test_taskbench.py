"""taskbench end to end on a tiny load: it must run real workers and verify what they did."""

import io
import json

import pytest
from django.core.management import call_command

from django_tasks_q.models import Task
from tests.conftest import database_url_for_subprocess


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
    assert not Task.objects.filter(queue="taskbench").exists()
