"""All queue SQL: enqueue, claim, finish, release, cancel, notify/listen, beat's helpers.

The statements live in ``sql/queue.sql`` and are loaded once by name. Enqueue and cancel run
on the caller's Django connection, so they join the caller's transaction. Workers use a
:class:`QueueConnection`: a dedicated autocommit psycopg connection that bypasses Django's
cursor wrappers on the hot path.
"""

from __future__ import annotations

import operator
import re
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import cache
from importlib import resources
from typing import Any, NamedTuple

import psycopg
from django.db import connections
from psycopg.types.json import Jsonb, JsonbLoader, JsonLoader

from django_tasks_q.direct import reaches_postgres_directly
from django_tasks_q.errors import sql_entries
from django_tasks_q.exceptions import WaitInsideTransaction

NOTIFY_CHANNEL = "django_tasks_q"
# Separate from the tasks' channel: beats are not woken by every enqueue, nor workers by edits.
SCHEDULES_CHANNEL = "django_tasks_q_schedules"
# Cancellation requests for RUNNING tasks: "<id>" or "<id> terminate".
CANCEL_CHANNEL = "django_tasks_q_cancel"
# A queue or task name was paused or resumed: workers read what is paused again.
PAUSE_CHANNEL = "django_tasks_q_pause"

# The pause that holds a task back, if any: "queue:<name>" or "task:<name>", over a row
# source named task with queue and name columns (filled into the enqueue statements). The
# function is migration 0008's.
HELD_BY_PAUSE_SQL = "django_tasks_q_held_by(task.queue, task.name)"
# The turn that holds back a task of a fair queue, if its key's turn is full: "turn:<key>",
# over a row source named task with fair_key, fair_turn and ahead (how many tasks of its key
# the same statement inserts before it). The function is migration 0009's.
# A task outside fair queues makes no call.
HELD_BY_TURN_SQL = (
    "CASE WHEN task.fair_key IS NOT NULL"
    " THEN django_tasks_q_held_by_turn(task.fair_key, task.fair_turn, task.ahead) END"
)


class ClaimPosition(NamedTuple):
    """Where a ready row sits in claim order: ``(priority * -1, run_after, id)``, ascending.
    It is the key of tasks_q_ready_idx, and a claim starts its walk after one."""

    rank: int  # the priority, negated: the highest priority comes first
    run_after: datetime
    id: int


# Before any time a row holds.
EARLIEST = datetime.min.replace(tzinfo=UTC)
# Before every row (priorities are -100..100): a claim from here walks from the start.
FIRST_POSITION = ClaimPosition(-101, EARLIEST, 0)

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

# The payload of a NOTIFY on NOTIFY_CHANNEL: "<rank> <run_after in µs since the epoch>
# <queue>", the claim position of the earliest row the notifying transaction made ready
# (id 0: before any row at that rank and time). The statements build it with this expression
# over a row source that has priority, run_after and queue; the floor is exact in µs.
READY_NOTICE_SQL = (
    "(priority * -1)::text || ' ' || floor(extract(epoch FROM run_after) * 1000000)::text"
    " || ' ' || queue"
)


class ReadyNotice(NamedTuple):
    queue: str
    position: ClaimPosition | None  # None: a payload without one (an older version's)


def parse_ready_notice(payload: str) -> ReadyNotice:
    """Read a NOTIFY_CHANNEL payload; an unknown form gives a notice without a position."""
    rank, _, rest = payload.partition(" ")
    micros, _, queue = rest.partition(" ")
    try:
        when = EPOCH + timedelta(microseconds=int(micros))
        return ReadyNotice(queue, ClaimPosition(int(rank), when, 0))
    except (ValueError, OverflowError):
        return ReadyNotice(payload, None)


def load_statements(package: str, resource: str) -> dict[str, str]:
    """The statements of a ``.sql`` file shipped in ``package``, by their ``-- name:`` header."""
    text = resources.files(package).joinpath(resource).read_text()
    found: dict[str, str] = {}
    for block in re.split(r"^-- name: ", text, flags=re.MULTILINE)[1:]:
        name, _, body = block.partition("\n")
        found[name.strip()] = _compact(body).rstrip(";")
    return found


# A quoted literal or identifier (kept whole), or a run of white space and comments.
_SQL_SPACE = re.compile(r"'(?:[^']|'')*'|\"(?:[^\"]|\"\")*\"|(?:\s|--[^\n]*)+")


def _compact(code: str) -> str:
    """``code`` without comments (a placeholder written in one would still count as a
    parameter), and with one space for every run of white space: psycopg caches the parsing
    of statements up to 4 kB only (MAX_CACHED_STATEMENT_LENGTH), and parses a longer one
    again on every execution. Knows plain quotes only: no dollar quoting, no E'' escapes."""

    def keep_quoted(match: re.Match[str]) -> str:
        text = match.group()
        return text if text[0] in "'\"" else " "

    return _SQL_SPACE.sub(keep_quoted, code).strip()


