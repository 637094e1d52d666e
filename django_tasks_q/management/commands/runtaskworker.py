import sys

from django.core.management.base import BaseCommand, CommandError

from django_tasks_q.backend import get_backend
from django_tasks_q.conf import settings as conf
from django_tasks_q.management.tables import tables_required
from django_tasks_q.worker import Worker, WorkerOptions
from django_tasks_q.worker.logs import configure_logging


def queue_list(value: str) -> list[str]:
    queues = [name.strip() for name in value.split(",") if name.strip()]
    if not queues:
        raise ValueError("empty queue list")
    return queues


def _option(options: dict, name: str, default):
    return default if options[name] is None else options[name]


def worker_options(options: dict) -> WorkerOptions:
    """The worker's options from the command's arguments, the settings filling the gaps."""
    return WorkerOptions(
        queues=options["queues"],
        concurrency=_option(options, "concurrency", conf.CONCURRENCY),
        threads=options["threads"],
        batch_size=_option(options, "batch_size", conf.BATCH_SIZE),
        prefetch=_option(options, "prefetch", conf.PREFETCH),
        poll_interval=_option(options, "poll_interval", conf.POLL_INTERVAL),
        lease_seconds=conf.LEASE_SECONDS,
        heartbeat_interval=conf.HEARTBEAT_INTERVAL,
        grace_period=_option(options, "grace_period", conf.GRACE_PERIOD),
        keep_successful=conf.KEEP_SUCCESSFUL,
        keep_failed=conf.KEEP_FAILED,
        pool=options["pool"],
        max_tasks_per_child=options["max_tasks_per_child"],
        max_memory_per_child=options["max_memory_per_child"],
        listen=conf.LISTEN_NOTIFY,
        burst=options["burst"],
        name=options["worker_id"] or "",
        health_file=options["health_file"],
    )


class Command(BaseCommand):
    help = "Run tasks from the PostgreSQL queue until stopped with SIGTERM or Ctrl-C."

    def add_arguments(self, parser):
        parser.add_argument(
            "--queues",
            type=queue_list,
            default=None,
            help="Comma-separated queues to take tasks from (default: all).",
        )
        parser.add_argument(
            "--concurrency",
            type=int,
            default=None,
            help="Child processes (--pool processes) or threads (--pool threads) running "
            "tasks at once (default: TASKS_Q['CONCURRENCY']).",
        )
        parser.add_argument(
            "--threads",
            type=int,
            default=1,
            help="With --pool processes: threads in each child, for I/O-bound tasks. The worker "
            "runs --concurrency x --threads tasks at once (default: 1).",
        )
        parser.add_argument(
            "--batch-size",
            type=int,
            default=None,
            help="Most tasks claimed in one statement (default: TASKS_Q['BATCH_SIZE']).",
        )
        parser.add_argument(
            "--prefetch",
            type=int,
            default=None,
            help="Tasks claimed beyond --concurrency so threads never wait for the database. "
            "Default (TASKS_Q['PREFETCH'] = None): adapts to task durations, up to --batch-size.",
        )
        parser.add_argument(
            "--poll-interval",
            type=float,
            default=None,
            help="Seconds between polls when no notification arrives "
            "(default: TASKS_Q['POLL_INTERVAL']).",
        )
        parser.add_argument(
            "--grace-period",
            type=float,
            default=None,
            help="Seconds running tasks get to finish after SIGTERM/Ctrl-C before the worker "
            "exits anyway (their tasks are then recovered). Default: TASKS_Q['GRACE_PERIOD'] "
            "(None: wait for them).",
        )
        parser.add_argument(
            "--pool",
            choices=["processes", "threads"],
            default="processes",
            help="Run tasks in child processes (default): a task's timeout is a hard limit, "
            "and a task that crashes its process does not take the worker with it. Or on "
            "threads of the worker process: fastest for short tasks, but timeouts cannot be "
            "enforced.",
        )
        parser.add_argument(
            "--max-tasks-per-child",
            type=int,
            default=None,
            help="With --pool processes: replace a child after this many tasks.",
        )
        parser.add_argument(
            "--max-memory-per-child",
            type=float,
            default=None,
            help="With --pool processes: replace a child whose peak memory passed this many MB "
            "(checked between tasks).",
        )
        parser.add_argument(
            "--beat",
            action="store_true",
            help="Also run the beat in this worker: enqueue the tasks of due schedules, as "
            "`runtaskbeat` does. Any number of workers may do so; each tick is enqueued once.",
        )
        parser.add_argument(
            "--metrics-port",
            type=int,
            default=None,
            help="Serve Prometheus metrics on this port (needs the prometheus extra).",
        )
        parser.add_argument(
            "--metrics-address",
            default="0.0.0.0",  # noqa: S104 - a metrics port is meant to be scraped
            help="Address the metrics port listens on (default: 0.0.0.0, every IPv4 interface).",
        )
        parser.add_argument("--burst", action="store_true", help="Exit once no ready task is left.")
        parser.add_argument(
            "--worker-id",
            default=None,
            help="This worker's name (default: hostname-pid). Each start adds a suffix of its "
            "own to make the worker id; a start under the name of an earlier process recovers "
            "at once the tasks that process was running.",
        )
        parser.add_argument(
            "--backend", default="default", help="TASKS alias of the Postgres backend to serve."
        )
        parser.add_argument(
            "--health-file",
            default=None,
            metavar="PATH",
            help="Touch this file while the worker's loop turns, for a liveness probe "
            "(`manage.py tasks health --file PATH`); removed when the worker stops.",
        )
        parser.add_argument(
            "--loglevel",
            default=None,
            choices=["debug", "info", "warning", "error"],
            help="Log level of the django_tasks_q loggers (default: from LOGGING, else info).",
        )

    @staticmethod
    def _serve_metrics(port: int, address: str):
        from django.core.exceptions import ImproperlyConfigured

        from django_tasks_q import metrics

        try:
            metrics.serve(port, address)
        except ImproperlyConfigured as exc:
            raise CommandError(str(exc)) from exc
        except OSError as exc:
            raise CommandError(f"Cannot serve metrics on port {port}: {exc}") from exc
        return metrics.WorkerMetrics()

    @staticmethod
    def _beat(backend, name: str | None):
        from django_tasks_q.beat import Beat

        return Beat(using=backend.database, name=name)

    def handle(self, *args, **options):
        configure_logging(options["loglevel"])
        metrics = None
        if options["metrics_port"] is not None:
            metrics = self._serve_metrics(options["metrics_port"], options["metrics_address"])
        try:
            backend = get_backend(options["backend"])
            worker = Worker(
                backend=backend,
                options=worker_options(options),
                services=[self._beat(backend, options["worker_id"]).run] if options["beat"] else [],
                metrics=metrics,
            )
        except ValueError as exc:
            raise CommandError(str(exc)) from exc
        worker.install_signal_handlers()
        with tables_required():
            code = worker.run()
        if code:
            sys.exit(code)
