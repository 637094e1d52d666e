"""PostgreSQL out of connection slots: workers and beat wait, say why, and carry on by themselves.

Other clients hold every connection slot the server has. A worker (and a beat) started then,
or already running and cut off then, must stay up, log the server's refusal and that it
retries, back off rather than hammer the server, and run every task exactly once as soon as
slots free up.

Each test starts a PostgreSQL of its own (never one other tests share) allowing
MAX_CONNECTIONS connections. Superusers may use the ``superuser_reserved_connections`` slots
others may not, so a test either has everything connect as the ``postgres`` superuser with no
slot reserved (the refusal reads "too many clients already"), or has the worker and the
other clients connect as an ordinary role while the default 3 slots stay reserved ("remaining
connection slots are reserved for roles with the SUPERUSER attribute"). The test's monitor
connection is a superuser's either way.
"""

import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest

from tests.conftest import ROOT, wait_for
from tests.private_postgres import private_postgres

pytestmark = pytest.mark.slow

MAX_CONNECTIONS = 20
TOTAL = 200
RECORD = "tests.testapp.tasks.record"
# psycopg's text of PostgreSQL's refusals for lack of slots (SQLSTATE 53300; psycopg gives no
# sqlstate for an error while connecting): for anyone, and for a role that is no superuser.
FULL = ("too many clients already", "remaining connection slots are reserved")
RETRY = re.compile(r"(?:reconnecting|trying again|retrying) in (\d+(?:\.\d+)?) ?s")
# Connect as a superuser with no slot reserved, or as an ordinary role with 3 reserved.
SUPERUSER, ORDINARY = "postgres", "app"


@dataclass
class Server:
    socket_dir: str
    port: int
    role: str  # of the worker, the beat and the test's other clients
    url: str


@pytest.fixture
def small_postgres(request):
    """A private PostgreSQL allowing MAX_CONNECTIONS connections; the role to connect as
    comes from indirect parametrisation (default SUPERUSER)."""
    role = getattr(request, "param", SUPERUSER)
    settings = {
        "max_connections": MAX_CONNECTIONS,
        "superuser_reserved_connections": 0 if role == SUPERUSER else 3,
        "reserved_connections": 0,
    }
    with private_postgres(databases=["exhausted"], owner=role, settings=settings) as pg:
        yield Server(pg.socket_dir, pg.port, role, pg.url("exhausted", role))


def connect(server: Server, dbname: str = "exhausted", *, user: str | None = None):
    return psycopg.connect(host=server.socket_dir, port=server.port, user=user or server.role,
                           dbname=dbname, autocommit=True, connect_timeout=5)  # fmt: skip


class Hog:
    """The other clients: take every connection slot the server gives the role, and keep a
    superuser's connection (``monitor``) the test reads the database through meanwhile."""

    def __init__(self, server: Server):
        self.server = server
        self.monitor = connect(server, user=SUPERUSER)
        self.fillers: list[psycopg.Connection] = []

    def value(self, query, params=None):
        return self.monitor.execute(query, params).fetchone()[0]

    def fill(self) -> None:
        """Connect until the server refuses: it is full for the role when this returns."""
        while True:
            try:
                self.fillers.append(connect(self.server, "postgres"))
            except psycopg.OperationalError as exc:
                if any(text in str(exc) for text in FULL):
                    return
                raise

    def others(self) -> list[int]:
        """Client connections that are not the test's."""
        ours = [self.monitor.info.backend_pid, *(c.info.backend_pid for c in self.fillers)]
        rows = self.monitor.execute(
            "SELECT pid FROM pg_stat_activity WHERE backend_type = 'client backend' "
            "AND pid <> ALL(%s)",
            [ours],
        ).fetchall()
        return [pid for (pid,) in rows]

    def take_everything(self, timeout: float = 20) -> None:
        """Fill the server, and end every other client's connection, until every slot the
        role may use is the test's: a terminated client that reconnects first loses that
        connection again."""
        deadline = time.monotonic() + timeout
        self.fill()
        while others := self.others():
            if time.monotonic() > deadline:
                pytest.fail(f"other clients kept connecting: {others}")
            for pid in others:  # waits up to 5 s for each to be gone, freeing its slot
                self.monitor.execute("SELECT pg_terminate_backend(%s, 5000)", [pid])
            self.fill()
        reserved = 0 if self.server.role == SUPERUSER else 3
        assert len(self.fillers) + 1 == MAX_CONNECTIONS - reserved

    def release(self) -> None:
        """The other clients go away: every slot but the monitor's is free again."""
        for conn in self.fillers:
            conn.close()
        self.fillers = []

    def close(self) -> None:
        self.release()
        self.monitor.close()


