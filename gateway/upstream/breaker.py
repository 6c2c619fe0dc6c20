"""A circuit breaker per worker: passive ejection after consecutive failures, half-open trials.

Pure logic with an injectable clock so it can be tested without servers. Closed: every request may
go. After ``failure_threshold`` consecutive failures it opens: no request goes for ``cooldown_s``.
Then it is half-open: exactly one trial request goes; success closes it, failure opens it again.
"""

from __future__ import annotations

import enum
import time
from collections.abc import Callable


class CircuitState(enum.Enum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class CircuitBreaker:
    def __init__(
        self,
        *,
        failure_threshold: int,
        cooldown_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if failure_threshold < 1 or cooldown_s <= 0:
            raise ValueError("failure_threshold must be >= 1 and cooldown_s > 0")
        self.failure_threshold = failure_threshold
        self.cooldown_s = cooldown_s
        self._clock = clock
        self._state = CircuitState.CLOSED
        self._failures = 0
        self._opened_at = 0.0
        self._trial_in_flight = False

    @property
    def state(self) -> CircuitState:
        if self._state is CircuitState.OPEN and self._clock() - self._opened_at >= self.cooldown_s:
            return CircuitState.HALF_OPEN
        return self._state

    def available(self) -> bool:
        """Whether a request may be sent now (without claiming the half-open trial)."""
        state = self.state
        return state is CircuitState.CLOSED or (state is CircuitState.HALF_OPEN and not self._trial_in_flight)

    def acquire(self) -> bool:
        """Claim the right to send one request; in half-open state only one caller wins the trial."""
        state = self.state
        if state is CircuitState.CLOSED:
            return True
        if state is CircuitState.HALF_OPEN and not self._trial_in_flight:
            self._state = CircuitState.HALF_OPEN
            self._trial_in_flight = True
            return True
        return False

    def record_success(self) -> None:
        self._failures = 0
        self._trial_in_flight = False
        self._state = CircuitState.CLOSED

    def record_failure(self) -> None:
        self._trial_in_flight = False
        if self._state is CircuitState.HALF_OPEN:
            self._open()
            return
        self._failures += 1
        if self._failures >= self.failure_threshold:
            self._open()

    def release(self) -> None:
        """The claimed request ended without telling us anything about the worker (e.g. client left)."""
        self._trial_in_flight = False

    def _open(self) -> None:
        self._state = CircuitState.OPEN
        self._opened_at = self._clock()
        self._failures = 0
