"""The entry recorded in a task's ``errors`` for an attempt that did not succeed.

One definition for every path (the runner, the recovery of lost attempts, outcomes the
database refused). Building an entry never raises, whatever the exception does, and the entry
can always be stored: PostgreSQL's jsonb refuses NUL characters and lone surrogates, so they
are replaced by U+FFFD (and the entry says so), and very long texts are cut.
"""

from __future__ import annotations

import re
import traceback as traceback_module
from typing import Any

# Characters jsonb cannot hold: NUL, and UTF-16 surrogates (only valid in pairs, which a
# Python str never holds as such).
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")
REPLACEMENT = "\ufffd"
# Longest message and traceback kept, in characters: a 200 MB exception message must not make
# the outcome unstorable. The end of a traceback (where it was raised) is what is kept.
MAX_TEXT = 64 * 1024
REPLACED_NOTE = (
    "NUL characters and lone surrogates in this entry were replaced by U+FFFD so it could be stored"
)


def storable_text(text: str) -> tuple[str, bool]:
    """``text`` with the characters jsonb cannot store replaced; and whether any were."""
    if text.isascii() and "\x00" not in text:
        return text, False
    replaced, count = _UNSTORABLE.subn(REPLACEMENT, text)
    return replaced, bool(count)


def error_entry(exc: BaseException, *, attempt: int, worker_id: str) -> dict[str, Any]:
    """The entry for an attempt that ended with ``exc``. Never raises."""
    return described_entry(
        type_path=_type_path(exc),
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
    for key, text, cut_from_start in (
        ("worker_id", worker_id, False),
        ("type", type_path, False),
        ("message", message, False),
        ("traceback", traceback, True),
    ):
        text = _cut(str(text), keep_end=cut_from_start)
        entry[key], replaced = storable_text(text)
        any_replaced |= replaced
    if any_replaced:
        entry["replaced"] = REPLACED_NOTE
    return entry


def _cut(text: str, *, keep_end: bool) -> str:
    if len(text) <= MAX_TEXT:
        return text
    dropped = len(text) - MAX_TEXT
    if keep_end:
        return f"[{dropped} characters cut]\n" + text[-MAX_TEXT:]
    return text[:MAX_TEXT] + f" [{dropped} characters cut]"


def _type_path(exc: BaseException) -> str:
    kind = type(exc)
    try:
        return f"{kind.__module__}.{kind.__qualname__}"
    except Exception:
        return object.__repr__(kind)


def _message(exc: BaseException) -> str:
    try:
        message = str(exc)
        if isinstance(message, str):
            return message
        raise TypeError(f"__str__ returned {type(message).__name__}")
    except Exception as problem:
        return (
            f"<unprintable {type(exc).__name__}: str() raised {type(problem).__name__}: "
            f"{_safe_repr(problem)}>"
        )


def _safe_repr(value: BaseException) -> str:
    try:
        return str(value)
    except Exception:
        return "?"


def _traceback(exc: BaseException) -> str:
    try:
        return "".join(traceback_module.format_exception(exc))
    except Exception as problem:
        return f"<the traceback could not be formatted: {type(problem).__name__}>"
