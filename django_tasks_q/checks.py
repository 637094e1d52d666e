"""System checks: every misconfiguration gets a stable id, what is wrong and how to fix it."""

from __future__ import annotations

import difflib
from typing import Any

from django.conf import settings
from django.core import checks

from django_tasks_q.conf import DEFAULTS, SETTING_NAME
from django_tasks_q.limits import check_queue_limits
from django_tasks_q.routing import check_routes

_POSITIVE_NUMBERS = ("POLL_INTERVAL", "LEASE_SECONDS", "HEARTBEAT_INTERVAL", "BEAT_MISSED_AFTER")
_POSITIVE_INTS = ("CONCURRENCY", "BATCH_SIZE", "FAIR_TURN")


def _error(msg: str, hint: str, id_: str) -> checks.Error:
    return checks.Error(msg, hint=hint, id=f"django_tasks_q.{id_}")


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


@checks.register(checks.Tags.compatibility)
def check_settings(app_configs=None, **kwargs) -> list[checks.CheckMessage]:
    value = getattr(settings, SETTING_NAME, {})
    if not isinstance(value, dict):
        return [
            _error(
                f"{SETTING_NAME} must be a dict, got {type(value).__name__}.",
                f"Set {SETTING_NAME} = {{}} or remove it.",
                "E001",
            )
        ]
    errors: list[checks.CheckMessage] = []
    for key in value:
        if key not in DEFAULTS:
            close = difflib.get_close_matches(key, list(DEFAULTS), n=1)
            hint = f"Did you mean {close[0]!r}?" if close else f"Valid keys: {', '.join(DEFAULTS)}."
            errors.append(_error(f"{SETTING_NAME} has an unknown key {key!r}.", hint, "E002"))
    for key in _POSITIVE_NUMBERS:
        if key in value and not (_is_number(value[key]) and value[key] > 0):
            errors.append(
                _error(
                    f"{SETTING_NAME}[{key!r}] must be a number > 0, got {value[key]!r}.",
                    f"For example {key!r}: {DEFAULTS[key]!r}.",
                    "E003",
                )
            )
    for key in _POSITIVE_INTS:
        if key in value and not (
            isinstance(value[key], int) and not isinstance(value[key], bool) and value[key] >= 1
        ):
            errors.append(
                _error(
                    f"{SETTING_NAME}[{key!r}] must be an int >= 1, got {value[key]!r}.",
                    f"For example {key!r}: {DEFAULTS[key]!r}.",
                    "E004",
                )
            )
    prefetch = value.get("PREFETCH")
    if prefetch is not None and not (
        isinstance(prefetch, int) and not isinstance(prefetch, bool) and prefetch >= 0
    ):
        errors.append(
            _error(
                f"{SETTING_NAME}['PREFETCH'] must be None or an int >= 0, got {prefetch!r}.",
                "None adapts to task durations; 0 claims only free slots.",
                "E005",
            )
        )
    grace = value.get("GRACE_PERIOD")
    if grace is not None and not (_is_number(grace) and grace >= 0):
        errors.append(
            _error(
                f"{SETTING_NAME}['GRACE_PERIOD'] must be None or a number of seconds >= 0, "
                f"got {grace!r}.",
                "None waits for running tasks however long they take.",
                "E011",
            )
        )
    for key in ("KEEP_SUCCESSFUL", "KEEP_FAILED"):
        keep = value.get(key)
        if keep is not None and not (_is_number(keep) and keep > 0):
            errors.append(
                _error(
                    f"{SETTING_NAME}[{key!r}] must be None or a number of seconds > 0, "
                    f"got {keep!r}.",
                    f"For example {key!r}: {DEFAULTS[key]} ({DEFAULTS[key] // 86400} days); "
                    "None keeps finished tasks for good.",
                    "E017",
                )
            )
    lost = value.get("MAX_LOST_ATTEMPTS", DEFAULTS["MAX_LOST_ATTEMPTS"])
    if not (isinstance(lost, int) and not isinstance(lost, bool) and lost >= 1):
        errors.append(
            _error(
                f"{SETTING_NAME}['MAX_LOST_ATTEMPTS'] must be a whole number >= 1, got {lost!r}.",
                "It is how many attempts of a task may be lost (its worker killed, the "
                "database gone) before the task is FAILED; the default is 3.",
                "E018",
            )
        )
    unknown_grace = value.get("UNKNOWN_TASK_GRACE", DEFAULTS["UNKNOWN_TASK_GRACE"])
    if not (_is_number(unknown_grace) and unknown_grace >= 0):
        errors.append(
            _error(
                f"{SETTING_NAME}['UNKNOWN_TASK_GRACE'] must be a number of seconds >= 0, "
                f"got {unknown_grace!r}.",
                "It is how long a task whose name a worker does not know waits for a worker "
                "that knows it before it is FAILED; the default is 600.",
                "E019",
            )
        )
    if "LISTEN_NOTIFY" in value and not isinstance(value["LISTEN_NOTIFY"], bool):
        errors.append(
            _error(
                f"{SETTING_NAME}['LISTEN_NOTIFY'] must be True or False.",
                "Use False behind PgBouncer in transaction pooling mode.",
                "E006",
            )
        )
    lease = value.get("LEASE_SECONDS", DEFAULTS["LEASE_SECONDS"])
    beat = value.get("HEARTBEAT_INTERVAL", DEFAULTS["HEARTBEAT_INTERVAL"])
    if _is_number(lease) and _is_number(beat) and lease > 0 and beat > 0 and beat * 3 > lease:
        errors.append(
            _error(
                f"{SETTING_NAME}['HEARTBEAT_INTERVAL'] ({beat}) must be at most a third of "
                f"LEASE_SECONDS ({lease}): a lease must survive a missed heartbeat or two.",
                "Lower HEARTBEAT_INTERVAL or raise LEASE_SECONDS.",
                "E010",
            )
        )
    if "QUEUE_LIMITS" in value:
        errors.extend(
            _error(
                problem,
                "For example {'emails': {'concurrency': 5, 'rate_limit': '100/m'}}; see "
                "docs/flow-control.md.",
                "E020",
            )
            for problem in check_queue_limits(value["QUEUE_LIMITS"])
        )
    if "ROUTES" in value:
        errors.extend(
            _error(
                problem,
                "For example {'billing.tasks.*': 'billing', 'app.tasks.report': "
                "{'queue': 'reports', 'priority': -10}}; see docs/settings.md.",
                "E021",
            )
            for problem in check_routes(value["ROUTES"])
        )
    alias = value.get("DATABASE", DEFAULTS["DATABASE"])
    if alias not in settings.DATABASES:
        errors.append(
            _error(
                f"{SETTING_NAME}['DATABASE'] is {alias!r}, which is not in DATABASES.",
                f"Use one of: {', '.join(settings.DATABASES)}.",
                "E007",
            )
        )
    elif "postgresql" not in settings.DATABASES[alias].get("ENGINE", ""):
        errors.append(
            _error(
                f"DATABASES[{alias!r}] uses {settings.DATABASES[alias].get('ENGINE')!r}; "
                "django_tasks_q needs PostgreSQL.",
                "Set ENGINE to 'django.db.backends.postgresql' or point TASKS_Q['DATABASE'] at a "
                "PostgreSQL database.",
                "E008",
            )
        )
    return errors


