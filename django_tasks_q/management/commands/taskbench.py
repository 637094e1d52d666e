import json

from django.core.management.base import BaseCommand, CommandError

from django_tasks_q.bench.benchmark import run
from django_tasks_q.bench.options import DEFAULT_PRESSURE_LOAD, BenchError, BenchOptions
from django_tasks_q.bench.report import summary
from django_tasks_q.conf import settings as conf
from django_tasks_q.management.tables import tables_required


class Command(BaseCommand):
    help = (
        "Benchmark the task queue on this database: enqueue rates, drain rate of real worker "
        "processes, enqueue-to-start latency, worker memory and the raw SQL ceiling. Uses a "
        "queue of its own and deletes its rows afterwards."
    )

    def add_arguments(self, parser):
        defaults = BenchOptions()
        parser.add_argument(
            "--tasks", type=int, default=defaults.tasks,
            help=f"Tasks to enqueue in bulk and drain (default: {defaults.tasks}).",
        )  # fmt: skip
        parser.add_argument(
            "--workers", type=int, default=None,
            help="Worker processes to start (default: the number of CPUs).",
        )  # fmt: skip
        parser.add_argument(
            "--concurrency", type=int, default=None,
            help="Child processes (or threads, with --pool threads) per worker "
            f"(default: TASKS_Q['CONCURRENCY'] = {conf.CONCURRENCY}).",
        )  # fmt: skip
        parser.add_argument(
            "--batch-size", type=int, default=None,
            help=f"Tasks claimed at once (default: TASKS_Q['BATCH_SIZE'] = {conf.BATCH_SIZE}).",
        )  # fmt: skip
        parser.add_argument(
            "--queue", default=defaults.queue,
            help=f"Queue to benchmark on; no application may use it (default: {defaults.queue}).",
        )  # fmt: skip
        parser.add_argument(
            "--latency-samples", type=int, default=defaults.latency_samples,
            help="Tasks timed one at a time on idle workers, 0 to skip "
            f"(default: {defaults.latency_samples}).",
        )  # fmt: skip
        parser.add_argument(
            "--io-task-ms", type=float, default=defaults.io_task_ms,
            help="How long each task of the I/O-bound phase waits, in milliseconds "
            f"(default: {defaults.io_task_ms:g}).",
        )  # fmt: skip
        parser.add_argument(
            "--io-tasks-per-slot", type=int, default=defaults.io_tasks_per_slot,
            help="Tasks of the I/O-bound phase per slot (workers x concurrency), 0 to skip "
            f"(default: {defaults.io_tasks_per_slot}).",
        )  # fmt: skip
        parser.add_argument(
            "--chord-size", type=int, default=defaults.chord_size,
            help="Header tasks of the chord phase, 0 to skip "
            f"(default: {defaults.chord_size}).",
        )  # fmt: skip
        parser.add_argument(
            "--limited-tasks", type=int, default=defaults.limited_tasks,
            help="Tasks of the limited phase (at most one running per key), 0 to skip "
            f"(default: {defaults.limited_tasks}).",
        )  # fmt: skip
        parser.add_argument(
            "--limited-keys", type=int, default=defaults.limited_keys,
            help="Keys the limited phase spreads its tasks over "
            f"(default: {defaults.limited_keys}).",
        )  # fmt: skip
        parser.add_argument(
            "--pressure", type=float, default=defaults.pressure_seconds, metavar="SECONDS",
            help="Offer a steady load for this many seconds and report each window "
            "(default: 0, skipped).",
        )  # fmt: skip
        parser.add_argument(
            "--pressure-rate", type=float, default=None, metavar="TASKS_PER_S",
            help="Tasks per second of the steady load (default: see --pressure-load).",
        )  # fmt: skip
        parser.add_argument(
            "--pressure-load", type=float, default=None, metavar="FRACTION",
            help="Tasks per second of the steady load as a fraction of the drain rate measured "
            "before, e.g. 1.5 to overload the workers; not with --pressure-rate "
            f"(default: {DEFAULT_PRESSURE_LOAD:g}).",
        )  # fmt: skip
        parser.add_argument(
            "--pressure-window", type=float, default=defaults.pressure_window,
            metavar="SECONDS",
            help=f"Seconds per reported window (default: {defaults.pressure_window:g}).",
        )  # fmt: skip
        parser.add_argument(
            "--hold-xmin", action="store_true",
            help="Hold a transaction open during the steady load (BEGIN; SELECT "
            "txid_current()), as a long report or an idle session does.",
        )  # fmt: skip
        parser.add_argument(
            "--readers", type=int, default=defaults.readers, metavar="N",
            help="Sessions that scan the task table in REPEATABLE READ transactions, one "
            "after another, during the steady load, as reports do (default: 0).",
        )  # fmt: skip
        parser.add_argument(
            "--exhaust-connections", type=float, default=defaults.exhaust_connections,
            metavar="SECONDS",
            help="From the middle of the steady load, take every free connection of the "
            "server and end the workers' connections, for this many seconds. Only on a "
            "server you may disturb (default: 0).",
        )  # fmt: skip
        parser.add_argument(
            "--enqueue-threads", type=int, default=defaults.enqueue_threads,
            help="Threads enqueueing one by one at once, as web processes would "
            f"(default: {defaults.enqueue_threads}).",
        )  # fmt: skip
        parser.add_argument(
            "--pool", choices=["processes", "threads"], default=defaults.pool,
            help="The workers' --pool (default: processes, as runtaskworker).",
        )  # fmt: skip
        parser.add_argument(
            "--skip-ceiling", action="store_true",
            help="Do not measure the raw SQL claim/finish ceiling.",
        )  # fmt: skip
        parser.add_argument(
            "--keep",
            action="store_true",
            help="Keep the benchmark's rows instead of deleting them.",
        )
        parser.add_argument(
            "--json", action="store_true",
            help="Print the results as one JSON object; progress goes to stderr.",
        )  # fmt: skip

    def handle(self, *args, **options):
        bench_options = BenchOptions(
            tasks=options["tasks"],
            workers=options["workers"],
            concurrency=options["concurrency"],
            batch_size=options["batch_size"],
            queue=options["queue"],
            latency_samples=options["latency_samples"],
            io_task_ms=options["io_task_ms"],
            io_tasks_per_slot=options["io_tasks_per_slot"],
            chord_size=options["chord_size"],
            limited_tasks=options["limited_tasks"],
            limited_keys=options["limited_keys"],
            pressure_seconds=options["pressure"],
            pressure_rate=options["pressure_rate"],
            pressure_load=options["pressure_load"],
            pressure_window=options["pressure_window"],
            hold_xmin=options["hold_xmin"],
            readers=options["readers"],
            exhaust_connections=options["exhaust_connections"],
            enqueue_threads=options["enqueue_threads"],
            pool=options["pool"],
            skip_ceiling=options["skip_ceiling"],
            keep=options["keep"],
        )
        if options["json"]:
            # stdout carries only the JSON, so that CI can parse it.
            def report(line: str) -> None:
                self.stderr.write(line, style_func=lambda text: text)
        else:
            report = self.stdout.write
        try:
            with tables_required():
                results = run(bench_options, report)
        except BenchError as exc:
            raise CommandError(str(exc)) from None
        except KeyboardInterrupt:
            raise CommandError(
                "Interrupted; no benchmark worker is left running.", returncode=130
            ) from None
        if options["json"]:
            self.stdout.write(json.dumps(results.as_json()))
        else:
            self.stdout.write(summary(results))
