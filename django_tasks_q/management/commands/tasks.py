"""``manage.py tasks``: the queue from a shell.

Anyone who can run ``manage.py`` can use it (shell access is admin access): it does not check
Django permissions.
"""

from __future__ import annotations

import json

from django.core.management.base import BaseCommand, CommandError, CommandParser

from django_tasks_q import pausing
from django_tasks_q.exceptions import InvalidTask


class Command(BaseCommand):
    help = "Look at and steer the task queue: pause, resume, paused."

    def add_arguments(self, parser: CommandParser) -> None:
        commands = parser.add_subparsers(dest="subcommand", required=True, metavar="COMMAND")
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
        listing = commands.add_parser("paused", help="List what is paused.")
        listing.add_argument("--json", action="store_true", help="JSON for scripts.")

    def handle(self, *args: object, **options: object) -> None:
        subcommand = options["subcommand"]
        try:
            if subcommand == "paused":
                self._list(as_json=bool(options["json"]))
                return
            queue_name, task = options["queue"], options["task"]
            target = f"queue {queue_name}" if queue_name else f"task {task}"
            if subcommand == "pause":
                done = pausing.pause(queue_name, task=task, reason=str(options["reason"]))
                self.stdout.write(
                    f"Paused {target}; {done.tasks} waiting task(s) held."
                    if done.changed
                    else f"{target.capitalize()} was already paused; {done.tasks} more held."
                )
            else:
                done = pausing.resume(queue_name, task=task)
                self.stdout.write(
                    f"Resumed {target}; {done.tasks} task(s) ready again."
                    if done.changed
                    else f"{target.capitalize()} was not paused."
                )
        except InvalidTask as exc:
            raise CommandError(str(exc)) from None

    def _list(self, *, as_json: bool) -> None:
        items = pausing.paused()
        if as_json:
            rows = [
                {"queue": item.queue, "task": item.task_name, "since": item.since.isoformat(),
                 "reason": item.reason}
                for item in items
            ]  # fmt: skip
            self.stdout.write(json.dumps(rows, indent=2))
            return
        if not items:
            self.stdout.write("Nothing is paused.")
            return
        for item in items:
            reason = f"  ({item.reason})" if item.reason else ""
            self.stdout.write(f"{item!s:<40} since {item.since:%Y-%m-%d %H:%M:%S %Z}{reason}")
