"""Every command says to migrate, without a traceback, when the queue's tables or columns are
missing: a new install that skipped `migrate`, or an upgrade whose migrations did not run.
(runtaskworker and runtaskbeat: tests/test_worker_process.py, tests/test_beat_process.py.)"""

import io

import pytest
from django.core.management import CommandError, call_command
from django.db import connection

pytestmark = pytest.mark.django_db  # the renames roll back with the test's transaction


def hide(table: str, column: str | None = None) -> None:
    with connection.cursor() as cursor:
        if column:
            cursor.execute(f"ALTER TABLE {table} RENAME COLUMN {column} TO {column}_hidden")
        else:
            cursor.execute(f"ALTER TABLE {table} RENAME TO {table}_hidden")


@pytest.mark.parametrize(
    "arguments",
    [("tasks", "stats"), ("tasks", "list"), ("taskbench", "--tasks", "10")],
    ids=["tasks stats", "tasks list", "taskbench"],
)
def test_a_command_on_a_database_without_the_task_table_says_to_migrate(arguments):
    hide("django_tasks_q_task")
    with pytest.raises(CommandError) as raised:
        call_command(*arguments, stdout=io.StringIO(), stderr=io.StringIO())
    message = str(raised.value)
    assert 'relation "django_tasks_q_task" does not exist' in message
    assert "Run `python manage.py migrate`" in message


def test_a_command_on_a_database_missing_a_column_says_to_migrate():
    hide("django_tasks_q_task", "trace_context")
    with pytest.raises(CommandError, match=r"trace_context.*Run `python manage.py migrate`"):
        call_command("tasks", "list", stdout=io.StringIO(), stderr=io.StringIO())
