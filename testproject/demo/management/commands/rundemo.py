"""Run the demo: a superuser to log in with, the dev server, one worker and a beat. Ctrl-C stops
them all."""

import os
import signal
import subprocess
import sys
import time

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand

DEMO_USER = "admin"
DEMO_PASSWORD = "admin"


class Command(BaseCommand):
    help = "Run the demo site on 127.0.0.1:8000 with a task worker and a beat beside it."

    def add_arguments(self, parser):
        parser.add_argument("--addr", default="127.0.0.1:8000")

    def handle(self, *args, **options):
        user_model = get_user_model()
        if not user_model.objects.filter(username=DEMO_USER).exists():
            user_model.objects.create_superuser(DEMO_USER, "admin@example.com", DEMO_PASSWORD)
        self.stdout.write(
            self.style.SUCCESS(
                f"\n  Demo:  http://{options['addr']}/\n"
                f"  Admin: http://{options['addr']}/admin/  (login {DEMO_USER} / {DEMO_PASSWORD})\n"
                "  A beat enqueues roll_dice every 10 seconds (see Schedules in the admin).\n"
                "  Ctrl-C stops the server, the worker and the beat.\n"
            )
        )
        manage = [sys.executable, "manage.py"]
        # Own sessions: Ctrl-C reaches only this process, which then stops each child once
        # (a worker treats a second signal as "exit now, abandon running tasks").
        children = [
            subprocess.Popen(
                [*manage, "runtaskworker", "--concurrency", "4"], start_new_session=True
            ),
            subprocess.Popen([*manage, "runtaskbeat"], start_new_session=True),
            subprocess.Popen(
                [*manage, "runserver", options["addr"], "--noreload"], start_new_session=True
            ),
        ]
        stopping = False

        def stop(signum, frame):
            nonlocal stopping
            stopping = True

        signal.signal(signal.SIGINT, stop)
        signal.signal(signal.SIGTERM, stop)
        try:
            while not stopping and all(child.poll() is None for child in children):
                time.sleep(0.2)
        finally:
            for child in children:
                if child.poll() is None:
                    child.send_signal(signal.SIGTERM)
            deadline = time.monotonic() + 15
            for child in children:
                try:
                    child.wait(timeout=max(0.1, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    child.kill()
        self.stdout.write("Demo stopped.")
        if not stopping:
            os._exit(1)