@cache
def statements() -> dict[str, str]:
    found = load_statements("django_tasks_q", "sql/queue.sql")
    columns = ", ".join(TASK_COLUMNS)
    nulls = ", ".join(["NULL"] * (len(TASK_COLUMNS) - 1))
    fills = {
        "task_columns": columns,
        "null_task_columns": nulls,
        "ready_notice": READY_NOTICE_SQL,
        "held_by_pause": HELD_BY_PAUSE_SQL,
        "held_by_turn": HELD_BY_TURN_SQL,
        **sql_entries(),
    }
    for name, code in found.items():
        for key, value in fills.items():
            code = code.replace(f"{{{key}}}", value)
        found[name] = code
    # The worker's statements, from parts: each leaves out what it has no use for (see the file).
    finished, finished_rows = found.pop("finished"), found.pop("finished_rows")
    claimed, claimed_rows = found.pop("claimed"), found.pop("claimed_rows")
    found["finish"] = f"WITH {finished} {finished_rows}"
    pick_any_queue = found.pop("pick_any_queue")
    pickers = {
        "": pick_any_queue.replace("{one_queue}", ""),
        "_from_queue": pick_any_queue.replace("{one_queue}", "AND queue = %(queue)s"),
        "_from_queues": found.pop("pick_from_queues"),
    }
    for suffix, picked in pickers.items():
        found[f"claim{suffix}"] = f"WITH {picked}, {claimed} {claimed_rows}"
        found[f"finish_and_claim{suffix}"] = (
            f"WITH {finished}, {picked}, {claimed} {finished_rows} UNION ALL {claimed_rows}"
        )
    # One bulk insert with fair keys, one without (see the file).
    template = found.pop("enqueue_many")
    found["enqueue_many"] = template.replace("{ahead}", "0::bigint").replace(
        "{turn_of_call}", "NULL::text"
    )
    found["enqueue_many_fair"] = template.replace(
        "{ahead}", "row_number() OVER (PARTITION BY call.fair_key ORDER BY call.n) - 1"
    ).replace("{turn_of_call}", HELD_BY_TURN_SQL)
    # One pause statement, for a queue or for a task name (see the file).
    template = found.pop("pause")
    found["pause_queue"] = template.replace("{paused_rows}", "queue = %(queue)s")
    found["pause_task"] = template.replace("{paused_rows}", "name = %(task_name)s")
    return found


def sql(name: str) -> str:
    return statements()[name]


@dataclass(frozen=True, slots=True)
class Enqueued:
    id: int
    run_after: datetime
    enqueued_at: datetime
    status: str = "READY"  # WAITING: held back by a pause of its queue or task


def enqueue(
    *,
    using: str,
    name: str,
    queue: str,
    priority: int,
    args_json: str,
    kwargs_json: str,
    run_after: datetime | None,
    max_attempts: int,
    max_lost_attempts: int,
    timeout: float | None,
    notify: bool,
    expires_at: datetime | None = None,
    schedule_id: int | None = None,
    scheduled_for: datetime | None = None,
    unique_key: str | None = None,
    chosen_id: str | None = None,
    concurrency_limits: str | None = None,
    rate_limits: str | None = None,
    fair_key: str | None = None,
    fair_turn: int | None = None,
    trace_context: str | None = None,
) -> Enqueued | None:
    """Insert one READY task through the caller's connection (and transaction). None: a task
    with ``unique_key`` is already unfinished (WAITING, READY or RUNNING), and nothing was
    inserted. A ``chosen_id`` already taken raises IntegrityError (tasks_q_chosen_id_uniq)."""
    with connections[using].cursor() as cursor:
        cursor.execute(
            sql("enqueue"),
            {
                "name": name,
                "queue": queue,
                "priority": priority,
                "args": args_json,
                "kwargs": kwargs_json,
                "run_after": run_after,
                "max_attempts": max_attempts,
                "max_lost_attempts": max_lost_attempts,
                "timeout": timeout,
                "notify": notify,
                "expires_at": expires_at,
                "schedule_id": schedule_id,
                "scheduled_for": scheduled_for,
                "unique_key": unique_key,
                "chosen_id": chosen_id,
                "trace_context": trace_context,
                "concurrency_limits": concurrency_limits,
                "rate_limits": rate_limits,
                "fair_key": fair_key,
                "fair_turn": fair_turn,
            },
        )
        row = cursor.fetchone()
    return Enqueued(row[0], row[1], row[2], row[4]) if row else None


def active_with_unique_key(unique_key: str, *, using: str) -> int | None:
    """The id of the unfinished task holding ``unique_key``, if there is one."""
    with connections[using].cursor() as cursor:
        cursor.execute(sql("active_with_unique_key"), {"unique_key": unique_key})
        row = cursor.fetchone()
    return row[0] if row else None


