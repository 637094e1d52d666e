"""A worker's options check themselves where they enter (no database)."""

import os
import socket
from dataclasses import FrozenInstanceError

import pytest

from django_tasks_q.backend import get_backend
from django_tasks_q.worker import Worker, WorkerOptions


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"concurrency": 0}, "concurrency must be at least 1, got 0"),
        ({"pool": "processes", "threads": 0}, "threads must be at least 1, got 0"),
        ({"batch_size": 0}, "batch_size must be at least 1, got 0"),
        ({"poll_interval": 0}, "poll_interval must be > 0 seconds, got 0"),
        ({"prefetch": -1}, r"prefetch must be >= 0 or None \(adaptive\), got -1"),
        ({"grace_period": -1}, "grace period must be >= 0 seconds or None, got -1"),
        ({"pool": "fork"}, "pool must be 'threads' or 'processes', got 'fork'"),
        ({"threads": 2}, "threads per child is for the process pool"),
        ({"pool": "processes", "max_tasks_per_child": 0}, "max_tasks_per_child must be > 0"),
        ({"pool": "processes", "max_memory_per_child": -5}, "max_memory_per_child must be > 0"),
        ({"name": "w" * 91}, "worker name must be at most 90 characters, got 91"),
        ({"keep_successful": 0}, "keep_successful must be None or > 0 seconds, got 0"),
        ({"keep_failed": -1}, "keep_failed must be None or > 0 seconds, got -1"),
        ({"heartbeat_interval": 0}, r"heartbeat interval \(0s\) must be > 0 and below the lease"),
        ({"heartbeat_interval": 60, "lease_seconds": 60}, "must be > 0 and below the lease"),
    ],
)
def test_an_invalid_option_is_refused_naming_the_value(values, message):
    with pytest.raises(ValueError, match=message):
        WorkerOptions(**values)


def test_an_unknown_option_is_refused_with_what_it_likely_meant():
    with pytest.raises(
        TypeError, match="unknown worker option 'concurency'; did you mean 'concurrency'"
    ):
        WorkerOptions.from_keywords(concurency=2)
    with pytest.raises(TypeError, match=r"unknown worker option 'speed' \(known: queues, "):
        WorkerOptions.from_keywords(speed=2)


def test_capacity_is_processes_times_threads_each():
    assert WorkerOptions(pool="processes", concurrency=3, threads=4).capacity == 12
    assert WorkerOptions(pool="threads", concurrency=3).capacity == 3


def test_a_worker_without_a_name_is_named_after_its_host_and_process():
    expected = f"{socket.gethostname()}-{os.getpid()}"
    assert WorkerOptions().name == expected
    assert WorkerOptions(name=None).name == expected


def test_queues_are_kept_as_a_tuple_and_none_means_all():
    assert WorkerOptions(queues=["a", "b"]).queues == ("a", "b")
    assert WorkerOptions(queues=[]).queues is None
    assert WorkerOptions(queues=["a"]).queue_names == "a"
    assert WorkerOptions().queue_names == "*"


def test_options_cannot_change_once_checked():
    options = WorkerOptions()
    with pytest.raises(FrozenInstanceError):
        options.concurrency = 0  # type: ignore[misc]


def test_a_worker_takes_its_options_as_keywords_or_as_an_object():
    by_keywords = Worker(backend=get_backend(), concurrency=2, listen=False, name="w")
    by_object = Worker(
        backend=get_backend(), options=WorkerOptions(concurrency=2, listen=False, name="w")
    )
    assert by_keywords.options == by_object.options
    assert by_keywords.name == "w"
    assert by_keywords.worker_id.startswith("w-")


def test_a_worker_refuses_an_options_object_and_keywords_together():
    with pytest.raises(TypeError, match="not both"):
        Worker(backend=get_backend(), options=WorkerOptions(), concurrency=2)


def test_a_worker_refuses_invalid_keyword_options():
    with pytest.raises(ValueError, match="concurrency must be at least 1"):
        Worker(backend=get_backend(), concurrency=0)
