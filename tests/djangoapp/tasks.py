"""Tasks written against Django's own API (django.tasks.task), run by this package's worker."""

import asyncio

import django

from django_tasks_q.compat import task
from tests.testapp.models import Execution


@task
def multiply(x, y):
    return x * y


@task(priority=10, queue_name="django-api")
def echo(value):
    return value


# Django 6.1 passes options it does not know to the backend's task class; 6.0 refuses them.
PASSTHROUGH = django.VERSION >= (6, 1)


@task(takes_context=True, **({"max_retries": 2, "default_retry_delay": 0} if PASSTHROUGH else {}))
def attempt_number(context, fail_until):
    Execution.objects.create(key=f"attempt-{context.task_result.id}", attempt=context.attempt)
    if context.attempt < fail_until:
        raise RuntimeError(f"attempt {context.attempt} fails")
    return {"attempt": context.attempt, "id": context.task_result.id}


@task
def record_order(key):
    Execution.objects.create(key=key)


@task
def breaks(message):
    raise ValueError(message)


@task
async def async_double(x):
    await asyncio.sleep(0)
    return 2 * x