def enqueue_many(
    *,
    using: str,
    name: str,
    queue: str,
    priority: int,
    args_json: Sequence[str],
    kwargs_json: Sequence[str],
    run_after: datetime | None,
    max_attempts: int,
    max_lost_attempts: int,
    timeout: float | None,
    notify: bool,
    concurrency_limits: Sequence[str | None] | None = None,
    rate_limits: Sequence[str | None] | None = None,
    fair_key: Sequence[str | None] | None = None,
    fair_turn: int | None = None,
    trace_context: str | None = None,
) -> list[Enqueued]:
    """Insert many READY tasks of one task in a single statement. The limits (JSON text, see
    django_tasks_q.limits) are one per task, or None for none."""
    if not args_json:
        return []
    with connections[using].cursor() as cursor:
        cursor.execute(
            sql("enqueue_many_fair" if fair_key and any(fair_key) else "enqueue_many"),
            {
                "name": name,
                "queue": queue,
                "priority": priority,
                "args": list(args_json),
                "kwargs": list(kwargs_json),
                # NULL arrays when nothing is limited: unnest pads them with NULLs.
                "concurrency_limits": list(concurrency_limits) if concurrency_limits else None,
                "rate_limits": list(rate_limits) if rate_limits else None,
                "fair_key": list(fair_key) if fair_key else None,
                "fair_turn": fair_turn,
                "trace_context": trace_context,
                "run_after": run_after,
                "max_attempts": max_attempts,
                "max_lost_attempts": max_lost_attempts,
                "timeout": timeout,
                "notify": notify,
            },
        )
        ids, run_after_, enqueued_at, _, statuses = cursor.fetchone()
    return [
        Enqueued(task_id, run_after_, enqueued_at, status)
        for task_id, status in zip(ids, statuses, strict=True)
    ]


@dataclass(frozen=True, slots=True)
class WorkflowRow:
    """One task of a workflow to insert (see ``enqueue_workflow``)."""

    name: str
    queue: str
    priority: int
    args_json: str
    kwargs_json: str
    run_after: datetime | None
    max_attempts: int
    max_lost_attempts: int
    timeout: float | None
    expires_at: datetime | None
    receives: str
    has_dependents: bool
    schedule_id: int | None = None
    scheduled_for: datetime | None = None
    concurrency_limits: str | None = None  # JSON text, see django_tasks_q.limits
    rate_limits: str | None = None
    fair_key: str | None = None
    fair_turn: int | None = None


@dataclass(frozen=True, slots=True)
class WorkflowEdge:
    """``task`` (a 0-based place in the rows) runs after ``parent``: a place in the rows, or
    an existing task's id (``parent_id``)."""

    task: int
    position: int
    run_if: str
    parent: int | None = None
    parent_id: int | None = None


@dataclass(frozen=True, slots=True)
class EnqueuedStep:
    id: int
    status: str
    run_after: datetime
    enqueued_at: datetime


def enqueue_workflow(
    *,
    using: str,
    workflow_id: str,
    rows: Sequence[WorkflowRow],
    edges: Sequence[WorkflowEdge],
    notify: bool,
    trace_context: str | None = None,
) -> list[EnqueuedStep]:
    """Insert a workflow's tasks and edges in one statement, in the caller's transaction.
    A task with edges is WAITING until its dependencies finished (migration 0007)."""
    waiting_for = [0] * len(rows)
    for edge in edges:
        waiting_for[edge.task] += 1
    with connections[using].cursor() as cursor:
        cursor.execute(
            sql("enqueue_workflow"),
            {
                "workflow_id": workflow_id,
                "names": [row.name for row in rows],
                "queues": [row.queue for row in rows],
                "priorities": [row.priority for row in rows],
                "args": [row.args_json for row in rows],
                "kwargs": [row.kwargs_json for row in rows],
                "run_afters": [row.run_after for row in rows],
                "max_attempts": [row.max_attempts for row in rows],
                "max_lost_attempts": [row.max_lost_attempts for row in rows],
                "timeouts": [row.timeout for row in rows],
                "expires": [row.expires_at for row in rows],
                "waiting_for": waiting_for,
                "receives": [row.receives for row in rows],
                "has_dependents": [row.has_dependents for row in rows],
                "schedule_ids": [row.schedule_id for row in rows],
                "scheduled_fors": [row.scheduled_for for row in rows],
                "concurrency_limits": [row.concurrency_limits for row in rows],
                "rate_limits": [row.rate_limits for row in rows],
                "fair_key": [row.fair_key for row in rows],
                # One turn for the whole workflow: TASKS_Q["FAIR_TURN"] when it was built.
                "fair_turn": next((row.fair_turn for row in rows if row.fair_turn), None),
                "edge_tasks": [edge.task + 1 for edge in edges],
                "edge_parents": [
                    edge.parent + 1 if edge.parent is not None else -edge.parent_id
                    for edge in edges
                ],
                "edge_positions": [edge.position for edge in edges],
                "edge_run_ifs": [edge.run_if for edge in edges],
                "trace_context": trace_context,
                "notify": notify,
            },
        )
        ids, statuses, run_afters, enqueued_at, _, _ = cursor.fetchone()
    return [
        EnqueuedStep(task_id, status, run_after, enqueued_at)
        for task_id, status, run_after in zip(ids, statuses, run_afters, strict=True)
    ]


