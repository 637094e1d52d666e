import logging
import signal
import threading

from django.core.management.base import BaseCommand, CommandError
from django.db import OperationalError

from django_tasks_q.beat import Beat
from django_tasks_q.management.tables import tables_required
from django_tasks_q.models import Schedule
from django_tasks_q.worker.logs import configure_logging

logger = logging.getLogger("django_tasks_q.beat")


class Command(BaseCommand):
    help = (
        "Enqueue the tasks of due schedules until stopped with SIGTERM or Ctrl-C. Several may "
        "run at once: each tick is enqueued exactly once."
    )

    def add_arguments(self, parser):
        parser.add_argument(
            "--database",
            default=None,
            help="Database alias of the schedule table (default: TASKS_Q['DATABASE']).",
        )
        parser.add_argument(
            "--poll-interval",
            type=float,
            default=None,
            help="Without LISTEN/NOTIFY: seconds between looks at the schedule table "
            "(default: TASKS_Q['POLL_INTERVAL']).",
        )
        parser.add_argument(
            "--no-sync",
            action="store_true",
            help="Do not sync the schedules declared in code into the table at start.",
        )
        parser.add_argument(
            "--loglevel",
            default=None,
            choices=["debug", "info", "warning", "error"],
            help="Log level of the django_tasks_q loggers (default: from LOGGING, else info).",
        )

    def handle(self, *args, **options):
        configure_logging(options["loglevel"])
        try:
            beat = Beat(
                using=options["database"],
                poll_interval=options["poll_interval"],
                sync=not options["no_sync"],
            )
        except ValueError as exc:
            raise CommandError(str(exc)) from exc
        try:
            with tables_required():
                Schedule.objects.using(beat.using).exists()
        except OperationalError as exc:
            # Not fatal: beat waits for the database like it does when it goes away later.
            logger.warning("Beat cannot reach the database yet: %s", exc)
        stop = threading.Event()

        def on_signal(signum, frame):
            logger.info("Beat %s got %s: stopping", beat.name, signal.Signals(signum).name)
            stop.set()

        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)
        beat.run(stop)
