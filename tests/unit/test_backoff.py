"""X's documented reconnect schedule and the 50-attempts-per-15-minutes budget."""

from __future__ import annotations

import pytest

from collector.errors import SettingsError
from collector.stream.backoff import (
    ALERT_AFTER_FAILURES,
    ConnectionPolicy,
    Failure,
    failing_alert,
    time_scale,
)


def waits(policy: ConnectionPolicy, failure: Failure, count: int) -> list[float]:
    result = []
    for _ in range(count):
        policy.failed(failure)
        result.append(policy.backoff())
    return result


def test_network_errors_back_off_linearly_to_16_s() -> None:
    assert waits(ConnectionPolicy(), Failure.NETWORK, 4) == [0.0, 0.25, 0.5, 0.75]
    assert waits(ConnectionPolicy(), Failure.NETWORK, 100)[-1] == 16.0


def test_http_errors_back_off_exponentially_from_5_to_320_s() -> None:
    assert waits(ConnectionPolicy(), Failure.HTTP, 8) == [5, 10, 20, 40, 80, 160, 320, 320]


def test_rate_limit_backs_off_from_a_minute() -> None:
    assert waits(ConnectionPolicy(), Failure.RATE_LIMIT, 3) == [60, 120, 240]


def test_a_healthy_connection_resets_the_backoff() -> None:
    policy = ConnectionPolicy()
    waits(policy, Failure.NETWORK, 5)
    policy.connection_ended(lasted=120.0)
    assert policy.backoff() == 0.0
    policy.connection_ended(lasted=1.0)  # a short-lived one counts as a failure
    policy.connection_ended(lasted=1.0)
    assert policy.backoff() == 0.25


def test_a_different_failure_restarts_its_own_schedule() -> None:
    policy = ConnectionPolicy()
    waits(policy, Failure.HTTP, 3)
    assert waits(policy, Failure.RATE_LIMIT, 1) == [60]


def test_never_more_than_50_attempts_in_15_minutes() -> None:
    policy = ConnectionPolicy()
    now = 1000.0
    made = []
    while now < 1000.0 + 3600:
        wait = policy.wait_before_next(now, last_attempt_end=now)
        if wait == 0:
            policy.record_attempt(now)
            made.append(now)
        now += 1.0  # a client that would retry every second
    for i, start in enumerate(made):
        in_window = [t for t in made[i:] if t < start + 900]
        assert len(in_window) <= 50
    assert len(made) == 200  # 50 per window over four windows


def test_reset_header_is_honoured() -> None:
    policy = ConnectionPolicy()
    policy.failed(Failure.RATE_LIMIT, retry_at=500.0)
    assert policy.wait_before_next(now=100.0, last_attempt_end=100.0) == 400.0


def test_scale_shrinks_waits_and_window() -> None:
    policy = ConnectionPolicy(scale=0.01)
    policy.failed(Failure.HTTP)
    assert policy.backoff() == pytest.approx(0.05)
    for t in range(50):
        policy.record_attempt(float(t) * 0.01)
    assert policy.wait_before_next(0.5, 0.0) == pytest.approx(9.0 - 0.5)


def test_time_scale_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLLECTOR_BACKOFF_SCALE", "0.01")
    assert time_scale() == 0.01
    monkeypatch.setenv("COLLECTOR_BACKOFF_SCALE", "fast")
    with pytest.raises(SettingsError, match="is not a number"):
        time_scale()


def test_the_failing_alert_comes_once_per_streak_at_its_fifth_attempt() -> None:
    assert [n for n in range(1, 12) if failing_alert(n, "refused") is not None] == [
        ALERT_AFTER_FAILURES]
    assert failing_alert(5, "http_503") == "5 connection attempts in a row failed; last: http_503"
