from __future__ import annotations

import pytest

from gateway.upstream.breaker import CircuitBreaker, CircuitState


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def state(breaker: CircuitBreaker) -> CircuitState:
    """Read afresh each time (mypy would otherwise keep a narrowed property type across calls)."""
    return breaker.state


def make(threshold: int = 3, cooldown: float = 10.0) -> tuple[CircuitBreaker, Clock]:
    clock = Clock()
    return CircuitBreaker(failure_threshold=threshold, cooldown_s=cooldown, clock=clock), clock


def test_opens_after_consecutive_failures_only() -> None:
    breaker, _ = make(threshold=3)
    breaker.record_failure()
    breaker.record_failure()
    breaker.record_success()  # resets the count
    breaker.record_failure()
    breaker.record_failure()
    assert state(breaker) is CircuitState.CLOSED and breaker.acquire()
    breaker.record_failure()
    assert state(breaker) is CircuitState.OPEN
    assert not breaker.available() and not breaker.acquire()


def test_half_open_admits_exactly_one_trial_after_cooldown() -> None:
    breaker, clock = make(threshold=1, cooldown=10.0)
    breaker.record_failure()
    clock.now = 9.9
    assert not breaker.acquire()
    clock.now = 10.0
    assert state(breaker) is CircuitState.HALF_OPEN
    assert breaker.acquire()
    assert not breaker.acquire()  # the trial is in flight
    breaker.record_success()
    assert state(breaker) is CircuitState.CLOSED and breaker.acquire() and breaker.acquire()


def test_failed_trial_reopens_for_a_full_cooldown() -> None:
    breaker, clock = make(threshold=1, cooldown=5.0)
    breaker.record_failure()
    clock.now = 5.0
    assert breaker.acquire()
    breaker.record_failure()
    assert state(breaker) is CircuitState.OPEN
    clock.now = 9.9
    assert not breaker.acquire()
    clock.now = 10.0
    assert breaker.acquire()


def test_released_trial_lets_the_next_caller_try() -> None:
    breaker, clock = make(threshold=1, cooldown=1.0)
    breaker.record_failure()
    clock.now = 1.0
    assert breaker.acquire()
    breaker.release()
    assert breaker.acquire()


@pytest.mark.parametrize(("threshold", "cooldown"), [(0, 1.0), (1, 0.0), (-1, -1.0)])
def test_invalid_configuration_is_refused(threshold: int, cooldown: float) -> None:
    with pytest.raises(ValueError, match="failure_threshold"):
        CircuitBreaker(failure_threshold=threshold, cooldown_s=cooldown)
