"""Error entries are always built and always storable; arguments PostgreSQL cannot store are
refused before anything is written."""

import json
import sys

import pytest
from django.db import DataError, connection, transaction

from django_tasks_q.errors import MAX_TEXT, described_entry, error_entry, storable_text
from django_tasks_q.models import Task
from django_tasks_q.serialization import SerializationError, result_to_json
from tests.testapp import tasks
from tests.testapp.models import Note

KEYS = {"attempt", "worker_id", "type", "message", "traceback"}


class Unprintable(Exception):
    def __str__(self):
        raise RuntimeError("no")


class ExitingStr(Exception):
    def __str__(self):
        raise SystemExit(1)


class Nasty(Exception):
    def __str__(self):
        return "NUL \x00 and a lone surrogate \ud800"


class BadRepr(Exception):
    def __repr__(self):
        raise RuntimeError("no")


class HostileNotes(Exception):
    @property
    def __notes__(self):
        raise SystemExit(1)


class Cloak(type):
    def __getattribute__(cls, name):
        if name in ("__module__", "__qualname__"):
            raise SystemExit(1)
        return super().__getattribute__(name)


class Cloaked(Exception, metaclass=Cloak):
    pass


class ExitingItems(dict):
    def items(self):
        raise SystemExit(1)


def raised(exc: BaseException) -> BaseException:
    try:
        raise exc
    except BaseException as caught:
        return caught


def stores(entry) -> bool:
    with connection.cursor() as cursor:
        cursor.execute("SELECT %s::jsonb", [json.dumps(entry)])
        return cursor.fetchone()[0] is not None


def test_an_ordinary_exception_gives_the_usual_entry():
    exc = raised(ValueError("bad order 7"))
    entry = error_entry(exc, attempt=2, worker_id="w-1")
    assert set(entry) == KEYS
    assert (entry["attempt"], entry["worker_id"]) == (2, "w-1")
    assert (entry["type"], entry["message"]) == ("builtins.ValueError", "bad order 7")
    assert entry["traceback"].startswith("Traceback (most recent call last):\n")
    assert "raise exc" in entry["traceback"]
    assert entry["traceback"].endswith("ValueError: bad order 7\n")


def test_an_exception_whose_str_raises_still_gives_an_entry():
    entry = error_entry(raised(Unprintable()), attempt=1, worker_id="w")
    assert set(entry) == KEYS
    assert entry["type"] == "tests.test_errors.Unprintable"
    assert entry["message"] == "<unprintable Unprintable: str() raised RuntimeError>"
    assert "raise exc" in entry["traceback"]


def test_an_exception_whose_str_raises_system_exit_still_gives_an_entry():
    entry = error_entry(ExitingStr(), attempt=1, worker_id="w")
    assert entry["message"] == "<unprintable ExitingStr: str() raised SystemExit>"


def test_an_exception_whose_class_hides_its_name_is_named_by_its_repr():
    entry = error_entry(Cloaked("x"), attempt=1, worker_id="w")
    assert entry["type"] == "<class 'tests.test_errors.Cloaked'>"
    assert entry["message"] == "x"


def test_a_traceback_that_cannot_be_formatted_keeps_its_frames_and_says_so():
    entry = error_entry(raised(HostileNotes("x")), attempt=1, worker_id="w")
    assert entry["traceback"].startswith("Traceback (most recent call last):\n")
    assert "raise exc" in entry["traceback"]
    assert entry["traceback"].endswith("<the traceback could not be formatted: SystemExit>\n")
    assert entry["message"] == "x"


@pytest.mark.parametrize(
    "exc",
    [Unprintable(), ExitingStr(), Nasty(), BadRepr("r"), HostileNotes("n"), Cloaked("c")],
    ids=lambda exc: type(exc).__name__,
)
def test_any_exception_gives_an_entry_of_strings_that_json_can_encode(exc):
    for exception in (exc, raised(exc)):
        entry = error_entry(exception, attempt=1, worker_id="w")
        assert KEYS <= set(entry) <= {*KEYS, "replaced"}
        assert all(isinstance(entry[key], str) for key in KEYS - {"attempt"})
        json.dumps(entry)


@pytest.mark.django_db
def test_nul_and_lone_surrogates_are_replaced_and_the_entry_says_so():
    raw = {"attempt": 1, "message": str(Nasty())}
    with pytest.raises(DataError), transaction.atomic():  # what the database does without it
        stores(raw)
    entry = error_entry(Nasty(), attempt=1, worker_id="w")
    assert entry["message"] == "NUL \ufffd and a lone surrogate \ufffd"
    assert entry["replaced"] == (
        "NUL characters and lone surrogates in this entry were replaced by U+FFFD so it could be "
        "stored"
    )
    assert stores(entry)


