"""When to (re)connect to the stream: X's documented backoff and the attempt budget.

X asks clients to reconnect at once after an established connection drops, then to back off
linearly for network errors (+250 ms per attempt, at most 16 s), exponentially for HTTP
errors (5 s doubling to 320 s) and exponentially from one minute for 429. Whatever happens,
an app may not make more than 50 connection attempts in 15 minutes, or it is locked out.
This module holds only that arithmetic, so it is tested without sockets or clocks.
"""

from __future__ import annotations

import enum
import os
from collections import deque
from dataclasses import dataclass, field

from collector.errors import SettingsError

ATTEMPT_LIMIT = 50
ATTEMPT_WINDOW = 15 * 60.0
# A connection that stayed up this long counts as healthy: its drop restarts the backoff.
HEALTHY_AFTER = 30.0

SCALE_ENV = "COLLECTOR_BACKOFF_SCALE"


class Failure(enum.Enum):
    """How the last connection attempt or connection ended."""

    NETWORK = "network"  # refused, reset, timed out, dropped mid-stream, clean end of response
    HTTP = "http"  # 5xx, 401, 403 and other non-429 statuses
    RATE_LIMIT = "rate_limit"  # 429


def time_scale() -> float:
    """Factor applied to every wait: 1 in production, small in tests.

    Read from `$COLLECTOR_BACKOFF_SCALE`, so the real process can be tested in seconds.
    """
    raw = os.environ.get(SCALE_ENV, "1")
    try:
        scale = float(raw)
    except ValueError:
        raise SettingsError(f"${SCALE_ENV}={raw!r} is not a number") from None
    if not 0 < scale <= 1:
        raise SettingsError(f"${SCALE_ENV}={raw!r} must be above 0 and at most 1")
    return scale


# A stream alerts `stream_failing` once a failure run lasts this many attempts.
ALERT_AFTER_FAILURES = 5


def failing_alert(consecutive: int, last_error: str) -> str | None:
    """The `stream_failing` alert's text when a failure run just reached
    ALERT_AFTER_FAILURES attempts (once per streak), else None (pure)."""
    if consecutive != ALERT_AFTER_FAILURES:
        return None
    return f"{consecutive} connection attempts in a row failed; last: {last_error}"


@dataclass
class ConnectionPolicy:
    """Decides how long to wait before the next connection attempt.

    Times are plain seconds on a monotonic clock supplied by the caller; `scale` shrinks every
    wait and the attempt window alike, so tests keep the same proportions.
    """

    scale: float = 1.0
    limit: int = ATTEMPT_LIMIT
    window: float = ATTEMPT_WINDOW
    attempts: deque[float] = field(default_factory=deque)
    consecutive: int = 0
    last_failure: Failure | None = None
    retry_after: float = 0.0  # earliest time the server allows (429 reset)

    def record_attempt(self, now: float) -> None:
        self.attempts.append(now)

    def connected(self) -> None:
        """A 200 arrived: the next wait depends on how long the connection lasts."""
        self.retry_after = 0.0

    def connection_ended(self, lasted: float, failure: Failure = Failure.NETWORK) -> None:
        """An established connection ended (dropped, reset, clean end, stall)."""
        if lasted >= HEALTHY_AFTER * self.scale:
            self.consecutive = 0
            self.last_failure = None
        else:
            self.failed(failure)

    def failed(self, failure: Failure, retry_at: float | None = None) -> None:
        """An attempt failed before streaming, or a short-lived connection ended."""
        if failure is not self.last_failure:
            self.consecutive = 0
        self.consecutive += 1
        self.last_failure = failure
        if retry_at is not None:
            self.retry_after = max(self.retry_after, retry_at)

    def backoff(self) -> float:
        """Seconds to wait because of the failures so far (before budget and reset)."""
        n = self.consecutive
        if n == 0 or self.last_failure is None:
            return 0.0
        if self.last_failure is Failure.NETWORK:
            # The first reconnect after a drop is immediate; then +250 ms each, at most 16 s.
            base = min(0.25 * (n - 1), 16.0)
        elif self.last_failure is Failure.HTTP:
            base = min(5.0 * 2 ** (n - 1), 320.0)
        else:
            base = min(60.0 * 2 ** (n - 1), 960.0)
        return base * self.scale

    def wait_before_next(self, now: float, last_attempt_end: float) -> float:
        """Seconds from `now` until the next attempt may start."""
        ready = last_attempt_end + self.backoff()
        ready = max(ready, self.retry_after)
        window = self.window * self.scale
        while self.attempts and self.attempts[0] <= now - window:
            self.attempts.popleft()
        if len(self.attempts) >= self.limit:
            # The oldest attempt in the window must age out before another is allowed.
            ready = max(ready, self.attempts[len(self.attempts) - self.limit] + window)
        return max(0.0, ready - now)