@pytest.fixture
def hog(small_postgres):
    hog = Hog(small_postgres)
    yield hog
    hog.close()


class Process:
    """A ``manage.py`` command against the small server, its output in a file."""

    def __init__(self, url, tmp_path: Path, name: str, *args: str) -> None:
        self.log_path = tmp_path / f"{name}.log"
        with self.log_path.open("w") as log:
            self.process = run_manage(url, *args, stdout=log, stderr=subprocess.STDOUT)

    def log(self) -> str:
        return self.log_path.read_text()

    def alive(self) -> bool:
        return self.process.poll() is None

    def stop(self) -> int:
        if self.alive():
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)
            pytest.fail(f"{self.log_path.name} did not stop on SIGTERM; log:\n{self.log()}")


@pytest.fixture
def processes(small_postgres, tmp_path):
    url = small_postgres.url
    started: list[Process] = []

    def start(name, *args):
        started.append(Process(url, tmp_path, name, *args))
        return started[-1]

    yield start
    for process in started:
        if process.alive():
            process.process.kill()
            process.process.wait(timeout=10)


def run_manage(url, *args, **kwargs):
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "tests.settings", "DATABASE_URL": url,
           "PYTHONUNBUFFERED": "1"}  # fmt: skip
    return subprocess.Popen(
        [sys.executable, str(ROOT / "manage.py"), *args], cwd=ROOT, env=env, **kwargs
    )


def prepare(url, *, parked: bool = False) -> None:
    """Migrate, then enqueue TOTAL ``record`` tasks (``parked``: due only in an hour)."""
    assert run_manage(url, "migrate", "-v0").wait(timeout=120) == 0
    when = "timezone.now() + timedelta(hours=1)" if parked else "None"
    enqueue = (
        "from datetime import timedelta; from django.utils import timezone; "
        "from tests.testapp.tasks import record as t; "
        f"t.using(run_after={when}).enqueue_many([(f'k{{i}}',) for i in range({TOTAL})])"
    )
    assert run_manage(url, "shell", "-c", enqueue).wait(timeout=60) == 0


def refusals(log: str) -> list[str]:
    """The log lines quoting the server's refusal."""
    return [line for line in log.splitlines() if any(text in line for text in FULL)]


def retry_delays(lines: list[str]) -> list[float]:
    return [float(match.group(1)) for line in lines if (match := RETRY.search(line))]


def assert_waits_politely(name: str, log: str, exhausted_for: float) -> list[str]:
    """The log names the refusal and says it retries, with delays that grow: no spinning."""
    lines = refusals(log)
    assert lines, f"{name} never said the server refused it:\n{log}"
    delays = retry_delays(lines)
    assert delays, f"{name} did not say it retries:\n{log}"
    assert max(delays) >= 4 * min(delays), f"{name} does not back off: delays {delays}"
    # Backing off from 0.5 s, one loop retries about log2(t / 0.5) + 1 times in t seconds and
    # a few loops (main, listener, heartbeat) log theirs: a dozen lines. Spinning logs hundreds.
    bound = 20 * (1 + exhausted_for / 10)
    assert len(lines) <= bound, (
        f"{name} logged {len(lines)} refusals in {exhausted_for:.1f}s (bound {bound:.0f}):\n{log}"
    )
    return lines


def statuses(hog: Hog) -> dict[str, int]:
    rows = hog.monitor.execute(
        "SELECT status, count(*) FROM django_tasks_q_task WHERE name = %s GROUP BY status",
        [RECORD],
    ).fetchall()
    return dict(rows)


def executions(hog: Hog) -> int:
    return hog.value("SELECT count(*) FROM testapp_execution WHERE key LIKE 'k%'")


def untouched(hog: Hog) -> bool:
    """Nothing ran, nothing ended: every task is still READY (or claimed, RUNNING)."""
    counts = statuses(hog)
    return executions(hog) == 0 and counts.get("READY", 0) + counts.get("RUNNING", 0) == TOTAL


def wait_until_all_ran(hog: Hog, released_at: float) -> tuple[float, float]:
    """Seconds after the release until the first task ran and until every task succeeded."""
    first: list[float] = []

    def all_succeeded():
        if not first and executions(hog):
            first.append(time.monotonic() - released_at)
        counts = statuses(hog)
        if counts.get("FAILED"):
            error = hog.value(
                "SELECT errors::text FROM django_tasks_q_task WHERE status = 'FAILED' LIMIT 1"
            )
            pytest.fail(f"{counts['FAILED']} tasks FAILED; one's errors: {error}")
        return counts == {"SUCCESSFUL": TOTAL}

    wait_for(all_succeeded, timeout=40, interval=0.1, message="every task to succeed")
    return first[0] if first else 0.0, time.monotonic() - released_at


