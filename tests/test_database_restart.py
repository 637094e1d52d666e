"""A PostgreSQL restart under working workers: everything finishes, nothing is lost.

The test starts a PostgreSQL of its own (never one other tests share) and restarts it."""

import os
import subprocess
import sys

import psycopg
import pytest

from tests.conftest import ROOT, wait_for
from tests.private_postgres import private_postgres

pytestmark = pytest.mark.slow

TOTAL = 2000


@pytest.fixture
def own_postgres():
    with private_postgres(databases=["restarts"]) as server:
        yield server, server.url("restarts")


def run_manage(url, *args, **kwargs):
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "tests.settings", "DATABASE_URL": url,
           "TASKS_Q_LEASE_SECONDS": "3", "TASKS_Q_HEARTBEAT_INTERVAL": "0.5"}  # fmt: skip
    return subprocess.Popen(
        [sys.executable, str(ROOT / "manage.py"), *args], cwd=ROOT, env=env, **kwargs
    )


def scalar(url, query):
    try:
        with psycopg.connect(
            url.replace("postgres://", "postgresql://"), connect_timeout=2
        ) as conn:
            return conn.execute(query).fetchone()[0]
    except psycopg.OperationalError:
        return None


def test_workers_ride_out_a_database_restart(own_postgres, tmp_path):

    server, url = own_postgres
    assert run_manage(url, "migrate", "-v0").wait(timeout=120) == 0
    enqueue = (
        "from tests.testapp.tasks import record as t; "
        f"t.enqueue_many([(f'k{{i}}',) for i in range({TOTAL})])"
    )
    assert run_manage(url, "shell", "-c", enqueue).wait(timeout=60) == 0

    logs = [(tmp_path / f"worker{i}.log").open("w") for i in range(2)]
    workers = [
        run_manage(
            url,
            "runtaskworker",
            "--concurrency",
            "2",
            "--poll-interval",
            "0.2",
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        for log in logs
    ]
    try:
        wait_for(lambda: (scalar(url, "SELECT count(*) FROM testapp_execution") or 0) >= 300,
                 timeout=60, message="the workers to get going")  # fmt: skip
        server.restart()
        wait_for(
            lambda: scalar(url, "SELECT count(*) FROM django_tasks_q_task WHERE status <> 'SUCCESSFUL'") == 0,
            timeout=120, interval=0.2, message="every task to succeed after the restart",
        )  # fmt: skip
    finally:
        for worker in workers:
            worker.terminate()
        codes = [worker.wait(timeout=30) for worker in workers]
        for log in logs:
            log.close()
    output = "".join((tmp_path / f"worker{i}.log").read_text() for i in range(2))
    assert codes == [0, 0], output
    assert "lost the database" in output
    executions = scalar(url, "SELECT count(*) FROM testapp_execution")
    distinct = scalar(url, "SELECT count(DISTINCT key) FROM testapp_execution")
    assert distinct == TOTAL  # none lost
    # Default task options: an attempt the restart broke was lost, not failed, and ran again.
    # Only tasks in flight at the restart (at most one per thread) may have run twice.
    assert executions - distinct <= 4
