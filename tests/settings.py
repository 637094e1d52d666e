"""The test project's settings plus an app holding the tasks the tests enqueue."""

from testproject.settings import *  # noqa: F403

INSTALLED_APPS = [*INSTALLED_APPS, "tests.testapp", "tests.djangoapp"]  # noqa: F405

if env.bool("TASKS_Q_TEST_BREAK_CHILDREN", default=False):  # noqa: F405
    import multiprocessing

    # Lets a test see what a worker does when its child processes cannot start.
    if multiprocessing.parent_process() is not None:
        raise RuntimeError("settings refuse to load in a child process (test)")

if slow_children := env.str("TASKS_Q_TEST_SLOW_CHILDREN", default=""):  # noqa: F405
    import multiprocessing
    import os
    import time

    # Child processes that set Django up slowly, as a large project's do: the n-th child to
    # get here (from 0) takes 2n seconds more, and then leaves a file "n.done".
    if multiprocessing.parent_process() is not None:
        order = 0
        while True:
            try:
                os.close(os.open(f"{slow_children}/{order}", os.O_CREAT | os.O_EXCL))
                break
            except FileExistsError:
                order += 1
        time.sleep(2.0 * order)
        os.close(os.open(f"{slow_children}/{order}.done", os.O_CREAT))

# The suite goes through TASKS like a project that configures Django's Tasks framework; the
# demo project (testproject.settings alone) covers the implicit backend of projects that don't.
TASKS = {"default": {"BACKEND": "django_tasks_q.backend.PostgresBackend"}}
