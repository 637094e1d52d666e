"""``manage.py tasks``: the queue from a shell.

Anyone who can run ``manage.py`` can use it (shell access is admin access): it does not check
Django permissions. It reads with the dashboard's statements (``django_tasks_q.stats``) and
changes tasks through the admin's actions (``django_tasks_q.actions``).
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db.models import F, Q, QuerySet
from django.db.models.functions import Now
from django.utils import timezone

from django_tasks_q import actions, pausing, stats
from django_tasks_q.conf import settings as conf
from django_tasks_q.durations import format_duration, parse_duration
from django_tasks_q.exceptions import InvalidTask
from django_tasks_q.management.tables import tables_required
from django_tasks_q.models import Task, TaskStatus, Worker, WorkerState, task_lookup
from django_tasks_q.queues import known_queues
from django_tasks_q.worker import health_file

STATUSES = [status.value for status in TaskStatus]


class Command(BaseCommand):
    help = (
        "Look at and steer the task queue: list, show, retry, cancel, purge, stats, workers, "
        "pause, resume, paused."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        commands = parser.add_subparsers(dest="subcommand", required=True, metavar="COMMAND")

        listing = self._sub(commands, "list", "List tasks, newest first.")
        _add_filters(listing)
        listing.add_argument("--limit", type=int, default=50, help="At most this many (50).")

        show = self._sub(commands, "show", "One task: arguments, result, every error.")
        show.add_argument("id", help="The task's id, or the id chosen with task_id=.")

        retry = self._sub(
            commands, "retry", "Run failed or cancelled tasks again now, by id or by filter."
        )
        retry.add_argument("ids", nargs="*", metavar="ID")
        _add_filters(retry, statuses=False)
        _add_yes(retry)

        cancel = self._sub(
            commands,
            "cancel",
            "Cancel waiting or ready tasks, and ask running ones to stop, by id or by filter.",
        )
        cancel.add_argument("ids", nargs="*", metavar="ID")
        _add_filters(cancel, statuses=False)
        cancel.add_argument(
            "--terminate",
            action="store_true",
            help="Kill a running task's process if it does not stop (process pool).",
        )
        _add_yes(cancel)

        purge = self._sub(
            commands,
            "purge",
            "Cancel every task of a queue that has not started (ready, scheduled, waiting).",
        )
        purge.add_argument("--queue", required=True, help="The queue to purge.")
        purge.add_argument("--task", help="Only tasks of this registered name.")
        _add_yes(purge)

        health = self._sub(
            commands,
            "health",
            "Exit 0 if this host's worker is alive, 1 if not: from its --health-file "
            "(liveness, no database), or from its heartbeat in the database (readiness).",
        )
        health.add_argument("--file", metavar="PATH", help="The worker's --health-file.")
        health.add_argument(
            "--ready",
            action="store_true",
            help="With --file: also require every slot to be ready (the process pool's "
            "children started), for a startup probe.",
        )
        health.add_argument(
            "--worker-id",
            metavar="NAME",
            help="The worker's --worker-id (default: any on this host).",
        )
        health.add_argument(
            "--max-age",
            type=float,
            default=None,
            metavar="SECONDS",
            help="Oldest acceptable touch or heartbeat (default: 60 for a file, "
            "LEASE_SECONDS for a heartbeat).",
        )
        self._sub(commands, "stats", "Per queue: ready, scheduled, running, finished last hour.")
        self._sub(commands, "workers", "Workers: alive, stale or lost, and what each runs.")

        for name, text in (
            ("pause", "Pause a queue or a task name for every worker: tasks wait until resumed."),
            ("resume", "Resume a paused queue or task name: its waiting tasks run again."),
        ):
            sub = commands.add_parser(name, help=text, description=text)
            target = sub.add_mutually_exclusive_group(required=True)
            target.add_argument("--queue", help="The queue's name.")
            target.add_argument("--task", help="The task's registered name.")
            if name == "pause":
                sub.add_argument("--reason", default="", help="Shown in the admin and here.")
        self._sub(commands, "paused", "List what is paused.")

    @staticmethod
    def _sub(commands: Any, name: str, text: str) -> CommandParser:
        sub = commands.add_parser(name, help=text, description=text)
        sub.add_argument("--json", action="store_true", help="JSON for scripts.")
        return sub

    def handle(self, *args: object, **options: Any) -> None:
        subcommand = options["subcommand"]
        self.as_json = bool(options.get("json"))
        try:
            with tables_required():
                getattr(self, f"_{subcommand}")(options)
        except (InvalidTask, ValueError) as exc:
            raise CommandError(str(exc)) from None

    # -- reading ---------------------------------------------------------------------------

    def _list(self, options: dict[str, Any]) -> None:
        if options["limit"] < 1:
            raise CommandError("--limit must be 1 or more.")
        rows = list(_filtered(options).order_by("-id")[: options["limit"]])
        if self.as_json:
            self._json([_summary(row) for row in rows])
            return
        if not rows:
            self.stdout.write("No tasks match.")
            return
        now = timezone.now()
        self._table(
            ["ID", "TASK", "QUEUE", "STATUS", "ATTEMPTS", "ENQUEUED", "FINISHED"],
            [
                [
                    str(row.pk), row.name, row.queue, row.status,
                    f"{row.attempts}/{row.max_attempts}",
                    _ago(row.enqueued_at, now), _ago(row.finished_at, now),
                ]
                for row in rows
            ],
        )  # fmt: skip

    def _show(self, options: dict[str, Any]) -> None:
        row = _find(options["id"])
        if self.as_json:
            self._json(_details(row))
            return
        details = _details(row)
        errors = details.pop("errors")
        for key in ("args", "kwargs", "result"):
            details[key] = json.dumps(details[key], default=str)
        width = max(len(key) for key in details)
        for key, value in details.items():
            if value not in (None, "", []):
                self.stdout.write(f"{key:<{width}}  {value}")
        for error in errors:
            self.stdout.write("")
            self.stdout.write(
                f"Attempt {error.get('attempt')} on {error.get('worker_id') or '?'} at "
                f"{error.get('at')}: {error.get('type')}: {error.get('message')}"
            )
            traceback = (error.get("traceback") or "").rstrip()
            if traceback:
                self.stdout.write(traceback)

    def _stats(self, options: dict[str, Any]) -> None:
        using = conf.DATABASE
        backlog = {row.queue: row for row in stats.queue_backlog(using)}
        finished = {row.queue: row for row in stats.queue_finished(using, 3600)}
        names = sorted(set(backlog) | set(finished) | known_queues(using))
        rows = []
        for name in names:
            now_ = backlog.get(name) or stats.QueueBacklog(name, 0, 0, 0, None, 0)
            done = finished.get(name) or stats.QueueFinished(name, 0, 0)
            rows.append({
                "queue": name, "ready": now_.ready, "scheduled": now_.scheduled,
                "running": now_.running, "waiting": now_.waiting,
                "oldest_ready_age_seconds": now_.oldest_ready_age,
                "succeeded_last_hour": done.succeeded, "failed_last_hour": done.failed,
            })  # fmt: skip
        if self.as_json:
            self._json(rows)
            return
        self._table(
            ["QUEUE", "READY", "SCHEDULED", "RUNNING", "WAITING", "OLDEST READY",
             "SUCCEEDED 1H", "FAILED 1H"],
            [
                [row["queue"], row["ready"], row["scheduled"], row["running"], row["waiting"],
                 format_duration(row["oldest_ready_age_seconds"]) if row["ready"] else "—",
                 row["succeeded_last_hour"], row["failed_last_hour"]]
                for row in rows
            ],
        )  # fmt: skip

    def _workers(self, options: dict[str, Any]) -> None:
        stale_after = 2 * conf.HEARTBEAT_INTERVAL
        found, counts = stats.workers(
            conf.DATABASE, lease=conf.LEASE_SECONDS, stale_after=stale_after, limit=1000
        )
        rows = [
            {
                "id": worker.id, "hostname": worker.hostname, "pid": worker.pid,
                "state": _worker_state(worker.heartbeat_age, stale_after),
                "queues": worker.queues, "concurrency": worker.concurrency,
                "started_at": worker.started_at.isoformat(),
                "heartbeat_age_seconds": worker.heartbeat_age,
                "running": worker.running,
                "running_tasks": dict(worker.running_names),
                "succeeded": worker.tasks_succeeded, "failed": worker.tasks_failed,
            }
            for worker in found
        ]  # fmt: skip
        if self.as_json:
            self._json(rows)
            return
        if not rows:
            self.stdout.write("No worker is running.")
            return
        self._table(
            ["WORKER", "HOST", "PID", "STATE", "HEARTBEAT", "QUEUES", "RUNNING"],
            [
                [row["id"], row["hostname"], row["pid"], row["state"],
                 f"{format_duration(row['heartbeat_age_seconds'])} ago",
                 ",".join(row["queues"]) or "*",
                 ", ".join(f"{name} x{n}" for name, n in row["running_tasks"].items()) or "—"]
                for row in rows
            ],
        )  # fmt: skip
        lost = sum(row["state"] == "lost" for row in rows)
        self.stdout.write(
            f"{counts.total} running: {counts.total - counts.stale} alive, "
            f"{counts.stale - lost} stale, {lost} lost (no heartbeat for over "
            f"{format_duration(conf.LEASE_SECONDS)}: their tasks are recovered)."
        )

    def _health(self, options: dict[str, Any]) -> None:
        if options["file"]:
            if options["worker_id"]:
                raise CommandError("--worker-id is for the heartbeat check, not with --file.")
            healthy, detail = _file_health(
                options["file"], options["max_age"] or 60.0, need_ready=options["ready"]
            )
        else:
            if options["ready"]:
                raise CommandError("--ready goes with --file.")
            healthy, detail = _heartbeat_health(
                options["worker_id"], options["max_age"] or conf.LEASE_SECONDS
            )
        if self.as_json:
            self._json({"healthy": healthy, "detail": detail})
        else:
            self.stdout.write(f"{'ok' if healthy else 'unhealthy'}: {detail}")
        if not healthy:
            sys.exit(1)

    # -- changing --------------------------------------------------------------------------

    def _retry(self, options: dict[str, Any]) -> None:
        ids = self._chosen(options, "retry", [TaskStatus.FAILED, TaskStatus.CANCELLED])
        done = actions.retry(ids, using=conf.DATABASE)
        if self.as_json:
            self._json({"retried": done.retried, "conflicts": [
                {"task": name, "id": task_id, "unique_key": key}
                for name, task_id, key in done.conflicts
            ]})  # fmt: skip
            return
        self.stdout.write(f"{len(done.retried)} task(s) will run again now.")
        left = len(ids) - len(done.retried) - len(done.conflicts)
        if left:
            self.stdout.write(f"{left} left alone: only failed or cancelled tasks are retried.")
        for name, task_id, key in done.conflicts:
            self.stdout.write(
                f"Not retried: {name} #{task_id}, another task with unique key {key!r} is "
                "waiting or running."
            )

    def _cancel(self, options: dict[str, Any]) -> None:
        ids = self._chosen(
            options, "cancel", [TaskStatus.WAITING, TaskStatus.READY, TaskStatus.RUNNING]
        )
        done = actions.cancel(ids, using=conf.DATABASE, terminate=options["terminate"])
        if self.as_json:
            self._json({"cancelled": done.cancelled, "asked_to_stop": done.asked_to_stop})
            return
        self.stdout.write(f"{len(done.cancelled)} task(s) cancelled.")
        if done.asked_to_stop:
            self.stdout.write(
                f"{len(done.asked_to_stop)} running task(s) asked to stop; they end cancelled "
                "when they do."
            )
        if left := len(ids) - done.changed:
            self.stdout.write(f"{left} left alone: they had finished.")

    def _purge(self, options: dict[str, Any]) -> None:
        queue_name, task_name = options["queue"], options["task"]
        waiting = actions.purgeable(queue_name, task_name=task_name, using=conf.DATABASE)
        what = f"queue {options['queue']}" + (
            f", task {options['task']}" if options["task"] else ""
        )
        self._confirm(options, f"Cancel the {waiting.count()} task(s) of {what} not started yet?")
        purged = actions.purge(queue_name, task_name=task_name, using=conf.DATABASE)
        if self.as_json:
            self._json({"cancelled": purged})
        else:
            self.stdout.write(f"{purged} task(s) of {what} cancelled.")

    def _pause(self, options: dict[str, Any]) -> None:
        queue_name, task = options["queue"], options["task"]
        target = f"queue {queue_name}" if queue_name else f"task {task}"
        done = pausing.pause(queue_name, task=task, reason=str(options["reason"]))
        self.stdout.write(
            f"Paused {target}; {done.tasks} waiting task(s) held."
            if done.changed
            else f"{target.capitalize()} was already paused; {done.tasks} more held."
        )

    def _resume(self, options: dict[str, Any]) -> None:
        queue_name, task = options["queue"], options["task"]
        target = f"queue {queue_name}" if queue_name else f"task {task}"
        done = pausing.resume(queue_name, task=task)
        self.stdout.write(
            f"Resumed {target}; {done.tasks} task(s) ready again."
            if done.changed
            else f"{target.capitalize()} was not paused."
        )

    def _paused(self, options: dict[str, Any]) -> None:
        items = pausing.paused()
        if self.as_json:
            self._json([
                {"queue": item.queue, "task": item.task_name, "since": item.since.isoformat(),
                 "reason": item.reason}
                for item in items
            ])  # fmt: skip
            return
        if not items:
            self.stdout.write("Nothing is paused.")
            return
        for item in items:
            reason = f"  ({item.reason})" if item.reason else ""
            self.stdout.write(f"{item!s:<40} since {item.since:%Y-%m-%d %H:%M:%S %Z}{reason}")

    # -- helpers ---------------------------------------------------------------------------

    def _chosen(self, options: dict[str, Any], verb: str, statuses: list[str]) -> list[int]:
        """The ids a retry or cancel acts on: those given, or every task the filters match
        (with a confirmation, since a filter can match many)."""
        filters = [options[name] for name in ("queue", "task", "older_than", "newer_than")]
        if options["ids"]:
            if any(filters):
                raise CommandError(f"Give task ids or filters to {verb}, not both.")
            return [_find(task_id).pk for task_id in options["ids"]]
        if not any(filters):
            raise CommandError(
                f"Name the tasks to {verb}: their ids, or filters (--queue, --task, "
                "--older-than, --newer-than)."
            )
        ids = list(
            _filtered({**options, "status": statuses}).order_by("id").values_list("id", flat=True)
        )
        self._confirm(options, f"{verb.capitalize()} {len(ids)} task(s)?")
        return ids

    def _confirm(self, options: dict[str, Any], question: str) -> None:
        if options["yes"]:
            return
        if not sys.stdin.isatty():
            raise CommandError(f"{question} Pass --yes to confirm (no terminal to ask on).")
        if input(f"{question} [y/N] ").strip().lower() not in ("y", "yes"):
            raise CommandError("Nothing changed.")

    def _json(self, value: Any) -> None:
        self.stdout.write(json.dumps(value, indent=2, default=str))

    def _table(self, header: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
        cells = [[str(cell) for cell in row] for row in [header, *rows]]
        widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
        for row in cells:
            self.stdout.write(
                "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
            )


def _add_filters(parser: CommandParser, *, statuses: bool = True) -> None:
    if statuses:
        parser.add_argument(
            "--status",
            action="append",
            type=str.upper,
            choices=STATUSES,
            help="Only tasks in this status (repeat for several).",
        )
    parser.add_argument("--queue", help="Only tasks of this queue.")
    parser.add_argument(
        "--task", help="Only tasks of this registered name (a trailing * matches a prefix)."
    )
    parser.add_argument(
        "--older-than", metavar="AGE", help="Only tasks enqueued longer ago than this (2h, 3d)."
    )
    parser.add_argument(
        "--newer-than", metavar="AGE", help="Only tasks enqueued within this (15m, 1d)."
    )


def _add_yes(parser: CommandParser) -> None:
    parser.add_argument("--yes", action="store_true", help="Do not ask for confirmation.")


def _filtered(options: dict[str, Any]) -> QuerySet[Task]:
    tasks = Task.objects.using(conf.DATABASE)
    if options.get("status"):
        tasks = tasks.filter(status__in=options["status"])
    if options.get("queue"):
        tasks = tasks.filter(queue=options["queue"])
    if name := options.get("task"):
        tasks = tasks.filter(Q(name__startswith=name[:-1]) if name.endswith("*") else Q(name=name))
    if options.get("older_than"):
        tasks = tasks.filter(enqueued_at__lt=Now() - parse_duration(options["older_than"]))
    if options.get("newer_than"):
        tasks = tasks.filter(enqueued_at__gte=Now() - parse_duration(options["newer_than"]))
    return tasks


def _find(task_id: str) -> Task:
    """A task by its database id or the id its caller chose."""
    try:
        return Task.objects.using(conf.DATABASE).get(**task_lookup(task_id))
    except (ValueError, Task.DoesNotExist):
        raise CommandError(f"No task with id {task_id!r}.") from None


def _summary(row: Task) -> dict[str, Any]:
    return {
        "id": row.pk, "task": row.name, "queue": row.queue, "status": row.status,
        "priority": row.priority, "attempts": row.attempts, "max_attempts": row.max_attempts,
        "enqueued_at": row.enqueued_at, "run_after": row.run_after,
        "started_at": row.started_at, "finished_at": row.finished_at,
        "worker": row.worker_id or None, "chosen_id": row.chosen_id,
    }  # fmt: skip


def _details(row: Task) -> dict[str, Any]:
    return {
        **_summary(row),
        "last_attempted_at": row.last_attempted_at, "lost_attempts": row.lost_attempts,
        "timeout": row.timeout, "expires_at": row.expires_at, "unique_key": row.unique_key,
        "held_by": row.held_by, "workflow": row.workflow_id,
        "cancel_requested_at": row.cancel_requested_at,
        "args": row.args, "kwargs": row.kwargs, "result": row.result, "errors": row.errors,
    }  # fmt: skip


def _ago(moment: datetime | None, now: datetime) -> str:
    return "—" if moment is None else f"{format_duration((now - moment).total_seconds())} ago"


def _file_health(path: str, max_age: float, *, need_ready: bool = False) -> tuple[bool, str]:
    try:
        age = time.time() - os.stat(path).st_mtime
        ready = health_file.says_ready(path) if need_ready else True
    except FileNotFoundError:
        return False, f"{path} does not exist: the worker is not running, or not with --health-file"
    if age > max_age:
        return False, f"{path} was last touched {age:.0f}s ago (more than {max_age:.0f}s)"
    if not ready:
        return False, f"{path} touched {age:.1f}s ago, but the worker's slots are not all ready yet"
    return True, f"{path} touched {age:.1f}s ago" + (", every slot ready" if need_ready else "")


def _heartbeat_health(name: str | None, max_age: float) -> tuple[bool, str]:
    host = socket.gethostname()
    workers = Worker.objects.using(conf.DATABASE).filter(state=WorkerState.RUNNING)
    workers = workers.filter(name=name) if name else workers.filter(hostname=host)
    who = f"worker {name!r}" if name else f"worker on {host}"
    # The age by the database's clock, which stamped the heartbeat: the probe's host may differ.
    newest = (
        workers.annotate(age=Now() - F("last_heartbeat_at"))
        .order_by("-last_heartbeat_at")
        .values_list("id", "age")
        .first()
    )
    if newest is None:
        return False, f"no running {who} is registered in the database"
    worker_id, since = newest
    age = since.total_seconds()
    if age > max_age:
        return False, f"{worker_id} last heartbeat {age:.0f}s ago (more than {max_age:.0f}s)"
    return True, f"{worker_id} heartbeat {age:.1f}s ago"


def _worker_state(heartbeat_age: float, stale_after: float) -> str:
    if heartbeat_age > conf.LEASE_SECONDS:
        return "lost"
    return "stale" if heartbeat_age > stale_after else "alive"
