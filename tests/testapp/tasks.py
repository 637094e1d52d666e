"""Tasks the test-suite enqueues; workers started by tests find them by autodiscovery."""

import asyncio
import os
import sys
import time

from django.dispatch import receiver

from django_tasks_q import background_task
from django_tasks_q.signals import task_enqueued
from tests.testapp.models import Execution


class TransientError(Exception):
    pass


class PermanentError(Exception):
    pass


@background_task
def add(x, y):
    return x + y


@background_task
def record(key):
    Execution.objects.create(key=key, worker=str(os.getpid()))
    return key


@background_task
def returns_large(key, size):
    return key + "x" * size


_kept_alive: list[bytearray] = []


@background_task
def grows(key, megabytes):
    """Keeps ``megabytes`` of memory for the rest of its process's life."""
    Execution.objects.create(key=key, worker=str(os.getpid()))
    _kept_alive.append(bytearray(megabytes * 1024 * 1024))
    return key


@background_task(bind=True)
def record_attempt(context, key):
    Execution.objects.create(key=key, attempt=context.attempt)
    return context.attempt


@background_task
def sleep_then_record(key, seconds):
    time.sleep(seconds)
    Execution.objects.create(key=key)
    return key


@background_task(max_retries=3, default_retry_delay=0)
def fail_until(key, succeed_on):
    attempt = Execution.objects.filter(key=key).count() + 1
    Execution.objects.create(key=key, attempt=attempt)
    if attempt < succeed_on:
        raise TransientError(f"attempt {attempt} failed")
    return attempt


@background_task(max_retries=2, default_retry_delay=0)
def always_fails():
    raise TransientError("it never works")


@background_task(max_retries=5, default_retry_delay=0, autoretry_for=(TransientError,))
def permanent_failure():
    raise PermanentError("do not retry me")


@background_task(max_retries=2, bind=True)
def retry_via_context(context, key):
    Execution.objects.create(key=key, attempt=context.attempt)
    if context.attempt < 3:
        context.retry(countdown=0, exc=TransientError(f"asked on attempt {context.attempt}"))
    return context.attempt


@background_task(max_retries=1, bind=True)
def retry_forever_via_context(context):
    context.retry(countdown=0, exc=TransientError("still not ready"))


@background_task(max_retries=5, bind=True)
def gives_up_after_one_retry(context, key):
    Execution.objects.create(key=key, attempt=context.attempt)
    context.retry(countdown=0, max_retries=1, exc=TransientError("not yet"))


@background_task
def returns_unserialisable():
    return object()


@background_task(ignore_result=True)
def result_ignored():
    return {"big": "value"}


@background_task(name="custom.task.name", queue="other", priority=5, timeout=12.5)
def named_task():
    return "named"


@background_task(max_retries=3, default_retry_delay=0)
def exits_the_process():
    raise SystemExit(3)


@background_task(max_retries=5, default_retry_delay=0, bind=True)
def gives_up_early(context):
    context.retry(max_retries=0)


@background_task(max_retries=2, bind=True)
def hangs_on_first_attempt(context, key):
    Execution.objects.create(key=key, attempt=context.attempt)
    if context.attempt == 1:
        time.sleep(120)  # killed long before this ends
    return context.attempt


@background_task
def runs_long(key, seconds):
    Execution.objects.create(key=key, worker=str(os.getpid()))
    time.sleep(seconds)
    return key


@background_task
def waits_for_siblings(key, siblings):
    """Succeeds only if ``siblings`` tasks with the same key run at the same time."""
    Execution.objects.create(key=key, worker=str(os.getpid()))
    deadline = time.monotonic() + 20
    while Execution.objects.filter(key=key).count() < siblings:
        if time.monotonic() > deadline:
            raise TimeoutError("the sibling tasks did not run alongside this one")
        time.sleep(0.05)
    return key


@background_task(timeout=10, soft_timeout=0.5)
def cleans_up_at_the_soft_limit_in_steps(key):
    from django_tasks_q.exceptions import SoftTimeLimitExceeded

    try:
        for _ in range(80):
            time.sleep(0.1)
    except SoftTimeLimitExceeded:
        Execution.objects.create(key=key, worker=str(os.getpid()))
        return "cleaned up"


@background_task
async def async_add(x, y):
    await asyncio.sleep(0.01)
    await Execution.objects.acreate(key=f"async-{x}+{y}")
    return x + y


