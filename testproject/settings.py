"""Settings for the demo site and the test suite.

The database comes from ``DATABASE_URL``; without it an embedded PostgreSQL inside the
repository is started (see ``testproject/embedded_db.py``).
"""

from pathlib import Path
from urllib.parse import unquote

import django
import environ

BASE_DIR = Path(__file__).resolve().parent
env = environ.Env()

DEBUG = env.bool("DJANGO_DEBUG", default=True)
SECRET_KEY = env.str("DJANGO_SECRET_KEY", default="demo-only-not-a-secret")
ALLOWED_HOSTS = ["127.0.0.1", "localhost", "testserver"]

if "DATABASE_URL" not in env:
    from testproject.embedded_db import database_url

    env.ENVIRON["DATABASE_URL"] = database_url()

DATABASES = {"default": env.db_url("DATABASE_URL")}
# A socket directory travels percent-encoded in the URL's host part.
DATABASES["default"]["HOST"] = unquote(DATABASES["default"]["HOST"])
# Workers are long-lived: keep their connections open instead of one per task.
DATABASES["default"]["CONN_MAX_AGE"] = None
DATABASES["default"]["CONN_HEALTH_CHECKS"] = True
DATABASES["default"].setdefault("TEST", {})["NAME"] = env.str("TEST_DATABASE_NAME", default=None)

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django_tasks_q",
    "testproject.demo",
]
if django.VERSION < (6, 0):
    # Django 5.2 gets the Tasks framework from the django-tasks backport.
    INSTALLED_APPS.insert(INSTALLED_APPS.index("django_tasks_q"), "django_tasks")

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "testproject.urls"
WSGI_APPLICATION = "testproject.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

USE_TZ = True
TIME_ZONE = "UTC"
STATIC_URL = "static/"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

TASKS_Q = {
    "LISTEN_NOTIFY": env.bool("TASKS_Q_LISTEN_NOTIFY", default=True),
    # The fault-injection tests shorten these to see recovery within seconds.
    "LEASE_SECONDS": env.float("TASKS_Q_LEASE_SECONDS", default=60.0),
    "HEARTBEAT_INTERVAL": env.float("TASKS_Q_HEARTBEAT_INTERVAL", default=5.0),
    # The pruning test keeps finished tasks for seconds instead of days.
    "KEEP_SUCCESSFUL": env.float("TASKS_Q_KEEP_SUCCESSFUL", default=7 * 24 * 3600),
    "KEEP_FAILED": env.float("TASKS_Q_KEEP_FAILED", default=30 * 24 * 3600),
    # The deploy-skew tests let unknown task names fail after seconds.
    "UNKNOWN_TASK_GRACE": env.float("TASKS_Q_UNKNOWN_TASK_GRACE", default=600.0),
    # The demo's beat enqueues this; the schedule shows up in the admin, owned by code.
    "SCHEDULES": [
        {
            "name": "demo: roll the dice every 10 seconds",
            "task": "testproject.demo.tasks.roll_dice",
            "interval": 10,
        },
    ],
}

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "loggers": {
        "django_tasks_q": {"handlers": ["console"], "level": env.str("TASKS_Q_LOG_LEVEL", "INFO")},
        # django_tasks_q logs each task itself; Django's own per-task lines would repeat them.
        "django.tasks": {"level": "WARNING"},
        "django_tasks": {"level": "WARNING"},
    },
}
