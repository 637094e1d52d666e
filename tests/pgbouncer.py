"""A real PgBouncer (Debian's ``pgbouncer`` package) in transaction pooling mode, in front of
the test database, started by the tests that need it.

PgBouncer refuses to run as root; as root it runs as the owner of the database's socket
directory (who can reach the socket), or as ``nobody`` for a server reached over TCP. Its files
live in a directory of their own under /tmp that this user can read."""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg

BINARY_PATHS = ("/usr/sbin/pgbouncer", "/usr/bin/pgbouncer")


def find_pgbouncer() -> str | None:
    found = shutil.which("pgbouncer")
    return found or next((path for path in BINARY_PATHS if os.path.exists(path)), None)


@dataclass
class Bouncer:
    port: int
    log_path: Path

    def url(self, dbname: str, user: str) -> str:
        return f"postgres://{user}@127.0.0.1:{self.port}/{dbname}"

    def log(self) -> str:
        return self.log_path.read_text()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def pgbouncer(binary: str, *, host: str, port: int, user: str) -> Iterator[Bouncer]:
    """PgBouncer in transaction mode for the server at ``host`` (a socket directory or an
    address) and ``port``, trusting ``user`` as the server does."""
    directory = Path(tempfile.mkdtemp(prefix="tasksq-pgbouncer-"))
    directory.chmod(0o755)
    listen_port = _free_port()
    config = directory / "pgbouncer.ini"
    config.write_text(
        "[databases]\n"
        f"* = host={host} port={port}\n"
        "[pgbouncer]\n"
        f"listen_addr = 127.0.0.1\nlisten_port = {listen_port}\nunix_socket_dir =\n"
        f"auth_type = trust\nauth_file = {directory / 'users.txt'}\n"
        "pool_mode = transaction\nmax_client_conn = 500\ndefault_pool_size = 20\n"
        "ignore_startup_parameters = extra_float_digits\n"
    )
    (directory / "users.txt").write_text(f'"{user}" ""\n')
    for path in directory.iterdir():
        path.chmod(0o644)
    log_path = directory / "pgbouncer.log"
    command = [binary, str(config)]
    if os.geteuid() == 0:
        owner = pwd.getpwuid(os.stat(host).st_uid).pw_name if host.startswith("/") else "nobody"
        command = ["runuser", "-u", owner, "--", *command]
    with log_path.open("w") as log_file:
        process = subprocess.Popen(command, stdout=log_file, stderr=subprocess.STDOUT)
    bouncer = Bouncer(listen_port, log_path)
    try:
        deadline = time.monotonic() + 15
        while True:
            try:
                psycopg.connect(bouncer.url("postgres", user), connect_timeout=2).close()
                break
            except psycopg.OperationalError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"PgBouncer did not start:\n{bouncer.log()}") from None
                time.sleep(0.05)
        yield bouncer
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
        shutil.rmtree(directory, ignore_errors=True)
