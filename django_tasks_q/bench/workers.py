"""The benchmark's ``runtaskworker`` processes: start them, watch them, read their memory, and
make sure none outlives the run."""

from __future__ import annotations

import importlib.util
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from django.conf import settings

from django_tasks_q.bench.options import BenchError, BenchOptions
from django_tasks_q.worker import health_file

# Every worker id of one run starts with this, to tell its workers from any others.
WORKER_ID_PREFIX = f"taskbench-{uuid.uuid4().hex[:8]}-"
WORKER_STOP_TIMEOUT = 30.0
# Seconds for every slot to be ready: each child process of the pool sets Django up.
READY_TIMEOUT = 120.0
READY_POLL_INTERVAL = 0.05


@dataclass(slots=True)
class WorkerProcess:
    worker_id: str
    process: subprocess.Popen[bytes]
    log: IO[bytes]
    health_file: Path
    # time.monotonic() when its health file first said every slot was ready.
    ready_at: float | None = None

    def log_tail(self, limit: int = 2000) -> str:
        """The end of its output, without the line each task that succeeded logs."""
        self.log.flush()
        self.log.seek(0)
        text = self.log.read().decode(errors="replace")
        return "\n".join(line for line in text.splitlines() if worth_showing(line))[-limit:]

    @property
    def ready(self) -> bool:
        """Whether every slot of the worker is ready (its --health-file says so)."""
        try:
            return health_file.says_ready(self.health_file)
        except FileNotFoundError:
            return False


def worth_showing(line: str) -> bool:
    """Whether a line of a worker's output is about more than one task that went well."""
    return bool(line.strip()) and "Task succeeded " not in line


def worker_command(options: BenchOptions, worker_id: str, health_path: Path) -> list[str]:
    return [
        sys.executable, "-m", "django", "runtaskworker",
        *options.worker_arguments(),
        "--worker-id", worker_id,
        "--health-file", str(health_path),
    ]  # fmt: skip


def worker_environment() -> dict[str, str]:
    """This process's environment plus what a fresh interpreter needs to load the same settings
    (they may come from --settings / --pythonpath rather than the environment)."""
    module = settings.SETTINGS_MODULE
    if not module:
        raise BenchError("taskbench needs settings from a module (DJANGO_SETTINGS_MODULE).")
    env = dict(os.environ, DJANGO_SETTINGS_MODULE=module)
    env["PYTHONPATH"] = os.pathsep.join(
        path for path in (_import_root(module), os.environ.get("PYTHONPATH")) if path
    )
    return env


@contextmanager
def running_workers(options: BenchOptions) -> Iterator[list[WorkerProcess]]:
    """Start the worker processes; whatever happens inside, none outlives the block."""
    env = worker_environment()
    workers: list[WorkerProcess] = []
    health_files = tempfile.TemporaryDirectory(prefix="taskbench-")
    done = threading.Event()
    watcher = threading.Thread(target=_note_when_ready, args=(workers, done), daemon=True)
    try:
        for index in range(options.workers):
            worker_id = f"{WORKER_ID_PREFIX}{index}"
            log = tempfile.TemporaryFile(prefix="taskbench-worker-")  # noqa: SIM115 - closed below
            health_path = Path(health_files.name) / worker_id
            process = subprocess.Popen(
                worker_command(options, worker_id, health_path),
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                # A session of their own: a Ctrl-C in the terminal reaches only this process,
                # which then stops the workers with one SIGTERM each.
                start_new_session=True,
            )
            workers.append(WorkerProcess(worker_id, process, log, health_path))
        watcher.start()
        yield workers
    finally:
        done.set()
        with suppress(BenchError):
            stop_workers(workers)
        for worker in workers:
            worker.log.close()
        health_files.cleanup()


def wait_until_ready(workers: Sequence[WorkerProcess], started: float) -> float:
    """Wait until every slot of every worker is ready; returns the seconds from ``started``
    (a ``time.monotonic()`` taken before they were started) to when the last one was."""
    wait_for_workers(
        lambda: all(worker.ready_at is not None for worker in workers),
        workers,
        timeout=READY_TIMEOUT,
        interval=READY_POLL_INTERVAL,
        failure=lambda: (
            f"The workers' slots were not all ready {READY_TIMEOUT:.0f}s after they started."
        ),
    )
    return max(worker.ready_at or 0.0 for worker in workers) - started