@background_task
async def which_event_loop():
    return id(asyncio.get_running_loop())


@background_task(max_retries=1, default_retry_delay=0)
async def async_fails_once(key):
    attempt = await Execution.objects.filter(key=key).acount() + 1
    await Execution.objects.acreate(key=key, attempt=attempt)
    if attempt == 1:
        raise TransientError("first attempt fails")
    return attempt


@background_task(soft_timeout=0.3, timeout=20)
async def async_cleans_up_at_the_soft_limit(key):
    try:
        await asyncio.sleep(10)
    except asyncio.CancelledError:
        await Execution.objects.acreate(key=key)
        return "cleaned up"
    return "not stopped"


@background_task(soft_timeout=0.3, timeout=20)
async def async_ignores_nothing(key):
    await asyncio.sleep(10)


@background_task(max_retries=5, default_retry_delay=0)
def record_retrying_on_errors(key):
    """Like record, but a database error (the server restarting) is retried."""
    Execution.objects.create(key=key, worker=str(os.getpid()))
    return key


@background_task(bind=True)
def cooperative(context, key):
    Execution.objects.create(key=key)
    for _ in range(600):  # up to a minute, in small steps
        context.raise_if_cancelled()
        time.sleep(0.1)
    return "not cancelled"


@background_task(timeout=1)
def overruns_its_time_limit(key):
    Execution.objects.create(key=key)
    time.sleep(60)


@background_task(max_retries=2, default_retry_delay=0)
def kills_its_process(key):
    Execution.objects.create(key=key, worker=str(os.getpid()))
    os._exit(1)


@background_task
def ends_its_process_at_once():
    os._exit(1)


@background_task(timeout=5, soft_timeout=0.5)
def cleans_up_at_the_soft_limit(key):
    from django_tasks_q.exceptions import SoftTimeLimitExceeded

    try:
        time.sleep(4)
    except SoftTimeLimitExceeded:
        Execution.objects.create(key=key)
        return "cleaned up"
    return "finished"


@background_task
def scheduled_noop(*args, **kwargs):
    return [list(args), kwargs]


# Declared in code: synced by every beat the tests start; it never comes due during a test.
@background_task(
    name="testapp.new_year", schedule={"cron": "0 0 1 1 *", "timezone": "Europe/Paris"}
)
def new_year():
    return "happy new year"


@receiver(task_enqueued)
def pause_while_enqueueing(sender, task_result, **kwargs):
    """Test hook: a process started with TESTAPP_PAUSE_ENQUEUE=<task name> stops inside the
    transaction that enqueues such a task, so a test can kill it there."""
    if task_result.task.name == os.environ.get("TESTAPP_PAUSE_ENQUEUE"):
        print(f"paused enqueueing {task_result.task.name} #{task_result.id}", flush=True)
        sys.stdout.flush()
        time.sleep(120)


# -- the fault suite (tests/test_faults.py): default options unless the fault needs one -----


@background_task(bind=True)
def hangs_once(context, key):
    """Default options: records each attempt; the first one hangs until its worker is killed."""
    Execution.objects.create(key=key, attempt=context.attempt, worker=str(os.getpid()))
    if Execution.objects.filter(key=key).count() == 1:
        time.sleep(120)
    return context.attempt


@background_task(bind=True)
def kills_its_worker(context, key):
    """A poison task: kills the worker process running it, every time."""
    import multiprocessing
    import signal

    Execution.objects.create(key=key, attempt=context.attempt, worker=str(os.getpid()))
    in_child = multiprocessing.parent_process() is not None  # of the process pool
    worker = os.getppid() if in_child else os.getpid()
    os.kill(worker, signal.SIGKILL)
    time.sleep(60)


@background_task(bind=True)
def kills_its_own_process(context, key):
    """Default options: the task SIGKILLs the process it runs in (a process-pool child)."""
    import signal

    Execution.objects.create(key=key, attempt=context.attempt, worker=str(os.getpid()))
    if Execution.objects.filter(key=key).count() == 1:
        os.kill(os.getpid(), signal.SIGKILL)
    return context.attempt


@background_task(bind=True)
def loses_its_database_once(context, key):
    """Default options: the first attempt's own database connection is terminated under it."""
    from django.db import connection

    Execution.objects.create(key=key, attempt=context.attempt)
    if Execution.objects.filter(key=key).count() == 1:
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_terminate_backend(pg_backend_pid())")
    return context.attempt


