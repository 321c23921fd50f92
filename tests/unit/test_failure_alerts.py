"""The one rule for when a failing stage alerts (`alerts.notify`)."""

from __future__ import annotations

from collector.alerts.notify import alert_failure, failure_alert_due


def test_send_and_replicate_alert_at_the_third_failure_then_every_24() -> None:
    due = [n for n in range(1, 80) if failure_alert_due(n, after=3)]
    assert due == [3, 27, 51, 75]


def test_process_and_upload_alert_on_every_failed_run() -> None:
    # They keep no streak: every failed run calls with the defaults, failures=1.
    assert failure_alert_due(1)


class Recording:
    def __init__(self) -> None:
        self.alerts: list[tuple[str, str, str]] = []

    def alert(self, kind: str, subject: str, body: str = "") -> None:
        self.alerts.append((kind, subject, body))


def test_alert_failure_sends_only_when_due() -> None:
    notifier = Recording()
    sent = [alert_failure(notifier, "send_failing", f"run {n}", "body", failures=n, after=3)
            for n in range(1, 5)]
    assert sent == [False, False, True, False]
    assert notifier.alerts == [("send_failing", "run 3", "body")]