@checks.register(checks.Tags.compatibility)
def check_task_backends(app_configs=None, **kwargs) -> list[checks.CheckMessage]:
    """Warn when a @background_task would go to a backend that ignores its options."""
    from django_tasks_q import registry

    if not settings.is_overridden("TASKS"):
        return []
    from django_tasks_q.backend import PostgresBackend
    from django_tasks_q.compat import task_backends

    messages: list[checks.CheckMessage] = []
    for alias in sorted({task.backend for task in registry.all_tasks().values()}):
        try:
            backend = task_backends[alias]
        except Exception as exc:
            messages.append(
                _error(
                    f"Tasks use the TASKS alias {alias!r}, which cannot be loaded: {exc}",
                    "Add it to TASKS with BACKEND 'django_tasks_q.backend.PostgresBackend'.",
                    "E009",
                )
            )
            continue
        if not isinstance(backend, PostgresBackend):
            messages.append(
                checks.Warning(
                    f"@background_task tasks use TASKS[{alias!r}], which is "
                    f"{type(backend).__name__}: retries, timeouts and the worker do not apply.",
                    hint="Set its BACKEND to 'django_tasks_q.backend.PostgresBackend' (fine to "
                    "ignore in tests that run tasks immediately on purpose).",
                    id="django_tasks_q.W001",
                )
            )
    return messages


@checks.register(checks.Tags.compatibility)
def check_schedules(app_configs=None, **kwargs) -> list[checks.CheckMessage]:
    """Schedules declared in code (TASKS_Q["SCHEDULES"], @background_task(schedule=...)) are
    checked as the admin would check them, without the database."""
    from django.core.exceptions import ValidationError

    from django_tasks_q.declarations import DeclarationError, declared_entries
    from django_tasks_q.models import Schedule

    value = getattr(settings, SETTING_NAME, {})
    if not isinstance(value, dict):
        return []  # E001
    listed = value.get("SCHEDULES", ())
    errors: list[checks.CheckMessage] = []
    if not isinstance(listed, (list, tuple)):
        errors.append(
            _error(
                f"{SETTING_NAME}['SCHEDULES'] must be a list of dicts, got "
                f"{type(listed).__name__}.",
                "For example [{'name': 'nightly', 'task': 'app.tasks.report', "
                "'cron': '0 3 * * *'}].",
                "E012",
            )
        )
    seen: set[str] = set()
    for entry in declared_entries():
        try:
            fields = entry.read()
        except DeclarationError as exc:
            errors.append(_error(str(exc), "See the keys of a schedule in the docs.", "E013"))
            continue
        if fields["name"] in seen:
            errors.append(
                _error(
                    f"{entry.where}: another schedule declared in code is named "
                    f"{fields['name']!r}.",
                    "Give each schedule a name of its own.",
                    "E014",
                )
            )
        seen.add(fields["name"])
        row = Schedule(**{key: fields[key] for key in ("name", *Schedule.CODE_FIELDS)})
        try:
            row.full_clean(validate_unique=False, validate_constraints=False)
        except ValidationError as exc:
            for field, messages in exc.message_dict.items():
                for message in messages:
                    errors.append(
                        _error(
                            f"{entry.where} ({fields['name']!r}): {message}",
                            "Fix the declaration; beat leaves it out of the schedule table.",
                            "E016" if field == "task" else "E015",
                        )
                    )
    return errors
