"""How many tasks a worker claims at once, on its own (no database)."""

from django_tasks_q.worker.claim_sizer import RECORD_WITHIN, SPARE_BELOW, ClaimSizer


def test_idle_executors_get_a_claim_for_their_capacity_and_the_prefetch():
    sizer = ClaimSizer(capacity=4, batch_size=50, prefetch=2)
    assert sizer.limit(held=0) == 6


def test_a_claim_is_never_larger_than_a_batch():
    sizer = ClaimSizer(capacity=100, batch_size=10, prefetch=0)
    assert sizer.limit(held=0) == 10


def test_nothing_is_claimed_while_capacity_and_prefetch_are_held():
    sizer = ClaimSizer(capacity=2, batch_size=10, prefetch=3)
    assert sizer.limit(held=5) == 0
    assert sizer.limit(held=7) == 0


def test_a_busy_worker_refills_its_prefetch_only_once_half_a_batch_has_room():
    sizer = ClaimSizer(capacity=1, batch_size=10, prefetch=10)
    assert sizer.limit(held=7) == 0  # 4 free: not worth a round trip yet
    assert sizer.limit(held=6) == 5


def test_a_claim_riding_on_recorded_outcomes_fills_whatever_room_there_is():
    # The statement goes to the database anyway: even one free place is worth claiming.
    sizer = ClaimSizer(capacity=1, batch_size=10, prefetch=10)
    assert sizer.limit(held=10, riding=True) == 1
    assert sizer.limit(held=11, riding=True) == 0
    assert ClaimSizer(capacity=100, batch_size=10, prefetch=0).limit(held=0, riding=True) == 10


def test_an_executor_with_nothing_to_do_always_gets_work():
    sizer = ClaimSizer(capacity=4, batch_size=10, prefetch=10)
    assert sizer.limit(held=3) == 10


def test_the_adaptive_prefetch_is_zero_until_a_task_has_finished():
    sizer = ClaimSizer(capacity=4, batch_size=50, prefetch=None)
    sizer.observe_round_trip(0.01)
    assert sizer.prefetch() == 0
    assert sizer.limit(held=0) == 4


def test_the_adaptive_prefetch_covers_what_the_executors_finish_until_the_next_claim():
    sizer = ClaimSizer(capacity=4, batch_size=50, prefetch=None)
    for _ in range(200):  # the round-trip average starts at zero
        sizer.observe_round_trip(0.01)
    # 5 ms tasks: while an outcome waits up to 3 ms and the next claim takes a 10 ms round
    # trip, each of the 4 executors finishes 2.6 tasks: 11 in all, plus a spare each.
    sizer.observe_duration(0.005)
    assert sizer.prefetch() == 4 + 11


def test_the_adaptive_prefetch_is_capped_at_two_batches():
    # One batch for the slots to work through while the statement that records the other's
    # outcomes and claims its replacement is on its way.
    sizer = ClaimSizer(capacity=4, batch_size=5, prefetch=None)
    sizer.observe_round_trip(1.0)
    sizer.observe_duration(0.001)
    assert sizer.prefetch() == 2 * 5
    assert sizer.limit(held=0) == 5  # a claim still asks for one batch at most


def test_long_tasks_are_not_hoarded():
    sizer = ClaimSizer(capacity=4, batch_size=50, prefetch=None)
    sizer.observe_round_trip(0.002)
    sizer.observe_duration(10.0)
    assert sizer.prefetch() == 0


def test_the_averages_follow_recent_samples():
    sizer = ClaimSizer(capacity=1, batch_size=50, prefetch=None)
    sizer.observe_duration(1.0)
    for _ in range(50):
        sizer.observe_duration(0.1)
    assert abs(sizer.mean_duration - 0.1) < 0.01


def test_short_tasks_keep_a_spare_for_every_slot_and_what_ends_before_the_next_claim():
    # 10 ms tasks on a 1 ms round trip: slots started together end together, and each must
    # find its next task already held; and the claim that replaces them comes back up to
    # 4 ms later (3 ms waiting to record an outcome, then the round trip), by when 4 x 0.4
    # more tasks have ended.
    sizer = ClaimSizer(capacity=4, batch_size=50, prefetch=None)
    for _ in range(200):
        sizer.observe_round_trip(0.001)
    sizer.observe_duration(0.010)
    assert sizer.prefetch() == 4 + 2
    assert sizer.limit(held=4) == 6


def test_tasks_of_a_quarter_second_or_more_keep_no_spare():
    sizer = ClaimSizer(capacity=4, batch_size=50, prefetch=None)
    sizer.observe_round_trip(0.001)
    sizer.observe_duration(SPARE_BELOW)
    assert sizer.prefetch() == 0


def test_a_switch_to_longer_tasks_stops_the_prefetch_within_a_few_outcomes():
    sizer = ClaimSizer(capacity=4, batch_size=100, prefetch=None)
    for _ in range(200):
        sizer.observe_round_trip(0.001)
    for _ in range(50):
        sizer.observe_duration(0.00001)  # no-op tasks: two full batches ahead
    assert sizer.prefetch() == 200
    for _ in range(3):
        sizer.observe_duration(0.5)
    assert sizer.prefetch() == 0


def test_an_outcome_is_recorded_at_once_when_nothing_else_runs():
    sizer = ClaimSizer(capacity=4, batch_size=100, prefetch=None)
    assert sizer.record_now(held=1, unrecorded=1, waited=0.0)
    assert sizer.record_now(held=3, unrecorded=3, waited=0.0)
    assert not sizer.record_now(held=0, unrecorded=0, waited=1.0)  # nothing to record


def test_while_others_run_outcomes_wait_a_few_milliseconds_or_for_half_a_batch():
    sizer = ClaimSizer(capacity=4, batch_size=100, prefetch=None)
    assert not sizer.record_now(held=8, unrecorded=1, waited=RECORD_WITHIN / 2)
    assert sizer.record_now(held=8, unrecorded=1, waited=RECORD_WITHIN)
    assert sizer.record_now(held=80, unrecorded=50, waited=0.0)
    assert not sizer.record_now(held=80, unrecorded=49, waited=0.0)