@background_task(bind=True)
def sleeps_and_says_who(context, key, seconds):
    """Returns the pid of the worker that ran it (the process pool's parent)."""
    import multiprocessing

    Execution.objects.create(key=key, attempt=context.attempt, worker=str(os.getpid()))
    time.sleep(seconds)
    return os.getppid() if multiprocessing.parent_process() is not None else os.getpid()


@background_task
def returns_unstorable_text(kind):
    """Arguments with such characters are refused at enqueue; a task can still produce them."""
    return "a NUL \x00 inside" if kind == "nul" else "a lone surrogate " + chr(0xD800)


class UnprintableError(Exception):
    def __str__(self):
        raise RuntimeError("this exception cannot be printed")


@background_task
def raises(kind):
    if kind == "unprintable":
        raise UnprintableError()
    if kind == "nul":
        raise ValueError("a message with a NUL \x00 and a lone surrogate \ud800 in it")
    raise ValueError(kind)


@background_task
def returns_self_referencing_list():
    value = []
    value.append(value)
    return value


@background_task(bind=True, max_retries=3, default_retry_delay=0)
def raises_once_cancelled(context, key):
    Execution.objects.create(key=key, attempt=context.attempt)
    deadline = time.monotonic() + 30
    while not context.is_cancelled() and time.monotonic() < deadline:
        time.sleep(0.05)
    raise ValueError("stopped after the cancellation, with an error")


if not os.environ.get("TESTAPP_OLD_RELEASE"):
    # Present in the "new release" only: a worker started with TESTAPP_OLD_RELEASE=1 does not
    # know it (deploy skew).

    @background_task
    def added_in_new_release(key):
        Execution.objects.create(key=key, worker=str(os.getpid()))
        return key


@background_task
def tally(values, key):
    """A chord body: counts its runs and returns how many results it got, and their sum."""
    Execution.objects.create(key=key, worker=str(os.getpid()))
    return [len(values), sum(values)]


@background_task
def fails_recording(key):
    Execution.objects.create(key=key)
    raise PermanentError(f"{key} failed")


@background_task
def on_error(task_id, error, key):
    """An error callback: records which task failed, and how."""
    Execution.objects.create(key=f"{key}:{task_id}:{error['type'].rsplit('.', 1)[-1]}")
    return task_id


@background_task(link=add.s(1000))
def add_then_more(x, y):
    return x + y


@background_task(bind=True, max_retries=2, default_retry_delay=0)
def celery_style(self, key):
    """Written as in Celery: the context is `self`, `self.request`, `raise self.retry()`."""
    Execution.objects.create(key=key, attempt=self.request.retries)
    if self.request.retries < 1:
        raise self.retry(countdown=0)
    return [self.request.id, self.request.retries, self.request.args]


# Flow control (tests/test_limits.py).
@background_task(concurrency=2)
def two_at_a_time(key, seconds):
    time.sleep(seconds)
    Execution.objects.create(key=key)


@background_task(concurrency=1, limit_by="customer_id")
def one_per_customer(customer_id, key, seconds=0.0):
    time.sleep(seconds)
    Execution.objects.create(key=key)


@background_task(concurrency=1, limit_by=lambda order, key: order["shop"])
def one_per_shop(order, key):
    Execution.objects.create(key=key)


@background_task(rate_limit="10/s")
def ten_per_second(key):
    Execution.objects.create(key=key)


@background_task(bind=True, concurrency=1, limit_by="customer_id")
def hangs_once_per_customer(context, customer_id, key):
    """One at a time per customer; the first attempt of all hangs until its worker is killed."""
    Execution.objects.create(key=key, attempt=context.attempt)
    if Execution.objects.filter(key__startswith="hang-").count() == 1:
        time.sleep(120)


@background_task(concurrency=1, limit_by="customer_id")
def first_is_the_customer(customer_id, note):
    return note


@background_task
def enqueues_a_record(key):
    """Enqueues another task, as tasks that fan out work do."""
    record.delay(f"{key}-child")


@background_task(max_retries=2, default_retry_delay=0)
def breaks_a_query(key):
    Execution.objects.create(key=key)
    Execution.objects.create(key=None)  # NOT NULL: the database refuses it


@background_task(queue="exports", fair_by="account")
def export_for(account, key, seconds=0.0):
    time.sleep(seconds)
    Execution.objects.create(key=key)