def written_by_this_transaction(ids: Collection[int], *, using: str) -> set[int]:
    """Of ``ids``, the tasks the caller's open transaction enqueued: no worker sees them yet.
    Empty outside a transaction."""
    connection = connections[using]
    if not connection.in_atomic_block:
        return set()
    with connection.cursor() as cursor:
        cursor.execute(sql("written_by_this_transaction"), {"ids": list(ids)})
        return {row[0] for row in cursor.fetchall()}


def refuse_wait_inside_transaction(ids: Collection[int], what: str, *, using: str) -> None:
    """Raise WaitInsideTransaction if the caller's open transaction enqueued any of ``ids``:
    waiting for them there could never end."""
    if written_by_this_transaction(ids, using=using):
        raise WaitInsideTransaction(
            f"{what} was enqueued in the transaction that is still open here, and no worker "
            "can see it before that transaction commits: waiting for it inside the "
            "transaction would never end. Wait after the `with transaction.atomic()` block, "
            "or run the follow-up as a task of its own (link=, or transaction.on_commit)."
        )


def existing_dependencies(ids: Collection[int], *, using: str) -> dict[int, str | None]:
    """Of ``ids``, those that name a task, with the workflow each belongs to."""
    with connections[using].cursor() as cursor:
        cursor.execute(sql("existing_dependencies"), {"ids": list(ids)})
        return {
            task_id: None if workflow is None else str(workflow)
            for task_id, workflow in cursor.fetchall()
        }


def cancel_workflow(
    workflow_id: str, *, using: str, terminate: bool = False, notify: bool = True
) -> dict[int, str]:
    """Cancel every unfinished step of a workflow (running ones are asked to stop). Returns
    each step changed with its status after the call."""
    params = {
        "workflow_id": workflow_id, "terminate": terminate, "notify": notify,
        "channel": CANCEL_CHANNEL,
    }  # fmt: skip
    with connections[using].cursor() as cursor:
        cursor.execute(sql("cancel_workflow"), params)
        return {task_id: status for task_id, status, _ in cursor.fetchall()}


@dataclass(frozen=True, slots=True)
class Paused:
    """What is paused: the queues and task names whose tasks no claim may take."""

    queues: frozenset[str] = frozenset()
    task_names: frozenset[str] = frozenset()


NOTHING_PAUSED = Paused()


def pause_key(queue: str, task_name: str) -> str:
    """What the tasks a pause holds carry in ``held_by``."""
    return f"queue:{queue}" if queue else f"task:{task_name}"


def pause(
    *, using: str, queue: str = "", task_name: str = "", reason: str = ""
) -> tuple[bool, int]:
    """Pause a queue or a task name (one of them) and tell the workers. Returns whether it
    was not paused already, and how many waiting tasks it now holds."""
    statement = "pause_queue" if queue else "pause_task"
    params = {
        "queue": queue, "task_name": task_name, "reason": reason, "channel": PAUSE_CHANNEL,
        "key": pause_key(queue, task_name),
    }  # fmt: skip
    with connections[using].cursor() as cursor:
        cursor.execute(sql(statement), params)
        added, held, _ = cursor.fetchone()
    return bool(added), held


def resume(
    *, using: str, queue: str = "", task_name: str = "", notify: bool = True
) -> tuple[bool, int]:
    """End a pause and make the tasks it held READY (unless another pause holds them).
    Returns whether it was paused, and how many tasks are READY again."""
    params = {
        "queue": queue, "task_name": task_name, "notify": notify, "channel": PAUSE_CHANNEL,
        "key": pause_key(queue, task_name),
    }  # fmt: skip
    with connections[using].cursor() as cursor:
        cursor.execute(sql("resume"), params)
        removed, released, _, _ = cursor.fetchone()
    return bool(removed), released


def _paused_from(rows: Iterable[Sequence[Any]]) -> Paused:
    queues, names = set(), set()
    for queue, task_name, *_ in rows:
        if queue:
            queues.add(queue)
        else:
            names.add(task_name)
    return Paused(frozenset(queues), frozenset(names)) if queues or names else NOTHING_PAUSED


def paused(*, using: str) -> list[tuple[str, str, datetime, str]]:
    """Every pause: (queue, task name, since, reason), the oldest first."""
    with connections[using].cursor() as cursor:
        cursor.execute(sql("paused"))
        return list(cursor.fetchall())