def wait_for_workers(
    done: Callable[[], bool],
    workers: Sequence[WorkerProcess],
    *,
    timeout: float,
    interval: float,
    failure: Callable[[], str],
) -> None:
    """Poll ``done`` until it is true while checking that the workers live; after
    ``timeout`` seconds, raise ``failure()`` with the end of their output."""
    deadline = time.monotonic() + timeout
    while not done():
        check_alive(workers)
        if time.monotonic() > deadline:
            raise BenchError(f"{failure()}{worker_logs(workers)}")
        time.sleep(interval)


def _note_when_ready(workers: Sequence[WorkerProcess], done: threading.Event) -> None:
    """Note when each worker becomes ready, while the benchmark's main thread drains."""
    while not done.is_set():
        for worker in workers:
            if worker.ready_at is None and worker.ready:
                worker.ready_at = time.monotonic()
        if all(worker.ready_at is not None for worker in workers):
            return
        done.wait(READY_POLL_INTERVAL)


def stop_workers(workers: Sequence[WorkerProcess]) -> None:
    """SIGTERM every worker, wait, kill the ones still there. Raises if one exited non-zero."""
    for worker in workers:
        if worker.process.poll() is None:
            worker.process.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + WORKER_STOP_TIMEOUT
    killed = []
    for worker in workers:
        try:
            worker.process.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            worker.process.kill()
            worker.process.wait()
            killed.append(worker)
    if killed:
        raise BenchError(
            f"{len(killed)} worker(s) did not stop within {WORKER_STOP_TIMEOUT:.0f}s of SIGTERM "
            f"and were killed.{worker_logs(killed)}"
        )
    failed = [worker for worker in workers if worker.process.returncode != 0]
    if failed:
        codes = ", ".join(str(worker.process.returncode) for worker in failed)
        raise BenchError(f"Worker(s) exited with status {codes} instead of 0.{worker_logs(failed)}")


def check_alive(workers: Sequence[WorkerProcess]) -> None:
    """Raise, with their output, if any of the workers has exited."""
    dead = [worker for worker in workers if worker.process.poll() is not None]
    if dead:
        raise BenchError(
            f"{len(dead)} worker(s) exited during the benchmark "
            f"(status {', '.join(str(w.process.returncode) for w in dead)}).{worker_logs(dead)}"
        )


def worker_logs(workers: Sequence[WorkerProcess]) -> str:
    """The end of each worker's output, to append to an error message."""
    parts = [
        f"\n--- output of worker {worker.worker_id} (pid {worker.process.pid}) ---\n{tail}"
        for worker in workers
        if (tail := worker.log_tail().strip())
    ]
    return "".join(parts)


def peak_memory_mb(workers: Sequence[WorkerProcess]) -> float | None:
    """The largest peak resident set size of a worker, its child processes included (summed);
    None where /proc is missing."""
    peaks = []
    for worker in workers:
        pids = [worker.process.pid, *_child_pids(worker.process.pid)]
        total = 0.0
        for pid in pids:
            try:
                status = Path(f"/proc/{pid}/status").read_text()
            except OSError:
                if pid == worker.process.pid:
                    return None
                continue  # a child that ended meanwhile
            for line in status.splitlines():
                if line.startswith("VmHWM:"):
                    total += int(line.split()[1]) / 1024  # reported in kB
        peaks.append(total)
    return max(peaks) if peaks else None


@contextmanager
def signals_interrupt() -> Iterator[None]:
    """Make SIGTERM and SIGHUP unwind like Ctrl-C, so that the ``finally`` blocks stop the
    workers: they run in a session of their own and would otherwise outlive this process."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt(signal.Signals(signum).name)

    names = ("SIGTERM", "SIGHUP")
    signums = [getattr(signal, name) for name in names if hasattr(signal, name)]
    previous = {signum: signal.signal(signum, interrupt) for signum in signums}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            # None: the previous handler was not set from Python and cannot be put back.
            signal.signal(signum, signal.SIG_DFL if handler is None else handler)


def _child_pids(pid: int) -> list[int]:
    # Each thread lists the children it started: the first children come from the main
    # thread, replacements from the pool's dispatcher thread.
    children = []
    for listing in Path(f"/proc/{pid}/task").glob("*/children"):
        try:
            children.extend(int(child) for child in listing.read_text().split())
        except OSError:
            continue
    return children


def _import_root(module: str) -> str | None:
    """The sys.path entry from which ``module``'s top-level package was imported."""
    spec = importlib.util.find_spec(module.partition(".")[0])
    if spec is None:
        return None
    if spec.submodule_search_locations:
        return str(Path(next(iter(spec.submodule_search_locations))).parent)
    return str(Path(spec.origin).parent) if spec.origin else None
