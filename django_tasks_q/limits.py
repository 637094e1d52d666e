"""Concurrency and rate limits: what a task's row carries so that every claim obeys them.

A task declares them (``@background_task(concurrency=..., rate_limit=..., limit_by=...)``) and
a queue gets them from ``TASKS_Q["QUEUE_LIMITS"]``. When a task is enqueued this module turns
them into keys written on its row; migration 0009's triggers enforce them where a claim makes
the row RUNNING, for every worker at once (docs/flow-control.md).

Keys: ``task:<name>`` for a limit of the task as a whole, ``task:<name>:<value>`` for one per
value of ``limit_by``, ``queue:<name>`` for a queue's.
"""

from __future__ import annotations

import inspect
import json
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from uuid import UUID

from django_tasks_q.compat import InvalidTask
from django_tasks_q.conf import SETTING_NAME
from django_tasks_q.conf import settings as conf
from django_tasks_q.exceptions import LimitError

QUEUE_LIMIT_KEYS = ("concurrency", "rate_limit")
_RATE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(?:/\s*([smh]))?\s*$")
_PERIODS = {"s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}
# A limit_by value becomes part of a key; keys are compared whole, so keep them short.
MAX_KEY_LENGTH = 300


# Stands for what a workflow step receives from its dependencies when it is released (its
# first arguments): a limit_by cannot read it at enqueue.
RECEIVED = object()
RECEIVED_ARGUMENTS = {"result": 1, "results": 1, "error": 2}


def parse_rate(value: Any, where: str) -> float:
    """Seconds between two starts for a rate in Celery's syntax: ``"10/s"``, ``"100/m"``,
    ``"1000/h"``, or a number of starts per second. Raises InvalidTask naming ``where``."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        per_second = float(value)
    elif isinstance(value, str) and (match := _RATE.match(value)):
        per_second = float(match[1]) / _PERIODS[match[2]]
    else:
        raise InvalidTask(
            f"{where}: rate_limit must be like '10/s', '100/m' or '1000/h' (starts per second, "
            f"minute or hour), got {value!r}."
        )
    if per_second <= 0:
        raise InvalidTask(f"{where}: rate_limit must allow at least one start, got {value!r}.")
    return 1.0 / per_second


def check_concurrency(value: Any, where: str) -> None:
    if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
        raise InvalidTask(
            f"{where}: concurrency must be a whole number >= 1 (the most running at once across "
            f"every worker) or None, got {value!r}."
        )


def check_limit_by(
    func: Callable[..., Any],
    limit_by: Any,
    takes_context: bool,
    where: str,
    *,
    option: str = "limit_by",
) -> None:
    """``limit_by`` (or ``fair_by``, the ``option``) names a parameter of ``func`` or is a
    callable."""
    if limit_by is None:
        return
    if isinstance(limit_by, str):
        parameters = list(inspect.signature(func).parameters.values())
        if takes_context:
            parameters = parameters[1:]
        names = [p.name for p in parameters if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
        if limit_by not in names:
            raise InvalidTask(
                f"{where}: {option}={limit_by!r} is not a parameter of the task "
                f"({', '.join(names) or 'it takes none'}); name one, or pass a function of the "
                "task's arguments that returns the key."
            )
    elif not callable(limit_by):
        raise InvalidTask(
            f"{where}: {option} must be the name of a parameter or a function of the task's "
            f"arguments, got {limit_by!r}."
        )


@dataclass(frozen=True, slots=True)
class Limits:
    """What one enqueued row carries: key -> most running at once, key -> seconds between
    two starts."""

    concurrency: dict[str, int] = field(default_factory=dict)
    rate: dict[str, float] = field(default_factory=dict)
    fair_key: str | None = None  # "<queue>:<fair_by value>", for a task of a fair queue
    fair_turn: int | None = None  # its key's tasks READY at once: TASKS_Q["FAIR_TURN"]

    def columns(self) -> dict[str, Any]:
        """The row's columns, limits as JSON text; NULL when empty, so the triggers skip the
        row."""
        return {
            "concurrency_limits": json.dumps(self.concurrency) if self.concurrency else None,
            "rate_limits": json.dumps(self.rate) if self.rate else None,
            "fair_key": self.fair_key,
            "fair_turn": self.fair_turn,
        }


NO_LIMITS = Limits()


def queue_limits() -> dict[str, dict[str, Any]]:
    value = conf.QUEUE_LIMITS
    return value if isinstance(value, Mapping) else {}


def may_be_limited(task: Any, queue: str) -> bool:
    """Whether tasks of ``task`` in ``queue`` carry any limit."""
    return (
        getattr(task, "concurrency", None) is not None
        or getattr(task, "rate_limit", None) is not None
        or getattr(task, "fair_by", None) is not None
        or bool(queue_limits().get(queue))
    )


def limits_for(task: Any, queue: str, args: Sequence[Any], kwargs: Mapping[str, Any]) -> Limits:
    """The limits of one call of ``task`` in ``queue``. Raises LimitError if its
    ``limit_by`` or ``fair_by`` fails for these arguments."""
    if not may_be_limited(task, queue):
        return NO_LIMITS
    concurrency = getattr(task, "concurrency", None)
    rate_limit = getattr(task, "rate_limit", None)
    fair_by = getattr(task, "fair_by", None)
    of_queue = queue_limits().get(queue)
    fair_key = None
    if fair_by is not None:
        fair_key = f"{queue}:{limit_value(task, fair_by, args, kwargs, option='fair_by')}"
    found = Limits(fair_key=fair_key, fair_turn=conf.FAIR_TURN if fair_key else None)
    if concurrency is not None or rate_limit is not None:
        key = f"task:{task.name}"
        limit_by = getattr(task, "limit_by", None)
        if limit_by is not None:
            key = f"{key}:{limit_value(task, limit_by, args, kwargs)}"
        if concurrency is not None:
            found.concurrency[key] = concurrency
        if rate_limit is not None:
            found.rate[key] = parse_rate(rate_limit, f"Task {task.name}")
    if of_queue:
        where = f"{SETTING_NAME}['QUEUE_LIMITS'][{queue!r}]"
        if of_queue.get("concurrency") is not None:
            check_concurrency(of_queue["concurrency"], where)
            found.concurrency[f"queue:{queue}"] = of_queue["concurrency"]
        if of_queue.get("rate_limit") is not None:
            found.rate[f"queue:{queue}"] = parse_rate(of_queue["rate_limit"], where)
    return found


def limit_value(
    task: Any,
    limit_by: Any,
    args: Sequence[Any],
    kwargs: Mapping[str, Any],
    *,
    option: str = "limit_by",
) -> str:
    """The key ``limit_by`` (or ``fair_by``, the ``option``) gives for one call, as text."""
    where = f"Task {task.name}: {option}"
    if isinstance(limit_by, str):
        parameters = inspect.signature(task.func).parameters
        if getattr(task, "takes_context", False):
            parameters = dict(list(parameters.items())[1:])
        try:
            bound = inspect.Signature(list(parameters.values())).bind_partial(*args, **kwargs)
        except TypeError as exc:
            raise LimitError(
                f"{where}={limit_by!r}: the arguments do not fit the task: {exc}."
            ) from None
        if limit_by not in bound.arguments or bound.arguments[limit_by] is RECEIVED:
            default = parameters[limit_by].default
            if default is inspect.Parameter.empty:
                raise LimitError(
                    f"{where}={limit_by!r}: this call gives no value for {limit_by!r}; pass it "
                    "when enqueueing (a workflow step that receives it from another step "
                    "cannot be limited by it)."
                )
            value = default
        else:
            value = bound.arguments[limit_by]
    else:
        if any(arg is RECEIVED for arg in args):
            raise LimitError(
                f"{where} is a function, which cannot run for a workflow step that receives "
                "another step's result; name a parameter given when enqueueing instead."
            )
        try:
            value = limit_by(*args, **kwargs)
        except Exception as exc:
            raise LimitError(
                f"{where} raised {type(exc).__name__}: {exc} (nothing was enqueued)."
            ) from exc
    if isinstance(value, bool) or not isinstance(value, (str, int, UUID)):
        raise LimitError(
            f"{where} gave {value!r}; a key must be a string, an int or a UUID, e.g. a "
            "customer's id."
        )
    text = str(value)
    if not text or len(text) > MAX_KEY_LENGTH:
        raise LimitError(
            f"{where} gave a key of {len(text)} characters; it must have 1 to {MAX_KEY_LENGTH}."
        )
    return text


def check_queue_limits(value: Any) -> list[str]:
    """What is wrong with a ``TASKS_Q["QUEUE_LIMITS"]`` value, one message each."""
    where = f"{SETTING_NAME}['QUEUE_LIMITS']"
    if not isinstance(value, Mapping):
        return [f"{where} must be a dict: queue -> {{'concurrency': n, 'rate_limit': '10/s'}}."]
    problems: list[str] = []
    for queue, limits in value.items():
        entry = f"{where}[{queue!r}]"
        if not isinstance(limits, Mapping):
            problems.append(f"{entry} must be a dict with 'concurrency' and/or 'rate_limit'.")
            continue
        unknown = set(limits) - set(QUEUE_LIMIT_KEYS)
        if unknown:
            problems.append(
                f"{entry} has unknown keys {sorted(unknown)}; it takes 'concurrency' and "
                "'rate_limit'."
            )
        try:
            check_concurrency(limits.get("concurrency"), entry)
            if limits.get("rate_limit") is not None:
                parse_rate(limits["rate_limit"], entry)
        except InvalidTask as exc:
            problems.append(str(exc))
    return problems
