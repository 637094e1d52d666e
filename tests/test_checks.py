"""Bad settings are reported as system checks with stable ids."""

import pytest
from django.core import checks
from django.test import override_settings

from django_tasks_q.compat import FRAMEWORK

SCHEDULE = {"name": "nightly", "task": "tests.testapp.tasks.add", "cron": "0 3 * * *"}


def ids(**settings):
    with override_settings(**settings):
        return sorted({m.id for m in checks.run_checks() if m.id.startswith("django_tasks_q")})


def test_default_settings_pass():
    assert ids() == []


def test_finished_tasks_may_be_kept_for_good():
    assert ids(TASKS_Q={"KEEP_SUCCESSFUL": None, "KEEP_FAILED": None}) == []


def test_unknown_key_suggests_the_close_one():
    with override_settings(TASKS_Q={"POLL_INTERVALL": 1}):
        [message] = [m for m in checks.run_checks() if m.id == "django_tasks_q.E002"]
    assert "'POLL_INTERVALL'" in message.msg and "POLL_INTERVAL" in message.hint


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("not a dict", ["django_tasks_q.E001"]),
        ({"POLL_INTERVAL": 0}, ["django_tasks_q.E003"]),
        ({"LEASE_SECONDS": "60"}, ["django_tasks_q.E003"]),
        ({"CONCURRENCY": 0}, ["django_tasks_q.E004"]),
        ({"BATCH_SIZE": 2.5}, ["django_tasks_q.E004"]),
        ({"PREFETCH": -1}, ["django_tasks_q.E005"]),
        ({"LISTEN_NOTIFY": "yes"}, ["django_tasks_q.E006"]),
        ({"DATABASE": "missing"}, ["django_tasks_q.E007"]),
        ({"HEARTBEAT_INTERVAL": 30, "LEASE_SECONDS": 60}, ["django_tasks_q.E010"]),
        ({"HEARTBEAT_INTERVAL": 0}, ["django_tasks_q.E003"]),
        ({"GRACE_PERIOD": -1}, ["django_tasks_q.E011"]),
        ({"KEEP_SUCCESSFUL": 0}, ["django_tasks_q.E017"]),
        ({"KEEP_FAILED": "30 days"}, ["django_tasks_q.E017"]),
        ({"MAX_LOST_ATTEMPTS": 0}, ["django_tasks_q.E018"]),
        ({"MAX_LOST_ATTEMPTS": 2.5}, ["django_tasks_q.E018"]),
        ({"UNKNOWN_TASK_GRACE": -1}, ["django_tasks_q.E019"]),
        ({"BEAT_MISSED_AFTER": 0}, ["django_tasks_q.E003"]),
        ({"SCHEDULES": "every day"}, ["django_tasks_q.E012"]),
        ({"SCHEDULES": ["0 3 * * *"]}, ["django_tasks_q.E013"]),
        ({"SCHEDULES": [{"name": "a", "cron": "0 3 * * *"}]}, ["django_tasks_q.E013"]),
        ({"SCHEDULES": [{**SCHEDULE, "crom": "0 3 * * *"}]}, ["django_tasks_q.E013"]),
        ({"SCHEDULES": [SCHEDULE, {**SCHEDULE, "cron": "0 4 * * *"}]}, ["django_tasks_q.E014"]),
        ({"SCHEDULES": [{**SCHEDULE, "cron": "0 3 * *"}]}, ["django_tasks_q.E015"]),
        ({"SCHEDULES": [{**SCHEDULE, "timezone": "Paris"}]}, ["django_tasks_q.E015"]),
        ({"SCHEDULES": [{**SCHEDULE, "args": [object()]}]}, ["django_tasks_q.E015"]),
        ({"SCHEDULES": [{**SCHEDULE, "task": "app.tasks.nope"}]}, ["django_tasks_q.E016"]),
    ],
)
def test_bad_values_are_errors(value, expected):
    assert ids(TASKS_Q=value) == expected


def test_a_database_that_is_not_postgresql_is_an_error(settings):
    databases = {
        **settings.DATABASES,
        "other": {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"},
    }
    with pytest.warns(UserWarning, match="Overriding setting DATABASES"):
        found = ids(DATABASES=databases, TASKS_Q={"DATABASE": "other"})
    assert found == ["django_tasks_q.E008"]


def test_tasks_routed_to_a_non_postgres_backend_get_a_warning():
    immediate = {"default": {"BACKEND": f"{FRAMEWORK}.backends.immediate.ImmediateBackend"}}
    assert ids(TASKS=immediate) == ["django_tasks_q.W001"]


def test_configured_postgres_backend_passes():
    configured = {"default": {"BACKEND": "django_tasks_q.backend.PostgresBackend"}}
    assert ids(TASKS=configured) == []


def test_a_valid_schedule_declaration_passes():
    assert ids(TASKS_Q={"SCHEDULES": [SCHEDULE, {**SCHEDULE, "name": "other"}]}) == []


def test_a_bad_schedule_declaration_names_the_entry_and_the_fix():
    bad = {**SCHEDULE, "name": "other", "timezone": "Europe/Pariss"}
    with override_settings(TASKS_Q={"SCHEDULES": [SCHEDULE, bad]}):
        [message] = [m for m in checks.run_checks() if m.id == "django_tasks_q.E015"]
    assert message.msg.startswith("TASKS_Q['SCHEDULES'][1] ('other'):")
    assert "Did you mean 'Europe/Paris'?" in message.msg