def assert_each_ran_once(hog: Hog) -> None:
    distinct = hog.value("SELECT count(DISTINCT key) FROM testapp_execution WHERE key LIKE 'k%'")
    assert distinct == TOTAL  # none lost
    assert executions(hog) == TOTAL  # none ran twice
    assert statuses(hog) == {"SUCCESSFUL": TOTAL}


def listening(hog: Hog, who: str) -> int:
    """Connections of ``who`` ('listener' for workers, 'beat') that are open now."""
    return hog.value(
        "SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE %s",
        [f"django_tasks_q {who} %"],
    )


def make_due(hog: Hog) -> None:
    """The parked tasks are due now (the server is full: the test's monitor does it)."""
    hog.monitor.execute(
        "UPDATE django_tasks_q_task SET run_after = now() WHERE name = %s", [RECORD]
    )


def start_worker(processes):
    return processes("worker", "runtaskworker", "--concurrency", "2", "--poll-interval", "0.2")


def backed_off_to(process, seconds: float):
    """Until ``process`` logged a refusal it retries after ``seconds`` (or it exited)."""
    return lambda: seconds in retry_delays(refusals(process.log())) or not process.alive()


def report(title, timings, **logs):
    """What the test saw (pytest -s shows it)."""
    print(f"\n[{title}] {timings}")
    for name, lines in logs.items():
        print(f"  {name}:", *(f"    {line}" for line in lines), sep="\n")


@pytest.mark.parametrize("small_postgres", [ORDINARY], indirect=True)
def test_a_worker_started_on_a_full_server_waits_then_runs_every_task_once(
    small_postgres, hog, processes
):
    url = small_postgres.url
    prepare(url)
    hog.take_everything()
    exhausted_at = time.monotonic()

    worker = start_worker(processes)
    # Retried after 0.5, 1 and 2 s: 3.5 s on a full server at least, 4 s to the next try.
    wait_for(backed_off_to(worker, 4.0), timeout=30, interval=0.1,
             message="the worker to back off to 4 s")  # fmt: skip
    assert worker.alive(), f"the worker exited on a full server:\n{worker.log()}"
    assert untouched(hog)
    assert hog.others() == []  # the worker got no connection in
    exhausted_log = worker.log()

    hog.release()
    released_at = time.monotonic()
    first, done = wait_until_all_ran(hog, released_at)
    assert worker.stop() == 0, worker.log()
    assert_each_ran_once(hog)
    lines = assert_waits_politely("the worker", exhausted_log, released_at - exhausted_at)
    report("worker started on a full server",
           f"first task {first:.2f}s, all {TOTAL} {done:.2f}s after the release", worker=lines)  # fmt: skip


@pytest.mark.parametrize("small_postgres", [ORDINARY], indirect=True)
def test_beat_started_on_a_full_server_waits_then_syncs_and_listens(small_postgres, hog, processes):
    url = small_postgres.url
    assert run_manage(url, "migrate", "-v0").wait(timeout=120) == 0
    hog.take_everything()
    exhausted_at = time.monotonic()

    beat = processes("beat", "runtaskbeat")
    wait_for(backed_off_to(beat, 2.0), timeout=30, interval=0.1,
             message="the beat to back off to 2 s")  # fmt: skip
    assert beat.alive(), f"the beat exited on a full server:\n{beat.log()}"
    assert hog.value("SELECT count(*) FROM django_tasks_q_schedule") == 0
    exhausted_log = beat.log()

    hog.release()
    released_at = time.monotonic()
    # Back by itself: it synced the schedules declared in code, and listens for changes.
    wait_for(lambda: hog.value("SELECT count(*) FROM django_tasks_q_schedule WHERE task = 'testapp.new_year'"),
             timeout=40, interval=0.1, message="the beat to sync its schedules")  # fmt: skip
    wait_for(lambda: listening(hog, "beat"), timeout=40, interval=0.1,
             message="the beat to listen again")  # fmt: skip
    back = time.monotonic() - released_at
    assert beat.stop() == 0, beat.log()
    lines = assert_waits_politely("the beat", exhausted_log, released_at - exhausted_at)
    report("beat started on a full server", f"back {back:.2f}s after the release",
           beat=lines)  # fmt: skip


