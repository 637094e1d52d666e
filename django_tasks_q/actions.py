"""What an operator does to tasks: retry, cancel, purge. The admin's actions and
``manage.py tasks`` both call these, so they follow the same rules and run the same statements.

They check no permissions: the admin checks Django's before calling, and shell access to
``manage.py`` is admin access.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from django.db import IntegrityError, transaction
from django.db.models import QuerySet

from django_tasks_q import queue, registry
from django_tasks_q.conf import settings as conf
from django_tasks_q.exceptions import UnknownTaskError
from django_tasks_q.models import UNFINISHED_STATUSES, Task, TaskStatus

# Tasks cancelled per statement by a purge: each statement is short, and a purge of a million
# tasks does not hold a million row locks at once.
PURGE_BATCH = 1000


@dataclass
class Retried:
    retried: list[int] = field(default_factory=list)
    # Left out because another task with the same unique key is waiting or running:
    # (task name, id, key).
    conflicts: list[tuple[str, int, str]] = field(default_factory=list)


@dataclass
class Cancelled:
    cancelled: list[int] = field(default_factory=list)
    asked_to_stop: list[int] = field(default_factory=list)  # running: they end cancelled

    @property
    def changed(self) -> int:
        return len(self.cancelled) + len(self.asked_to_stop)


def retry(ids: Iterable[int], *, using: str) -> Retried:
    """Make the FAILED or CANCELLED tasks among ``ids`` READY to run now, each with its retry
    budget again. Other tasks are left alone. A task whose unique key an unfinished task holds
    cannot be READY too (tasks_q_unique_key_active), so it is left out and named; of several
    sharing a key, the newest is retried."""
    candidates = list(
        Task.objects.using(using)
        .filter(pk__in=list(ids), status__in=[TaskStatus.FAILED, TaskStatus.CANCELLED])
        .order_by("-id")
        .values_list("id", "name", "unique_key")
    )
    keys = {task_id: key for task_id, _, key in candidates if key is not None}
    held = _keys_held(using, set(keys.values()))
    by_name: dict[str, list[int]] = {}
    done = Retried()
    for task_id, name, key in candidates:
        if key in held:
            done.conflicts.append((name, task_id, key))
            continue
        if key is not None:
            held.add(key)
        by_name.setdefault(name, []).append(task_id)
    with transaction.atomic(using=using):
        for name, named_ids in by_name.items():
            more = _attempts_per_run(name)
            try:
                with transaction.atomic(using=using):
                    done.retried += _retry_now(named_ids, more, using)
            except IntegrityError:
                # A task with one of these keys was enqueued since the check: one at a time,
                # so only the tasks whose key was taken stay behind.
                for task_id in named_ids:
                    try:
                        with transaction.atomic(using=using):
                            done.retried += _retry_now([task_id], more, using)
                    except IntegrityError:
                        done.conflicts.append((name, task_id, keys.get(task_id, "")))
    done.conflicts.sort(key=lambda conflict: conflict[1])
    return done


def cancel(ids: Iterable[int], *, using: str, terminate: bool = False) -> Cancelled:
    """Cancel the waiting and ready tasks among ``ids``; ask the running ones to stop (with
    ``terminate``, a process-pool worker kills a task that does not stop). Finished tasks are
    left alone."""
    statuses = queue.cancel_many(
        list(ids), using=using, terminate=terminate, notify=conf.LISTEN_NOTIFY
    )
    done = Cancelled()
    for task_id, status in sorted(statuses.items()):
        (done.cancelled if status == TaskStatus.CANCELLED else done.asked_to_stop).append(task_id)
    return done


def purgeable(queue_name: str, *, task_name: str | None = None, using: str) -> QuerySet[Task]:
    """The tasks :func:`purge` cancels: those of the queue (and task name) not started yet."""
    waiting = Task.objects.using(using).filter(
        queue=queue_name, status__in=[TaskStatus.READY, TaskStatus.WAITING]
    )
    return waiting.filter(name=task_name) if task_name is not None else waiting


def purge(queue_name: str, *, task_name: str | None = None, using: str) -> int:
    """Cancel every task of ``queue_name`` (of ``task_name`` only, if given) that has not
    started: ready, scheduled, or waiting (for dependencies, a pause or a limit). They are
    kept as CANCELLED, so workflows and the admin see what happened, and pruned like other
    cancelled tasks. Running tasks are left alone. Returns how many were cancelled."""
    waiting = purgeable(queue_name, task_name=task_name, using=using)
    # Only what was there when the purge began: producers that keep enqueueing cannot keep
    # it going.
    last = waiting.order_by("-id").values_list("id", flat=True).first()
    waiting = waiting.filter(id__lte=last or 0)
    total = 0
    while ids := list(waiting.order_by("id").values_list("id", flat=True)[:PURGE_BATCH]):
        total += len(cancel(ids, using=using).cancelled)
    return total


def _retry_now(ids: list[int], more_attempts: int, using: str) -> list[int]:
    return queue.retry_now(ids, more_attempts=more_attempts, using=using, notify=conf.LISTEN_NOTIFY)


def _keys_held(using: str, keys: set[str]) -> set[str]:
    """Those of ``keys`` that an unfinished (waiting, ready or running) task holds."""
    if not keys:
        return set()
    return set(
        Task.objects.using(using)
        .filter(unique_key__in=keys, status__in=UNFINISHED_STATUSES)
        .values_list("unique_key", flat=True)
    )


def _attempts_per_run(name: str) -> int:
    """Attempts a retried task gets: its own retry budget again (one if it is unknown here)."""
    try:
        return registry.get(name).max_attempts
    except UnknownTaskError:
        return 1
