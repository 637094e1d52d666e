"""Strict JSON for task arguments and results.

Arguments are checked at enqueue time so a task that could not be decoded identically by the
worker is refused before anything is written. No pickle, ever: what is stored is plain JSON.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence
from typing import Any


class SerializationError(TypeError, ValueError):
    """A value cannot be stored as JSON without changing its meaning."""


def _describe(value: Any) -> str:
    kind = type(value)
    return (
        kind.__qualname__
        if kind.__module__ == "builtins"
        else f"{kind.__module__}.{kind.__qualname__}"
    )


_SURROGATE = re.compile("[\ud800-\udfff]")


def _check_text(text: str, where: str) -> None:
    if "\x00" in text:
        raise SerializationError(
            f"{where} contains a NUL character (\\x00), which PostgreSQL cannot store in "
            "JSON; remove it or encode the value (for example as base64)."
        )
    if not text.isascii() and _SURROGATE.search(text):
        raise SerializationError(
            f"{where} contains a lone surrogate (a code point between U+D800 and U+DFFF), "
            "which is not valid Unicode text and which PostgreSQL cannot store; decode the "
            "text properly (for example with errors='replace') or encode the value as base64."
        )


def check_json(value: Any, where: str) -> None:
    """Raise :class:`SerializationError` naming ``where`` if ``value`` is not plain JSON.

    Accepted: ``None``, ``bool``, ``int``, finite ``float``, ``str``, ``list``/``tuple`` of
    accepted values and ``dict`` with ``str`` keys. Tuples come back as lists.
    """
    if isinstance(value, str):
        _check_text(value, where)
        return
    if value is None or isinstance(value, (bool, int)):
        return
    if isinstance(value, float):
        if not math.isfinite(value):
            raise SerializationError(
                f"{where} is {value!r}, which JSON cannot represent; "
                "pass a finite number or None instead."
            )
        return
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise SerializationError(
                    f"{where} has a key {key!r} of type {_describe(key)}; JSON object keys "
                    "must be strings (they would come back as strings)."
                )
            _check_text(key, f"a key of {where}")
            check_json(item, f"{where}[{key!r}]")
        return
    if isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            check_json(item, f"{where}[{index}]")
        return
    raise SerializationError(
        f"{where} is of type {_describe(value)}, which is not JSON-serialisable. "
        "Pass plain JSON values (str, int, float, bool, None, list, dict) such as an id "
        "instead of an object, and load the object inside the task."
    )


def check_arguments(args: Sequence[Any], kwargs: Mapping[str, Any]) -> None:
    for index, value in enumerate(args):
        check_json(value, f"argument {index}")
    for name, value in kwargs.items():
        check_json(value, f"keyword argument {name!r}")


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
    except RecursionError:
        return None, ("the return value nests too deeply (or contains itself) to be stored as JSON")
    except ValueError as exc:  # e.g. an int with more digits than Python converts to text
        return None, f"the return value could not be encoded as JSON: {exc}"
    except Exception as exc:
        return None, (f"the return value could not be encoded as JSON: {type(exc).__name__}: {exc}")