def cancel(task_id: int, *, using: str, terminate: bool = False, notify: bool = True) -> str | None:
    """Cancel a WAITING or READY task, or ask a RUNNING one to stop. Returns the status after
    the call (``CANCELLED`` or ``RUNNING``), or ``None`` if the task had already finished."""
    return cancel_many([task_id], using=using, terminate=terminate, notify=notify).get(task_id)


def cancel_many(
    ids: Collection[int], *, using: str, terminate: bool = False, notify: bool = True
) -> dict[int, str]:
    """:func:`cancel` for many tasks in one statement: the status after the call of each task
    that had not finished (``CANCELLED``, or ``RUNNING`` when asked to stop)."""
    params = {"ids": list(ids), "terminate": terminate, "notify": notify,
              "channel": CANCEL_CHANNEL}  # fmt: skip
    with connections[using].cursor() as cursor:
        cursor.execute(sql("cancel"), params)
        return {task_id: status for task_id, status, _ in cursor.fetchall()}


def retry_now(ids: Sequence[int], *, more_attempts: int, using: str, notify: bool) -> list[int]:
    """Make FAILED or CANCELLED tasks READY to run now, allowing ``more_attempts`` more
    attempts. Returns the ids that changed (the others had changed state meanwhile)."""
    with connections[using].cursor() as cursor:
        cursor.execute(
            sql("retry_now"),
            {"ids": list(ids), "more_attempts": more_attempts, "notify": notify},
        )
        return [row[0] for row in cursor.fetchall()]


@dataclass(frozen=True, slots=True)
class ClaimedTask:
    """A task row as a worker needs it to run (or recover) one attempt."""

    id: int
    name: str
    queue: str
    priority: int
    args: list[Any]
    kwargs: dict[str, Any]
    attempt: int
    max_attempts: int
    timeout: float | None
    run_after: datetime
    enqueued_at: datetime
    started_at: datetime
    last_attempted_at: datetime
    errors: list[dict[str, Any]]
    lost_attempts: int = 0
    max_lost_attempts: int = 3
    # Other tasks wait for this one (docs/workflows.md): recording its outcome may make them
    # READY, which the claim of the same statement cannot see.
    has_dependents: bool = False
    # A concurrency limit holds it: its end may let tasks that limit held back go (READY),
    # which the claim of the same statement cannot see either.
    limited: bool = False
    # The enqueuing span's W3C context, the parent of the attempt's span (tracing.py).
    trace_context: dict[str, str] | None = None

    @property
    def position(self) -> ClaimPosition:
        return ClaimPosition(-self.priority, self.run_after, self.id)

    def __reduce__(self) -> tuple:
        # Pickled as a tuple of values: the process pool sends every task to a child, and
        # the generic pickling of a slotted dataclass costs twice as much.
        return ClaimedTask, _claimed_values(self)


_claimed_values = operator.attrgetter(*ClaimedTask.__dataclass_fields__)
_position = operator.attrgetter("position")

# The task table's columns for ClaimedTask's fields, in order: the statements select
# {task_columns}, so adding a field here and to the dataclass is the whole change.
_COLUMN_OF = {"attempt": "attempts", "limited": "concurrency_limits IS NOT NULL"}
TASK_COLUMNS: tuple[str, ...] = tuple(
    _COLUMN_OF.get(name, name) for name in ClaimedTask.__dataclass_fields__
)


@dataclass(frozen=True, slots=True)
class LostTask:
    """An attempt found lost (its lease expired, its worker restarted or gave it up)."""

    task: ClaimedTask
    holder: str
    lease_expires_at: datetime | None
    cancel_requested: bool


@dataclass(frozen=True, slots=True)
class Outcome:
    """How one attempt ended. ``status`` READY means "run again after ``retry_delay``
    seconds"; ``lost`` marks an attempt lost to the infrastructure, not the task's error."""

    id: int
    attempt: int
    status: str
    result_json: str | None = None
    error: dict[str, Any] | None = None
    max_attempts: int = 1
    retry_delay: float = 0.0
    duration: float = 0.0  # seconds the attempt ran; not stored, tunes the worker's prefetch
    lost: bool = False
    # False: the task never started (no database connection could be had for it); the worker
    # gives it back without counting the attempt instead of recording an outcome.
    started: bool = True

    def __reduce__(self) -> tuple:
        return Outcome, _outcome_values(self)  # by value, as ClaimedTask


_outcome_values = operator.attrgetter(*Outcome.__dataclass_fields__)
_outcome_id = operator.attrgetter("id")


class FinishedAndClaimed(NamedTuple):
    finished: set[int]
    claimed: list[ClaimedTask]
    # Picked but cancelled instead of claimed (expired, or cancellation requested).
    skipped: list[ClaimedTask]
    # Picked but held back (docs/flow-control.md): by a concurrency limit (WAITING, in its
    # place), or by a rate limit (READY again at the start it reserved: its run_after).
    parked: list[ClaimedTask]
    throttled: list[ClaimedTask]