def test_a_running_worker_and_beat_cut_off_on_a_full_server_wait_then_run_every_task_once(
    small_postgres, hog, processes
):
    url = small_postgres.url
    prepare(url, parked=True)
    worker = start_worker(processes)
    beat = processes("beat", "runtaskbeat")
    # Warm-up tasks give the pool's children Django connections of their own, cut off too.
    warm_up = (
        "from tests.testapp.tasks import record_attempt as t; "
        "t.enqueue_many([('w1',), ('w2',), ('w3',), ('w4',)])"
    )
    assert run_manage(url, "shell", "-c", warm_up).wait(timeout=60) == 0
    wait_for(lambda: hog.value("SELECT count(*) FROM testapp_execution WHERE key LIKE 'w%'") == 4,
             timeout=30, interval=0.1, message="the warm-up tasks")  # fmt: skip
    wait_for(lambda: listening(hog, "listener") and listening(hog, "beat"), timeout=30,
             interval=0.1, message="the worker and the beat to listen")  # fmt: skip
    connected = len(hog.others())

    hog.take_everything()  # their connections are terminated, the slots they had taken
    exhausted_at = time.monotonic()
    # Due now, while the worker cannot reach the server.
    make_due(hog)
    wait_for(backed_off_to(worker, 4.0), timeout=30, interval=0.1,
             message="the worker to back off to 4 s")  # fmt: skip
    wait_for(backed_off_to(beat, 2.0), timeout=30, interval=0.1,
             message="the beat to back off to 2 s")  # fmt: skip
    assert worker.alive(), f"the worker exited on a full server:\n{worker.log()}"
    assert beat.alive(), f"the beat exited on a full server:\n{beat.log()}"
    assert untouched(hog)
    assert hog.others() == []
    exhausted_log, beat_exhausted_log = worker.log(), beat.log()

    hog.release()
    released_at = time.monotonic()
    first, done = wait_until_all_ran(hog, released_at)
    wait_for(lambda: listening(hog, "beat"), timeout=40, interval=0.1,
             message="the beat to listen again")  # fmt: skip
    beat_back = time.monotonic() - released_at
    assert worker.stop() == 0, worker.log()
    assert beat.stop() == 0, beat.log()
    assert_each_ran_once(hog)
    exhausted_for = released_at - exhausted_at
    worker_lines = assert_waits_politely("the worker", exhausted_log, exhausted_for)
    beat_lines = assert_waits_politely("the beat", beat_exhausted_log, exhausted_for)
    lost = [line for line in worker.log().splitlines() if line.startswith("Task lost")]
    report("worker and beat cut off on a full server",
           f"{connected} connections cut; first task {first:.2f}s, all {TOTAL} {done:.2f}s, "
           f"beat {beat_back:.2f}s after the release; {len(lost)} attempts lost after it",
           worker=worker_lines, beat=beat_lines, lost=lost)  # fmt: skip


def test_tasks_wait_for_a_slot_when_only_the_worker_itself_is_connected(
    small_postgres, hog, processes
):
    url = small_postgres.url
    prepare(url, parked=True)
    worker = start_worker(processes)
    wait_for(lambda: listening(hog, "listener"), timeout=30, interval=0.1,
             message="the worker to listen")  # fmt: skip
    hog.fill()  # the worker keeps its connections; its children have none yet and get none
    exhausted_at = time.monotonic()
    make_due(hog)
    wait_for(lambda: refusals(worker.log()) or not worker.alive(), timeout=30, interval=0.1,
             message="the worker to say the server refused a connection")  # fmt: skip
    # Longer than the lost-attempt delays (1 s, 2 s) that end a task FAILED: still waiting.
    deadline = time.monotonic() + 8
    while time.monotonic() < deadline:
        assert worker.alive(), f"the worker exited on a full server:\n{worker.log()}"
        assert untouched(hog), f"tasks ran or ended on a full server: {statuses(hog)}"
        time.sleep(0.2)
    exhausted_log = worker.log()

    hog.release()
    released_at = time.monotonic()
    first, done = wait_until_all_ran(hog, released_at)
    assert worker.stop() == 0, worker.log()
    assert_each_ran_once(hog)
    spent = hog.monitor.execute(
        "SELECT max(attempts), max(lost_attempts), max(jsonb_array_length(errors))"
        " FROM django_tasks_q_task WHERE name = %s",
        [RECORD],
    ).fetchone()
    assert spent == (1, 0, 0), f"waiting for a connection spent attempts: {spent}"
    # Each child says so once per 10 s, not once per task given back.
    lines = refusals(exhausted_log)
    assert lines and all("without spending an attempt" in line for line in lines), exhausted_log
    bound = 2 * (1 + (released_at - exhausted_at) / 10) + 2
    assert len(lines) <= bound, f"{len(lines)} lines (bound {bound:.0f}):\n{exhausted_log}"
    report("tasks wait for a slot",
           f"first task {first:.2f}s, all {TOTAL} {done:.2f}s after the release", worker=lines)  # fmt: skip
