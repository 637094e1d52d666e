from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import quote

import pytest
from django.db import connection, transaction

ROOT = Path(__file__).resolve().parent.parent


def wait_for(predicate: Callable[[], object], timeout: float = 15.0, interval: float = 0.02,
              message: str = "condition") -> object:  # fmt: skip
    """Poll ``predicate`` until it returns something truthy; fail the test after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {message}")
        time.sleep(interval)


def database_url_for_subprocess() -> str:
    params = connection.settings_dict
    host = quote(params["HOST"] or "", safe="")
    password = f":{quote(params['PASSWORD'])}" if params.get("PASSWORD") else ""
    return f"postgres://{params['USER']}{password}@{host}:{params['PORT'] or 5432}/{params['NAME']}"


class WorkerProcess:
    def __init__(self, process: subprocess.Popen, log_path: Path) -> None:
        self.process = process
        self.log_path = log_path

    @property
    def pid(self) -> int:
        return self.process.pid

    def log(self) -> str:
        return self.log_path.read_text()

    def terminate(self) -> None:
        self.process.send_signal(signal.SIGTERM)

    def wait(self, timeout: float = 30) -> int:
        try:
            return self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            pytest.fail(f"worker {self.pid} did not exit within {timeout}s; log:\n{self.log()}")


def _management_processes(tmp_path: Path, command: str) -> Iterator[Callable[..., WorkerProcess]]:
    """Start real ``manage.py <command>`` processes against the test database; kill the ones
    still running when the test ends."""
    started: list[WorkerProcess] = []

    def start(*args: str, env: dict[str, str] | None = None) -> WorkerProcess:
        log_path = tmp_path / f"{command}-{len(started)}.log"
        environment = {
            **os.environ,
            "DJANGO_SETTINGS_MODULE": "tests.settings",
            "DATABASE_URL": database_url_for_subprocess(),
            "PYTHONUNBUFFERED": "1",
            **(env or {}),
        }
        with log_path.open("w") as log_file:
            process = subprocess.Popen(
                [sys.executable, str(ROOT / "manage.py"), command, *args],
                cwd=ROOT,
                env=environment,
                stdout=log_file,
                stderr=subprocess.STDOUT,
            )
        started.append(WorkerProcess(process, log_path))
        return started[-1]

    yield start
    for process in started:
        if process.process.poll() is None:
            process.process.kill()
            process.process.wait(timeout=10)


@pytest.fixture
def start_worker(tmp_path: Path) -> Iterator[Callable[..., WorkerProcess]]:
    """Start real ``manage.py runtaskworker`` processes against the test database."""
    yield from _management_processes(tmp_path, "runtaskworker")


@pytest.fixture
def start_beat(tmp_path: Path) -> Iterator[Callable[..., WorkerProcess]]:
    """Start real ``manage.py runtaskbeat`` processes against the test database."""
    yield from _management_processes(tmp_path, "runtaskbeat")


def run_burst_worker(**options):
    """Run an in-process worker until no ready task is left; returns it for inspection."""
    from django_tasks_q.backend import get_backend
    from django_tasks_q.worker import Worker

    defaults = {"concurrency": 2, "listen": False, "poll_interval": 0.05, "burst": True}
    worker = Worker(backend=get_backend(), **{**defaults, **options})
    assert worker.run() == 0
    return worker


@pytest.fixture
def worker_in_thread():
    """Start in-process workers on threads of the test (thread pool); stopped at the end."""
    from django_tasks_q.backend import get_backend
    from django_tasks_q.worker import Worker

    started = []

    def start(**options):
        worker = Worker(backend=get_backend(), **{"concurrency": 2, "poll_interval": 0.05,
                                                   **options})  # fmt: skip
        thread = threading.Thread(target=worker.run, daemon=True)
        thread.start()
        started.append((worker, thread))
        return worker

    yield start
    for worker, thread in started:
        worker.stop()
        thread.join(timeout=30)


@contextlib.contextmanager
def transaction_in_another_session(work):
    """Run ``work`` in a transaction of another thread's connection, and keep that transaction
    open until the block ends; then commit it."""
    opened, release = threading.Event(), threading.Event()

    def hold():
        with transaction.atomic():
            work()
            opened.set()
            release.wait(30)
        connection.close()

    holder = threading.Thread(target=hold)
    holder.start()
    try:
        assert opened.wait(10)
        yield
    finally:
        release.set()
        holder.join(timeout=30)


CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]  # fmt: skip


@pytest.fixture(scope="module")
def chromium():
    """Debian's Chromium driven by Playwright; never a downloaded browser.

    Module-scoped: Playwright's sync API keeps an event loop running in this thread while it
    is started, which async_to_sync() and asyncio.run() in other test modules refuse.
    """
    import shutil

    path = os.environ.get("CHROMIUM") or shutil.which("chromium")
    if not path:
        pytest.skip("no chromium: apt-get install chromium, or set CHROMIUM=/path/to/chromium")
    from playwright.sync_api import sync_playwright

    # Playwright's sync API runs an event loop in this thread; the ORM calls the tests make
    # between browser steps are still plain synchronous calls.
    previous = os.environ.get("DJANGO_ALLOW_ASYNC_UNSAFE")
    os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=path, args=CHROMIUM_ARGS)
            yield browser
            browser.close()
    finally:
        if previous is None:
            os.environ.pop("DJANGO_ALLOW_ASYNC_UNSAFE", None)
        else:
            os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = previous


@pytest.fixture
def admin_page(chromium, live_server, django_user_model):
    """A browser page logged into the admin as a superuser, through the login form."""
    django_user_model.objects.create_superuser("admin", "admin@example.com", "admin")
    context = chromium.new_context(viewport={"width": 1600, "height": 1000})
    page = context.new_page()
    page.set_default_timeout(15_000)
    page.goto(f"{live_server.url}/admin/login/")
    page.fill("#id_username", "admin")
    page.fill("#id_password", "admin")
    page.click("input[type=submit]")
    page.wait_for_url(f"{live_server.url}/admin/")
    yield page
    context.close()


def save_screenshot(page, tmp_path: Path, name: str, *, full_page: bool = False) -> Path:
    """Screenshot to the test's directory; also into docs/ with TASKS_Q_DOCS_SCREENSHOTS=1."""
    path = tmp_path / name
    page.screenshot(path=str(path), full_page=full_page)
    assert path.stat().st_size > 10_000, "the screenshot is (nearly) empty"
    if os.environ.get("TASKS_Q_DOCS_SCREENSHOTS") == "1":
        (ROOT / "docs" / name).write_bytes(path.read_bytes())
    return path
