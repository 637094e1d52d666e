"""The worker's queue connection prepares its statements only on a session of PostgreSQL
itself: through anything that relays the connection (a pooler in transaction mode hands each
transaction another server session), a prepared statement could be missing or another one.
The real PgBouncer's case is in test_pgbouncer.py."""

from pathlib import Path

import psycopg
import pytest
from django.db import connection

from django_tasks_q.direct import reaches_postgres_directly
from django_tasks_q.queue import QueueConnection
from tests.relay import relay

pytestmark = pytest.mark.django_db(transaction=True)


def server() -> tuple[str, int]:
    params = connection.settings_dict
    return params["HOST"] or "127.0.0.1", int(params["PORT"] or 5432)


def connect(host: str, port: int) -> psycopg.Connection:
    params = connection.settings_dict
    return psycopg.connect(
        host=host, port=port, dbname=params["NAME"], user=params["USER"], autocommit=True
    )


def prepared_statements(queue_connection: QueueConnection) -> list[str]:
    rows = queue_connection.connect().execute("SELECT statement FROM pg_prepared_statements")
    return [statement for (statement,) in rows]


def test_a_session_of_the_server_itself_is_direct():
    with connect(*server()) as session:
        assert reaches_postgres_directly(session)


def test_a_session_through_a_tcp_relay_is_not_direct():
    with relay(*server()) as (host, port), connect(host, port) as session:
        assert session.execute("SELECT 1").fetchone() == (1,)  # the relay works
        assert not reaches_postgres_directly(session)


def test_a_session_through_a_unix_socket_relay_is_not_direct(tmp_path: Path):
    with (
        relay(*server(), socket_dir=tmp_path) as (host, port),
        connect(host, port) as session,
    ):
        assert session.execute("SELECT 1").fetchone() == (1,)
        assert not reaches_postgres_directly(session)


def test_the_queue_connection_prepares_its_claim_on_a_direct_session():
    queue_connection = QueueConnection("default")
    try:
        for _ in range(6):  # psycopg prepares a statement at its fifth execution
            queue_connection.claim(
                worker_id="prepared", queues=["nothing-here"], limit=1, lease_seconds=60
            )
        assert any("SKIP LOCKED" in statement for statement in prepared_statements(
            queue_connection))  # fmt: skip
        # Each call still gets a plan for its own values, as it did unprepared.
        plan_cache_mode = queue_connection.connect().execute("SHOW plan_cache_mode").fetchone()
        assert plan_cache_mode == ("force_custom_plan",)
    finally:
        queue_connection.close()


def test_a_prepare_threshold_in_the_database_options_decides_instead():
    options = connection.settings_dict.setdefault("OPTIONS", {})
    options["prepare_threshold"] = None
    queue_connection = QueueConnection("default")
    try:
        for _ in range(6):
            queue_connection.claim(
                worker_id="unprepared", queues=["nothing-here"], limit=1, lease_seconds=60
            )
        assert prepared_statements(queue_connection) == []
    finally:
        queue_connection.close()
        del options["prepare_threshold"]


def test_a_prepared_claim_still_works_after_a_migration_changes_a_column_it_returns():
    queue_connection = QueueConnection("default")
    try:
        for _ in range(6):
            queue_connection.claim(
                worker_id="migrated", queues=["nothing-here"], limit=1, lease_seconds=60
            )
        assert prepared_statements(queue_connection)
        with connection.cursor() as cursor:
            cursor.execute("ALTER TABLE django_tasks_q_task ALTER COLUMN priority TYPE integer")
        try:
            # Without forgetting the prepared statement: "cached plan must not change result
            # type", at every claim until the worker restarted.
            for _ in range(2):
                assert (
                    queue_connection.claim(
                        worker_id="migrated", queues=["nothing-here"], limit=1, lease_seconds=60
                    )
                    == []
                )
        finally:
            with connection.cursor() as cursor:
                cursor.execute(
                    "ALTER TABLE django_tasks_q_task ALTER COLUMN priority TYPE smallint"
                )
    finally:
        queue_connection.close()