def connection_params(using: str, application_name: str | None = None) -> dict[str, Any]:
    """psycopg connect() arguments for a Django database alias, with psycopg's own adapters."""
    params = dict(connections[using].get_connection_params())
    if application_name:
        # Shows in pg_stat_activity, so operators can tell worker connections apart.
        params.setdefault("application_name", application_name[:63])
    # Django's adapters and cursor class are for its ORM; the queue wants psycopg's defaults
    # (jsonb arrives decoded, timestamps aware).
    params.pop("context", None)
    params.pop("cursor_factory", None)
    return params


# Executions of one statement before psycopg prepares it on the server (psycopg's default).
PREPARE_THRESHOLD = 5


def _may_prepare(using: str, connection: psycopg.Connection) -> bool:
    """Whether the queue's own connection should prepare its statements: it saves parsing the
    claim statement on every round trip, and is safe only on a session of the server itself.
    A ``prepare_threshold`` in the database's OPTIONS decides instead, as it does for Django."""
    if "prepare_threshold" in connections[using].settings_dict.get("OPTIONS", {}):
        return False  # psycopg.connect() already applied the project's choice
    return reaches_postgres_directly(connection)


class _QueueCursor(psycopg.Cursor):
    """The cursor of the queue's own connections. A statement prepared before a migration
    changed the type of a column it returns fails ("cached plan must not change result
    type") for as long as the session keeps it: forget the prepared statements and run it
    once more. A statement on its own changed nothing when it failed; one inside a
    transaction is left to fail it, and the rollback makes psycopg forget them too."""

    def execute(self, query: Any, params: Any = None, **options: Any) -> _QueueCursor:
        try:
            return super().execute(query, params, **options)
        except psycopg.errors.FeatureNotSupported:
            connection = self.connection
            if (
                connection.prepare_threshold is None
                or connection.info.transaction_status != psycopg.pq.TransactionStatus.IDLE
            ):
                raise
            # Its command tag makes psycopg forget its own names for them as well.
            connection.execute("DEALLOCATE ALL")
            return super().execute(query, params, **options)


class _DjangoConnection:
    """Django's connection of this thread, in whatever transaction it has open, read with
    psycopg's own JSON loaders (Django's leave jsonb as text for its ORM)."""

    closed = False

    def __init__(self, using: str) -> None:
        self.using = using

    def execute(self, query: str, params: Any = None) -> psycopg.Cursor:
        connection = connections[self.using]
        connection.ensure_connection()
        cursor = connection.connection.cursor()
        cursor.adapters.register_loader("jsonb", JsonbLoader)
        cursor.adapters.register_loader("json", JsonLoader)
        return cursor.execute(query, params)

    def close(self) -> None:
        """Django's to close."""


