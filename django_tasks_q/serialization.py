"""Strict JSON for task arguments and results.

Arguments are checked at enqueue time so a task that could not be decoded identically by the
worker is refused before anything is written. No pickle, ever: what is stored is plain JSON.
"""

from __future__ import annotations

import json
import math
import re
import reprlib
import sys
from collections.abc import Mapping, Sequence
from typing import Any


class SerializationError(TypeError, ValueError):
    """A value cannot be stored as JSON without changing its meaning."""


# UTF-16 surrogates are only meaningful in pairs, which a Python str never holds as such: one
# in a str comes from decoding bytes with errors="surrogateescape", and jsonb refuses it.
_SURROGATE = re.compile("[\ud800-\udfff]")
# An int of at most this many bits has at most 603 digits, under the smallest limit
# sys.set_int_max_str_digits() accepts (640): only longer ints need counting their digits.
_SMALL_INT_BITS = 2000
# PostgreSQL's numeric, which jsonb numbers are, holds at most this many digits before the point.
_POSTGRES_MAX_DIGITS = 131072


class _Refused(Exception):
    """Raised inside the check, which builds no path while values are fine (the common case):
    the path is collected on the way out, and the message is built once, by :func:`_error`."""

    def __init__(self, problem: str, *, before: str = "") -> None:
        self.problem = problem  # follows the path in the message
        self.before = before  # precedes it
        self.steps: list[str] = []  # innermost first


def _error(refused: _Refused | RecursionError, where: str) -> SerializationError:
    if isinstance(refused, RecursionError):
        return SerializationError(
            f"{where} nests too deeply (or refers to itself) to be stored as JSON; use a "
            "flatter value, or store the structure elsewhere and pass its id."
        )
    path = where + "".join(reversed(refused.steps))
    return SerializationError(f"{refused.before}{path}{refused.problem}")


def _describe(value: Any) -> str:
    kind = type(value)
    try:
        module, name = kind.__module__, kind.__qualname__
        if isinstance(module, str) and isinstance(name, str):
            return name if module == "builtins" else f"{module}.{name}"
    except BaseException:  # noqa: S110 - a metaclass can make these attributes raise anything
        pass
    return type.__repr__(kind)  # runs no code of the value's own


def _text_problem(text: str) -> str:
    if "\x00" in text:
        return (
            " contains a NUL character (\\x00), which PostgreSQL cannot store in JSON; "
            "remove it or encode the value (for example as base64)."
        )
    return (
        " contains a lone surrogate (a code point between U+D800 and U+DFFF), which is not "
        "valid Unicode text and which PostgreSQL cannot store; decode the text properly "
        "(for example with errors='replace') or encode the value as base64."
    )


def _int_problem(value: int) -> str | None:
    python_limit = sys.get_int_max_str_digits()  # read each time: a program may change it
    most = min(python_limit, _POSTGRES_MAX_DIGITS) if python_limit else _POSTGRES_MAX_DIGITS
    if -(10**most) < value < 10**most:
        return None
    return (
        f" is an integer with more than {most} digits, too large to be stored as a JSON "
        "number; pass it as a string instead."
    )


def _check(value: Any) -> None:
    if isinstance(value, str):
        # ASCII text, nearly all of it, costs only the NUL test.
        if "\x00" in value or (not value.isascii() and _SURROGATE.search(value)):
            raise _Refused(_text_problem(value))
    elif value is None:
        return
    elif isinstance(value, int):  # bool included
        if value.bit_length() > _SMALL_INT_BITS and (problem := _int_problem(value)):
            raise _Refused(problem)
    elif isinstance(value, float):
        if not math.isfinite(value):
            raise _Refused(
                f" is {float.__repr__(value)}, which JSON cannot represent; "
                "pass a finite number or None instead."
            )
    elif isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise _Refused(
                    f" has a key {reprlib.repr(key)} of type {_describe(key)}; JSON object "
                    "keys must be strings (they would come back as strings)."
                )
            if "\x00" in key or (not key.isascii() and _SURROGATE.search(key)):
                raise _Refused(_text_problem(key), before=f"the key {reprlib.repr(key)} of ")
            try:
                _check(item)
            except _Refused as refused:
                refused.steps.append(f"[{str.__repr__(key)}]")
                raise
    elif isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            try:
                _check(item)
            except _Refused as refused:
                refused.steps.append(f"[{index}]")
                raise
    else:
        raise _Refused(
            f" is of type {_describe(value)}, which is not JSON-serialisable. "
            "Pass plain JSON values (str, int, float, bool, None, list, dict) such as an id "
            "instead of an object, and load the object inside the task."
        )


def check_json(value: Any, where: str) -> None:
    """Raise :class:`SerializationError` naming ``where`` if ``value`` is not plain JSON that
    PostgreSQL's jsonb can store.

    Accepted: ``None``, ``bool``, ``int``, finite ``float``, ``str`` without NUL characters or
    lone surrogates, ``list``/``tuple`` of accepted values and ``dict`` with such ``str`` keys.
    Tuples come back as lists.
    """
    try:
        _check(value)
    except (_Refused, RecursionError) as refused:
        raise _error(refused, where) from None


def check_arguments(args: Sequence[Any], kwargs: Mapping[str, Any]) -> None:
    """:func:`check_json` for each argument; the error names the argument."""
    # Each argument's name is only formatted when it is refused: this runs on every enqueue.
    for index, value in enumerate(args):
        try:
            _check(value)
        except (_Refused, RecursionError) as refused:
            raise _error(refused, f"argument {index}") from None
    for name, value in kwargs.items():
        try:
            _check(value)
        except (_Refused, RecursionError) as refused:
            raise _error(refused, f"keyword argument {name!r}") from None


# One encoder for every call: json.dumps() with options builds a new encoder each time.
_encode = json.JSONEncoder(separators=(",", ":"), allow_nan=False).encode


def dumps(value: Any) -> str:
    if not value and type(value) is dict:
        return "{}"  # the usual kwargs
    return _encode(value)


def result_to_json(value: Any) -> tuple[str | None, str | None]:
    """Encode a task's return value; returns ``(json, None)`` or ``(None, reason)``. Never
    raises: whatever a task returns, the worker records an outcome."""
    try:
        check_json(value, "the return value")
        return dumps(value), None
    except SerializationError as exc:
        return None, str(exc)
    except RecursionError as exc:  # the encoder's own limit, when the check's was not reached
        return None, str(_error(exc, "the return value"))
    # Code of the value's own runs here (a dict subclass's items(), a list subclass's
    # iteration), and whatever it raises, SystemExit included, must not escape to the worker.
    except BaseException as exc:
        return None, (
            f"the return value (of type {_describe(value)}) could not be encoded as JSON: "
            f"encoding it raised {_describe(exc)}"
        )