@pytest.mark.django_db
@pytest.mark.parametrize(
    "field", ["type_path", "message", "worker_id", "traceback"], ids=lambda field: field
)
@pytest.mark.parametrize("bad", ["\x00", "\udfff", "\ud83d\ude00"], ids=["nul", "low", "pair"])
def test_every_text_of_an_entry_is_made_storable(field, bad):
    fields = {"type_path": "x.Y", "message": "m", "worker_id": "w", "traceback": "t"}
    fields[field] = f"before {bad} after"
    if bad != "\ud83d\ude00":  # two surrogates in a row: jsonb would store them as one emoji
        with pytest.raises(DataError), transaction.atomic():
            stores({**fields, "attempt": 1})
    entry = described_entry(attempt=1, **fields)
    stored_key = "type" if field == "type_path" else field
    assert entry[stored_key] == "before " + "\ufffd" * len(bad) + " after"
    assert "replaced" in entry
    assert stores(entry)


def test_an_entry_without_unstorable_characters_says_nothing_was_replaced():
    entry = described_entry(type_path="x.Y", message="déjà vu 😀", attempt=3, worker_id="w")
    assert entry == {
        "attempt": 3,
        "worker_id": "w",
        "type": "x.Y",
        "message": "déjà vu 😀",
        "traceback": "",
    }


def fail_with(message: str) -> BaseException:
    try:
        raise ValueError(message)
    except ValueError as exc:
        return exc


def test_a_huge_message_is_cut_and_the_traceback_keeps_its_frames():
    entry = error_entry(fail_with("m" * (4 * MAX_TEXT)), attempt=1, worker_id="w")
    assert entry["message"] == "m" * MAX_TEXT + f" [{3 * MAX_TEXT} characters cut]"
    assert len(entry["traceback"]) < MAX_TEXT
    assert "in fail_with\n    raise ValueError(message)\n" in entry["traceback"]
    assert entry["traceback"].endswith(" characters cut]\n")


def test_a_huge_traceback_keeps_its_start_and_its_end():
    traceback = "HEAD" + "t" * MAX_TEXT + "END"
    entry = described_entry(
        type_path="x.Y", message="m", attempt=1, worker_id="w", traceback=traceback
    )
    assert entry["traceback"].startswith("HEAD")
    assert "\n[7 characters cut]\n" in entry["traceback"]
    assert entry["traceback"].endswith("END")
    assert len(entry["traceback"]) == MAX_TEXT + len("\n[7 characters cut]\n")


def test_storable_text_leaves_ordinary_text_alone():
    assert storable_text("plain ascii") == ("plain ascii", False)
    assert storable_text("déjà vu 😀") == ("déjà vu 😀", False)


def test_storable_text_replaces_nul_and_surrogates_and_says_so():
    assert storable_text("a\x00b") == ("a\ufffdb", True)
    assert storable_text("é\ud800\udfff") == ("é\ufffd\ufffd", True)


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("NUL \x00", "the return value contains a NUL character"),
        ("surrogate \udc80", "the return value contains a lone surrogate"),
        (["fine", {"key \ud800": 1}], "the key 'key \\ud800' of the return value[1] contains a"),
        (
            [0, 10 ** sys.get_int_max_str_digits()],
            f"the return value[1] is an integer with more than {sys.get_int_max_str_digits()} "
            "digits, too large to be stored as a JSON number",
        ),
        (
            ExitingItems(a=1),
            "the return value (of type tests.test_errors.ExitingItems) could not be encoded as "
            "JSON: encoding it raised SystemExit",
        ),
    ],
    ids=["nul", "surrogate", "surrogate-key", "huge-int", "hostile-dict"],
)
def test_a_return_value_that_cannot_be_stored_is_described_never_raised(value, reason):
    result, problem = result_to_json(value)
    assert result is None
    assert problem.startswith(reason)


def test_a_self_referencing_return_value_is_described_never_raised():
    value = []
    value.append(value)
    assert result_to_json(value) == (
        None,
        "the return value nests too deeply (or refers to itself) to be stored as JSON; use a "
        "flatter value, or store the structure elsewhere and pass its id.",
    )


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("args", "kwargs", "where"),
    [
        ((["ok", "bad \ud800"],), {}, "argument 0[1] contains a lone surrogate"),
        ((), {"data": {"key \udfff": 1}}, "the key 'key \\udfff' of keyword argument 'data' "),
        ((), {"data": {"key \x00": 1}}, "the key 'key \\x00' of keyword argument 'data' "),
    ],
    ids=["surrogate-in-list", "surrogate-in-key", "nul-in-key"],
)
def test_arguments_postgresql_cannot_store_are_refused_before_anything_is_written(
    args, kwargs, where
):
    with transaction.atomic():
        with pytest.raises(SerializationError, match=r"contains a (lone surrogate|NUL)") as info:
            tasks.record.apply_async(args, kwargs)
        assert str(info.value).startswith(where)
        assert Task.objects.count() == 0  # nothing written
        Note.objects.create(text="the transaction is still usable")
    assert Note.objects.count() == 1