class QueueConnection:
    """A worker's connection for claim / finish / release. Not thread-safe: one owner thread."""

    def __init__(self, using: str, *, application_name: str = "django_tasks_q") -> None:
        self.using = using
        self.application_name = application_name
        self._conn: psycopg.Connection | _DjangoConnection | None = None

    @classmethod
    def in_djangos_transaction(cls, using: str) -> QueueConnection:
        """Statements on Django's own connection of this thread, inside its open transaction
        (django_tasks_q.testing runs tasks inside a test's transaction)."""
        shared = cls(using)
        shared._conn = _DjangoConnection(using)
        return shared

    def connect(self) -> psycopg.Connection:
        if self._conn is None or self._conn.closed:
            self._conn = psycopg.connect(
                **connection_params(self.using, self.application_name),
                autocommit=True,
                cursor_factory=_QueueCursor,
            )
            if _may_prepare(self.using, self._conn):
                # Plans stay what they were unprepared: chosen for each call's values (a
                # generic plan could walk the ready index differently under a backlog).
                self._conn.execute("SET plan_cache_mode = force_custom_plan")
                self._conn.prepare_threshold = PREPARE_THRESHOLD
        return self._conn

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def finish_and_claim(
        self,
        *,
        worker_id: str,
        outcomes: Sequence[Outcome] = (),
        queues: Sequence[str] | None = None,
        limit: int = 0,
        lease_seconds: float = 60.0,
        avoid: Sequence[int] = (),
        after: Sequence[ClaimPosition] = (),
        paused: Paused = NOTHING_PAUSED,
    ) -> FinishedAndClaimed:
        """Record ``outcomes`` and claim up to ``limit`` tasks, in one statement and one commit.

        Returns the ids whose outcome was recorded (the others' holder had lost the claim), the
        claimed tasks in claim order, the picked tasks cancelled instead of claimed (expired,
        or cancellation requested), and the picked tasks a limit held back: parked by a
        concurrency limit, throttled by a rate limit. All count towards ``limit``, so a short
        claim still means the queue is drained. Tasks in ``avoid`` are not claimed. The claim
        considers only rows after ``after``: one position, or with ``queues`` one per queue
        in the same order; empty means from the start.
        """
        # In id order: two workers' batches then lock the rows they finish, and the dependents
        # their triggers settle, in the same order, which makes deadlocks between them rare
        # (the worker records a batch again if one happens).
        outcomes = sorted(outcomes, key=_outcome_id)
        params: dict[str, Any] = {
            "worker_id": worker_id,
            "limit": limit,
            "lease_seconds": lease_seconds,
            "ids": [o.id for o in outcomes],
            "attempts": [o.attempt for o in outcomes],
            "statuses": [str(o.status) for o in outcomes],
            "results": [o.result_json for o in outcomes],
            "errors": [Jsonb(o.error) if o.error else None for o in outcomes],
            "max_attempts": [o.max_attempts for o in outcomes],
            "retry_delays": [float(o.retry_delay) for o in outcomes],
            "lost": [o.lost for o in outcomes],
            "avoid": list(avoid),
            "paused_queues": list(paused.queues),
            "paused_names": list(paused.task_names),
        }
        # The statement with only the parts this call needs: each part costs planning time.
        parts = ("finish_and_claim" if outcomes else "claim") if limit else "finish"
        queues = list(queues or ()) if limit else []
        if len(queues) > 1:
            statement, params["queues"] = sql(f"{parts}_from_queues"), queues
            floors = list(after) or [FIRST_POSITION] * len(queues)
            if len(floors) != len(queues):
                raise ValueError("`after` needs one claim position per queue.")
            params["floor_ranks"] = [floor.rank for floor in floors]
            params["floor_run_afters"] = [floor.run_after for floor in floors]
            params["floor_ids"] = [floor.id for floor in floors]
        else:
            if queues:
                statement, params["queue"] = sql(f"{parts}_from_queue"), queues[0]
            else:
                statement = sql(parts)
            floor = after[0] if after else FIRST_POSITION
            params["floor_rank"], params["floor_run_after"], params["floor_id"] = floor
        finished: set[int] = set()
        claimed: list[ClaimedTask] = []
        skipped: list[ClaimedTask] = []
        parked: list[ClaimedTask] = []
        throttled: list[ClaimedTask] = []
        by_kind = (None, claimed, skipped, parked, throttled)
        for kind, *row in self.connect().execute(statement, params).fetchall():
            if kind == 0:
                finished.add(row[0])
            else:
                by_kind[kind].append(ClaimedTask(*row))
        # The UPDATE returns rows in no particular order; run them in claim order.
        claimed.sort(key=_position)
        return FinishedAndClaimed(finished, claimed, skipped, parked, throttled)

    def paused(self) -> Paused:
        """What is paused now."""
        return _paused_from(self.connect().execute(sql("paused")).fetchall())

    def claim(
        self, *, worker_id: str, queues: Sequence[str] | None, limit: int, lease_seconds: float
    ) -> list[ClaimedTask]:
        return self.finish_and_claim(
            worker_id=worker_id, queues=queues, limit=limit, lease_seconds=lease_seconds
        ).claimed

    def finish(self, *, worker_id: str, outcomes: Sequence[Outcome]) -> set[int]:
        """Record outcomes; returns the ids actually updated (the others lost their claim)."""
        return self.finish_and_claim(worker_id=worker_id, outcomes=outcomes).finished

    def release(
        self, *, worker_id: str, ids: Sequence[int], delay: float = 0.0, notify: bool = True
    ) -> int:
        """Give back claimed tasks that did not start, due again in ``delay`` seconds (those
        whose cancellation was requested are CANCELLED instead). Returns how many changed."""
        if not ids:
            return 0
        params = {
            "worker_id": worker_id, "ids": list(ids), "listed": True, "delay": delay,
            "notify": notify,
        }  # fmt: skip
        return len(self.connect().execute(sql("release"), params).fetchall())

    def release_unknown(self, *, worker_id: str, known: set[int], notify: bool = True) -> int:
        """Return to READY the tasks held under ``worker_id`` that are not in ``known``."""
        params = {
            "worker_id": worker_id, "ids": sorted(known), "listed": False, "delay": 0.0,
            "notify": notify,
        }  # fmt: skip
        cursor = self.connect().execute(sql("release"), params)
        return len(cursor.fetchall())

    # -- workers: registration, heartbeat, recovery ----------------------------------------

    def register_worker(
        self, *, worker_id: str, name: str, hostname: str, pid: int,
        queues: Sequence[str] | None, concurrency: int,
    ) -> None:  # fmt: skip
        self.connect().execute(
            sql("worker_register"),
            {
                "worker_id": worker_id,
                "name": name,
                "hostname": hostname,
                "pid": pid,
                "queues": Jsonb(list(queues or [])),
                "concurrency": concurrency,
            },
        )

    def now(self) -> datetime:
        """The database's clock."""
        return self.connect().execute(sql("database_now")).fetchone()[0]

    def heartbeat(
        self,
        *,
        worker_id: str,
        lease_seconds: float,
        succeeded: int,
        failed: int,
        held: Collection[int] = (),
    ) -> tuple[bool, int, list[int], list[int]]:
        """Extend the leases of ``held`` (fenced on ``worker_id``). Returns whether the worker
        row exists, how many task leases were extended and the ids of held tasks whose
        cancellation was requested, and of those to terminate."""
        row = (
            self.connect()
            .execute(
                sql("heartbeat"),
                {
                    "worker_id": worker_id,
                    "lease_seconds": lease_seconds,
                    "succeeded": succeeded,
                    "failed": failed,
                    "ids": list(held),
                },
            )
            .fetchone()
        )
        return bool(row[0]), row[1], list(row[2]), list(row[3])

    def recover_lost(
        self,
        which: str,
        decide: Callable[[LostTask], tuple[str, int, dict[str, Any]]],
        **params: Any,
    ) -> list[tuple[LostTask, str]]:
        """Find lost attempts and record what ``decide`` says of each, in one transaction.

        ``which``: ``expired`` (lease ran out; takes ``limit``), ``predecessors`` (earlier
        processes under this worker's name; ``name``, ``worker_id``) or ``abandoned`` (given up
        by this worker; ``worker_id``, ``ids``). ``decide`` returns the new status, the
        max_attempts to store and the error entry. Returns each recorded attempt with its new
        status; rows another worker recorded first are left out.
        """
        conn = self.connect()
        with conn.transaction():
            rows = conn.execute(sql(f"lost_{which}"), params).fetchall()
            if not rows:
                return []
            width = len(TASK_COLUMNS)
            lost = [
                LostTask(ClaimedTask(*row[:width]), row[width], row[width + 1], row[width + 2])
                for row in rows
            ]
            decisions = [decide(item) for item in lost]
            recorded = conn.execute(
                sql("record_lost"),
                {
                    "ids": [item.task.id for item in lost],
                    "attempts": [item.task.attempt for item in lost],
                    "holders": [item.holder for item in lost],
                    "statuses": [status for status, _, _ in decisions],
                    "max_attempts": [max_attempts for _, max_attempts, _ in decisions],
                    "errors": [Jsonb(error) for _, _, error in decisions],
                    "notify": params.get("notify", True),
                },
            ).fetchall()
        done = {row[0] for row in recorded}
        return [
            (item, status)
            for item, (status, _, _) in zip(lost, decisions, strict=True)
            if item.task.id in done
        ]

    def mark_replaced(self, *, name: str, worker_id: str) -> list[str]:
        """Mark the rows of earlier processes under ``name`` stopped; returns their ids."""
        params = {"name": name, "worker_id": worker_id}
        return [row[0] for row in self.connect().execute(sql("worker_replaced"), params)]

    def stop_worker(self, *, worker_id: str, succeeded: int, failed: int) -> None:
        self.connect().execute(
            sql("worker_stop"),
            {"worker_id": worker_id, "succeeded": succeeded, "failed": failed},
        )

    def prune_workers(self, *, older_than: float) -> int:
        return self.connect().execute(sql("prune_workers"), {"older_than": older_than}).rowcount

    def prune_tasks(
        self, *, keep_successful: float | None, keep_failed: float | None, limit: int
    ) -> int:
        """Delete up to ``limit`` finished tasks past their retention; returns how many."""
        params = {"keep_successful": keep_successful, "keep_failed": keep_failed, "limit": limit}
        return self.connect().execute(sql("prune_tasks"), params).rowcount


