"""The entry recorded in a task's ``errors`` for an attempt that did not succeed.

One definition for every path (the runner, the recovery of lost attempts, outcomes the
database refused). Building an entry never raises, whatever the exception does, and the entry
can always be stored: PostgreSQL's jsonb refuses NUL characters and lone surrogates, so they
are replaced by U+FFFD (and the entry says so), and very long texts are cut.
"""

from __future__ import annotations

import json
import re
import traceback as traceback_module
from typing import Any

from django_tasks_q.exceptions import TaskCancelled, TaskExpired

# Characters jsonb cannot hold: NUL, and UTF-16 surrogates (only valid in pairs, which a
# Python str never holds as such).
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")
REPLACEMENT = "\ufffd"
# Longest message and traceback kept, in characters: a 200 MB exception message must not make
# the outcome unstorable.
MAX_TEXT = 64 * 1024
# A traceback is cut in two steps. First each of its parts (one frame, or the exception's
# message) is cut to _PART, so that a huge message does not push the frames out. Then, if it is
# still too long (a deep recursion, a long chain), its middle is cut: the end, where the
# exception was raised, matters most, and _HEAD characters of the start are kept too.
_PART = MAX_TEXT // 4
_HEAD = MAX_TEXT // 4
REPLACED_NOTE = (
    "NUL characters and lone surrogates in this entry were replaced by U+FFFD so it could be stored"
)


def storable_text(text: str) -> tuple[str, bool]:
    """``text`` with the characters jsonb cannot store replaced by U+FFFD; and whether any
    were. The text returned is always a plain ``str``, even for a ``str`` subclass."""
    if type(text) is not str:
        text = str.__str__(text)  # the characters themselves: a subclass's methods may lie
    if text.isascii() and "\x00" not in text:
        return text, False
    replaced, count = _UNSTORABLE.subn(REPLACEMENT, text)
    return replaced, count > 0


def error_entry(exc: BaseException, *, attempt: int, worker_id: str) -> dict[str, Any]:
    """The entry for an attempt that ended with ``exc``. Never raises."""
    return described_entry(
        type_path=_type_path(type(exc)),
        message=_message(exc),
        attempt=attempt,
        worker_id=worker_id,
        traceback=_traceback(exc),
    )


def described_entry(
    *, type_path: str, message: str, attempt: int, worker_id: str, traceback: str = ""
) -> dict[str, Any]:
    """An entry not built from a live exception (a lost worker, an unknown task...)."""
    entry: dict[str, Any] = {"attempt": attempt}
    any_replaced = False
    for key, text in (
        ("worker_id", worker_id),
        ("type", type_path),
        ("message", message),
        ("traceback", traceback),
    ):
        text = _cut_traceback(_text(text)) if key == "traceback" else _cut(_text(text))
        entry[key], replaced = storable_text(text)
        any_replaced |= replaced
    if any_replaced:
        entry["replaced"] = REPLACED_NOTE
    return entry


NOT_STARTED_CANCELLED = "cancelled before it started"
NOT_STARTED_EXPIRED = "not started before it expired at"  # the statement adds the time


def sql_entries() -> dict[str, str]:
    """Entries the queue's statements write themselves (a claim that cancels a task instead of
    starting it, a release that does), as SQL jsonb literals. The statement adds the attempt,
    the worker id and the time, which only it knows; the rest is defined here, once."""
    entries = {
        "cancelled_entry": (TaskCancelled, NOT_STARTED_CANCELLED),
        "expired_entry": (TaskExpired, NOT_STARTED_EXPIRED),
    }
    literals = {}
    for name, (kind, message) in entries.items():
        entry = described_entry(
            type_path=_type_path(kind), message=message, attempt=0, worker_id=""
        )
        del entry["attempt"], entry["worker_id"]
        literals[name] = "'{}'::jsonb".format(json.dumps(entry).replace("'", "''"))
    # The expiry entry's message goes on with the time, which only the statement knows.
    literals["expired_message"] = "'{}'".format(NOT_STARTED_EXPIRED.replace("'", "''"))
    return literals


def _text(value: object) -> str:
    if isinstance(value, str):
        return str.__str__(value)
    try:
        text = str(value)
        if isinstance(text, str):
            return str.__str__(text)
    except BaseException:  # noqa: S110 - the fallback below says the text is missing
        pass
    return f"<unprintable {_type_name(type(value))}>"


def _cut(text: str) -> str:
    if len(text) <= MAX_TEXT:
        return text
    return f"{text[:MAX_TEXT]} [{len(text) - MAX_TEXT} characters cut]"


def _cut_traceback(text: str) -> str:
    if len(text) <= MAX_TEXT:
        return text
    tail = MAX_TEXT - _HEAD
    return f"{text[:_HEAD]}\n[{len(text) - MAX_TEXT} characters cut]\n{text[-tail:]}"


def _cut_part(part: str) -> str:
    if len(part) <= _PART:
        return part
    end = "\n" if part.endswith("\n") else ""
    return f"{part[:_PART]} [{len(part) - len(end) - _PART} characters cut]{end}"


# Everything below reads attributes of, or runs code from, the task's exception and its class:
# whatever that raises (SystemExit included) is caught, since the attempt has already ended and
# describing it must not end anything else. type.__repr__ is the fallback for names because it
# runs no code of the class's own.


def _type_path(kind: type) -> str:
    try:
        module, name = kind.__module__, kind.__qualname__
        if isinstance(module, str) and isinstance(name, str):
            return f"{module}.{name}"
    except BaseException:  # noqa: S110 - the fallback below runs no code of the class
        pass
    return type.__repr__(kind)


def _type_name(kind: type) -> str:
    try:
        name = kind.__qualname__
        if isinstance(name, str):
            return name
    except BaseException:  # noqa: S110 - the fallback below runs no code of the class
        pass
    return type.__repr__(kind)


def _message(exc: BaseException) -> str:
    try:
        return str.__str__(str(exc))  # __str__ may return a str subclass
    except BaseException as problem:
        return f"<unprintable {_type_name(type(exc))}: str() raised {_type_name(type(problem))}>"


def _traceback(exc: BaseException) -> str:
    try:
        parts = traceback_module.TracebackException.from_exception(exc, compact=True).format()
        return "".join(_cut_part(part) for part in parts)
    except BaseException as problem:
        reason = f"<the traceback could not be formatted: {_type_name(type(problem))}>"
    # The frames alone, which do not involve the exception's own code.
    try:
        frames = "".join(traceback_module.format_tb(exc.__traceback__))
    except BaseException:
        return reason
    return f"Traceback (most recent call last):\n{frames}{reason}\n"
