"""router/health.py: the circuit breaker's states, with time passed in explicitly."""

from __future__ import annotations

from router.config import HealthConfig
from router.health import Failure, ReplicaHealth, State, parse_retry_after


def breaker(threshold: int = 3, cooldown: float = 5.0, max_open: float = 60.0) -> ReplicaHealth:
    return ReplicaHealth(HealthConfig(failure_threshold=threshold, max_open=max_open), cooldown)


def test_opens_after_consecutive_failures_only() -> None:
    b = breaker(threshold=3)
    b.failed(Failure.STATUS, 0.0)
    b.failed(Failure.STATUS, 0.0)
    b.succeeded()  # a success in between starts the count again
    b.failed(Failure.STATUS, 0.0)
    b.failed(Failure.STATUS, 0.0)
    assert b.usable(0.0)
    b.failed(Failure.STATUS, 0.0)
    assert b.state is State.OPEN and not b.usable(4.9)


def test_rest_then_one_half_open_trial_then_closed() -> None:
    b = breaker(threshold=1, cooldown=5.0)
    b.failed(Failure.STATUS, 10.0)
    assert not b.usable(14.9)
    assert b.usable(15.0) and b.state is State.HALF_OPEN
    b.begin(15.0)
    assert not b.usable(15.1)  # one trial at a time
    b.succeeded()
    assert b.usable(15.1) and b.snapshot(15.1)["state"] == "closed"


def test_failed_trial_reopens_for_twice_as_long() -> None:
    b = breaker(threshold=1, cooldown=5.0)
    b.failed(Failure.STATUS, 0.0)
    b.begin(5.0)
    b.failed(Failure.STATUS, 5.0)
    assert b.state is State.OPEN
    assert not b.usable(14.9) and b.usable(15.0)


def test_rest_never_exceeds_max_open() -> None:
    b = breaker(threshold=1, cooldown=5.0, max_open=8.0)
    b.failed(Failure.THROTTLED, 0.0, retry_after=3600)
    assert b.usable(8.0)


def test_refused_connection_opens_at_once() -> None:
    b = breaker(threshold=3)
    b.failed(Failure.CONNECT, 0.0)
    assert not b.usable(0.1)


def test_429_with_retry_after_rests_that_long() -> None:
    b = breaker(threshold=3, cooldown=5.0)
    b.failed(Failure.THROTTLED, 0.0, retry_after=20)
    assert not b.usable(19.9) and b.usable(20.0)


def test_timed_out_replica_waits_for_an_answer() -> None:
    b = breaker(threshold=3, cooldown=1.0)
    b.failed(Failure.TIMEOUT, 0.0)
    assert not b.usable(1000.0)  # rest long over, still no answer
    assert not b.serviceable(1000.0)
    b.answered(1000.0)
    assert b.usable(1000.0) and b.state is State.HALF_OPEN


def test_abandoned_trial_frees_the_slot() -> None:
    b = breaker(threshold=1, cooldown=1.0)
    b.failed(Failure.STATUS, 0.0)
    b.begin(1.0)
    b.abandoned()
    assert b.usable(1.0)


def test_snapshot_names_the_state() -> None:
    b = breaker(threshold=1, cooldown=2.0)
    b.failed(Failure.TIMEOUT, 0.0)
    view = b.snapshot(1.0)
    assert view["state"] == "open" and view["waiting_for_answer"] is True
    assert view["last_failure"] == "timeout" and view["rest_remaining_s"] == 1.0


def test_retry_after_parsing() -> None:
    assert parse_retry_after("12") == 12.0
    assert parse_retry_after(" 1.5 ") == 1.5
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT") is None
    assert parse_retry_after("-3") is None
    assert parse_retry_after(None) is None