def listen_connection(
    using: str,
    application_name: str | None = None,
    *,
    channel: str = NOTIFY_CHANNEL,
    also: Sequence[str] = (),
) -> psycopg.Connection:
    """A connection LISTENing on ``channel`` (the queue's by default) and the channels in
    ``also``; read it with ``conn.notifies()``."""
    channels = [channel, *also]
    for name in channels:
        if name not in (NOTIFY_CHANNEL, SCHEDULES_CHANNEL, CANCEL_CHANNEL, PAUSE_CHANNEL):
            raise ValueError(f"unknown channel {name!r}")
    conn = psycopg.connect(**connection_params(using, application_name), autocommit=True)
    for name in channels:
        conn.execute(f"LISTEN {name}")
    return conn


# -- schedules: beat's helpers on the caller's Django connection ----------------------------


def database_now(using: str) -> datetime:
    """The database's clock: every process that compares times must read the same one."""
    with connections[using].cursor() as cursor:
        cursor.execute(sql("database_now"))
        return cursor.fetchone()[0]


def notify_schedules_changed(using: str) -> None:
    """Wake every beat once the caller's transaction commits (NOTIFY is transactional)."""
    with connections[using].cursor() as cursor:
        cursor.execute(sql("notify_schedules"), {"channel": SCHEDULES_CHANNEL})


def lock_schedule_sync(using: str) -> None:
    """Serialise the sync of declared schedules across beats until the transaction ends."""
    with connections[using].cursor() as cursor:
        cursor.execute(sql("lock_schedule_sync"))
