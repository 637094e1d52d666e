"""Error entries are always built and always storable; arguments PostgreSQL cannot store are
refused before anything is written."""

import json

import pytest
from django.db import DataError, connection, transaction

from django_tasks_q.errors import MAX_TEXT, described_entry, error_entry, storable_text
from django_tasks_q.models import Task
from django_tasks_q.serialization import SerializationError, result_to_json
from tests.testapp import tasks


class Unprintable(Exception):
    def __str__(self):
        raise RuntimeError("no")


class Nasty(Exception):
    def __str__(self):
        return "NUL \x00 and a lone surrogate \ud800"


def stores(entry) -> bool:
    with connection.cursor() as cursor:
        cursor.execute("SELECT %s::jsonb", [json.dumps(entry)])
        return cursor.fetchone()[0] is not None


def test_an_ordinary_exception_gives_the_usual_entry():
    try:
        raise ValueError("bad order 7")
    except ValueError as exc:
        entry = error_entry(exc, attempt=2, worker_id="w-1")
    assert set(entry) == {"attempt", "worker_id", "type", "message", "traceback"}
    assert (entry["attempt"], entry["worker_id"]) == (2, "w-1")
    assert (entry["type"], entry["message"]) == ("builtins.ValueError", "bad order 7")
    assert entry["traceback"].endswith("ValueError: bad order 7\n")


def test_an_exception_whose_str_raises_still_gives_an_entry():
    entry = error_entry(Unprintable(), attempt=1, worker_id="w")
    assert entry["type"] == "tests.test_errors.Unprintable"
    assert entry["message"].startswith("<unprintable Unprintable: str() raised RuntimeError")


@pytest.mark.django_db
def test_nul_and_lone_surrogates_are_replaced_and_the_entry_says_so():
    raw = {"attempt": 1, "message": str(Nasty())}
    with pytest.raises(DataError), transaction.atomic():  # what the database does without it
        stores(raw)
    entry = error_entry(Nasty(), attempt=1, worker_id="w")
    assert entry["message"] == "NUL \ufffd and a lone surrogate \ufffd"
    assert "replaced by U+FFFD" in entry["replaced"]
    assert stores(entry)


def test_huge_texts_are_cut_keeping_the_end_of_the_traceback():
    entry = described_entry(type_path="x.Y", message="m" * (MAX_TEXT + 10), attempt=1,
                            worker_id="w", traceback="t" * MAX_TEXT + "END")  # fmt: skip
    assert entry["message"].endswith("[10 characters cut]")
    assert entry["traceback"].endswith("END") and entry["traceback"].startswith("[3 characters")


def test_storable_text_leaves_ordinary_text_alone():
    assert storable_text("plain ascii") == ("plain ascii", False)
    assert storable_text("déjà vu 😀") == ("déjà vu 😀", False)


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("NUL \x00", "NUL character"),
        ("surrogate \udc80", "lone surrogate"),
        (10**5000, "could not be encoded"),
    ],
    ids=["nul", "surrogate", "huge-int"],
)
def test_a_return_value_that_cannot_be_stored_is_described_never_raised(value, reason):
    assert result_to_json(value)[0] is None
    assert reason in result_to_json(value)[1]


def test_a_self_referencing_return_value_is_described_never_raised():
    value = []
    value.append(value)
    assert result_to_json(value) == (
        None,
        "the return value nests too deeply (or contains itself) to be stored as JSON",
    )


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("args", "kwargs", "where"),
    [
        ((["ok", "bad \ud800"],), {}, "argument 0[1]"),
        ((), {"data": {"key \udfff": 1}}, "a key of keyword argument 'data'"),
        ((), {"data": {"key \x00": 1}}, "a key of keyword argument 'data'"),
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
        assert Task.objects.count() == 0  # the transaction is still usable, and nothing written
