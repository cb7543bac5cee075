"""Per-replica circuit breaker: whether a replica may be sent requests right now.

    closed ──(failure_threshold consecutive failures; at once for a refused connection,
              a timeout or a 429 with Retry-After)──> open
    open ──(rest elapsed; after a timeout, also an answered probe)──> half-open
    half-open ──(the one trial request succeeds)──> closed
    half-open ──(the trial fails)──> open, resting twice as long (up to health.max_open)

The rest is ``routing.replica_cooldown`` seconds (doubled per trip in a row) or the replica's
own ``Retry-After``, capped at ``health.max_open``. A replica that timed out before answering
stays open until it answers a background probe: trying it again would only cost another
client the whole timeout. Success means the replica answered with response headers below 500
(a 4xx is the client's problem, not the replica's). Nothing here does I/O or reads a clock:
callers pass ``now`` (monotonic seconds), so the request path and the tests stay cheap.
"""

from __future__ import annotations

import enum
from typing import Any

from router.config import HealthConfig


class Failure(enum.Enum):
    """What went wrong with an attempt, as far as the replica's health is concerned."""

    CONNECT = "connect"  # refused, or no connection within timeout.connect: nothing sent
    TIMEOUT = "timeout"  # sent, but no response headers in time
    DISCONNECT = "disconnect"  # the connection dropped before response headers
    STATUS = "status"  # a 5xx answer
    THROTTLED = "throttled"  # 429
    PROBE = "probe"  # the background probe got no answer


class State(enum.Enum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


# Failures that open the breaker at once: the replica is not there, or said how long to wait.
_IMMEDIATE = frozenset({Failure.CONNECT, Failure.TIMEOUT, Failure.PROBE})
# Failures after which only an answered probe lets the replica back.
_NEEDS_ANSWER = frozenset({Failure.TIMEOUT, Failure.PROBE})


class ReplicaHealth:
    """One replica's breaker, fed by every attempt's outcome and by background probes."""

    def __init__(self, settings: HealthConfig, cooldown: float) -> None:
        self._settings = settings
        self._cooldown = cooldown
        self.state = State.CLOSED
        self.failures = 0  # consecutive
        self.trips = 0  # openings in a row without a success
        self.open_until = 0.0
        self.needs_answer = False
        self.trial = False  # a half-open trial request is in flight
        self.openings: dict[str, int] = {}  # times opened, by failure kind (for metrics)
        self.last_failure: Failure | None = None
        self.answered_at: float | None = None  # last time a probe or scrape got an answer

    def usable(self, now: float) -> bool:
        """May a request be sent now? At most one trial at a time while half-open."""
        if self.state is State.CLOSED:
            return True
        if self.state is State.OPEN:
            if self.needs_answer or now < self.open_until:
                return False
            self.state = State.HALF_OPEN
        return not self.trial

    def serviceable(self, now: float) -> bool:
        """Could serve soon, for readiness: not resting and not waiting for an answer."""
        if self.state is State.OPEN:
            return not self.needs_answer and now >= self.open_until
        return True

    def begin(self, now: float) -> None:
        """An attempt is being sent; while half-open it is the one trial."""
        if self.state is not State.CLOSED and self.usable(now):
            self.trial = True

    def succeeded(self) -> None:
        self.state = State.CLOSED
        self.failures = 0
        self.trips = 0
        self.trial = False
        self.needs_answer = False
        self.last_failure = None

    def abandoned(self) -> None:
        """The attempt ended without a verdict (the client went away): free the trial slot."""
        self.trial = False

    def failed(self, failure: Failure, now: float, retry_after: float | None = None) -> None:
        self.failures += 1
        self.last_failure = failure
        trial, self.trial = self.trial, False
        if (
            trial
            or self.state is State.HALF_OPEN
            or failure in _IMMEDIATE
            or (failure is Failure.THROTTLED and retry_after is not None)
            or self.failures >= self._settings.failure_threshold
        ):
            self._open(failure, now, retry_after)

    def _open(self, failure: Failure, now: float, retry_after: float | None) -> None:
        self.trips += 1
        if retry_after is not None:
            rest = retry_after
        else:
            rest = self._cooldown * 2 ** min(self.trips - 1, 16)
        self.open_until = now + min(max(rest, 0.0), self._settings.max_open)
        self.needs_answer = self.needs_answer or failure in _NEEDS_ANSWER
        self.state = State.OPEN
        self.openings[failure.value] = self.openings.get(failure.value, 0) + 1

    def answered(self, now: float) -> None:
        """A probe or a metrics scrape got an answer: the replica is there again."""
        self.answered_at = now
        self.needs_answer = False

    def snapshot(self, now: float) -> dict[str, Any]:
        """The JSON view of ``GET /health/backends``."""
        self.usable(now)  # moves a rested breaker to half-open, so the view is current
        return {
            "state": self.state.value,
            "consecutive_failures": self.failures,
            "last_failure": self.last_failure.value if self.last_failure else None,
            "rest_remaining_s": round(max(0.0, self.open_until - now), 3)
            if self.state is State.OPEN
            else 0.0,
            "waiting_for_answer": self.needs_answer,
        }


def parse_retry_after(value: str | None) -> float | None:
    """Seconds from a ``Retry-After`` header (delta-seconds form; an HTTP date is ignored)."""
    if not value:
        return None
    try:
        seconds = float(value.strip())
    except ValueError:
        return None
    return seconds if seconds >= 0 else None
