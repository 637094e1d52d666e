"""Django 5.2 has no django.tasks: the package must still import there, with the backport."""

import django
from django.conf import settings

settings.configure(
    INSTALLED_APPS=["django_tasks", "django_tasks_q"],
    DATABASES={"default": {"ENGINE": "django.db.backends.postgresql", "NAME": "unused"}},
    USE_TZ=True,
)
django.setup()

from django_tasks_q import background_task  # noqa: E402
from django_tasks_q.backend import PostgresBackend  # noqa: E402


@background_task
def add(x: int, y: int) -> int:
    return x + y


assert add(2, 3) == 5
assert PostgresBackend.supports_defer
print(f"django_tasks_q imports on Django {django.get_version()}")
