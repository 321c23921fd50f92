"""Alerts: one interface for every stage, so a stage never knows how the team is told.

`LogNotifier` writes the alert to the log (journald); email delivery implements the same
`Notifier` protocol. An alert has a `kind` (a stable key such as `stream_stalled`, used to
rate-limit repeats) and a subject that must be safe to show to anyone: no secrets.

A stage that fails raises its failure alert through `alert_failure`, the one rule for all of
them: a run that fails alerts when its failure streak reaches `after` runs (1: the first
failure, for process and upload, whose cron runs nobody watches; 3 for send and replicate,
whose next run often just works) and again every `every` runs while it lasts.

Alert mails that could not be delivered wait in an outbox (`collector.alerts.outbox`);
commands that run on a schedule call `deliver_queued_alerts` so they go out soon after the
mail server is back even if nothing alerts again.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from collector.settings import Settings

log = logging.getLogger("collector.alert")

STREAM_STARTED = "stream_started"
STREAM_STOPPED = "stream_stopped"
STREAM_CRASHED = "stream_crashed"
STREAM_STALLED = "stream_stalled"
STREAM_FAILING = "stream_failing"
STREAM_RECOVERED = "stream_recovered"
# A resumed Jetstream connection replayed from later than its cursor: the instance clamped an
# old cursor to its replay window, so events in between may be missing on this host.
STREAM_REPLAY_CLAMPED = "stream_replay_clamped"
DISK_FULL = "disk_full"
UPLOAD_FAILING = "upload_failing"
PROCESS_FAILING = "process_failing"
# Entries that are not chunk files were moved out of a chunk folder (collector.process).
ENTRIES_QUARANTINED = "entries_quarantined"
SEND_FAILING = "send_failing"
SEND_CONFLICT = "send_conflict"
# The main could not copy its data to a secondary (collector.transfer.replicate).
REPLICATE_FAILING = "replicate_failing"
# Re-merging an hour would have published fewer ids than its outputs hold (collector.process).
FEWER_IDS = "fewer_ids"


class Notifier(Protocol):
    def alert(self, kind: str, subject: str, body: str = "") -> None:
        """Tell the team about an event; must never raise."""


class LogNotifier:
    """Alerts as WARNING log lines, e.g. `ALERT stream_stalled: no tweet for 300 s`."""

    def __init__(self, server_id: str) -> None:
        self.server_id = server_id

    def alert(self, kind: str, subject: str, body: str = "") -> None:
        log.warning("ALERT %s on %s: %s", kind, self.server_id, subject)


class FanOutNotifier:
    """Hands every alert to several notifiers (the log, and email when it is on)."""

    def __init__(self, *notifiers: Notifier) -> None:
        self.notifiers = notifiers

    def alert(self, kind: str, subject: str, body: str = "") -> None:
        for notifier in self.notifiers:
            notifier.alert(kind, subject, body)


# A failure streak is alerted again every this many runs while it lasts (a day of hourly runs).
REALERT_EVERY = 24


def failure_alert_due(failures: int, after: int = 1, every: int = REALERT_EVERY) -> bool:
    """Whether the `failures`-th failed run in a row alerts (pure): at `after`, then every
    `every` runs."""
    return failures >= after and (failures - after) % every == 0


def alert_failure(notifier: Notifier, kind: str, subject: str, body: str = "", *,
                  failures: int = 1, after: int = 1, every: int = REALERT_EVERY) -> bool:
    """Raise a stage's failure alert if `failure_alert_due`; returns whether it did."""
    if not failure_alert_due(failures, after, every):
        return False
    notifier.alert(kind, subject, body)
    return True


def make_notifier(settings: Settings) -> Notifier:
    """Every alert goes to the log; with `notifications=True` it is also emailed."""
    to_log = LogNotifier(settings.server_id)
    if not settings.notifications:
        return to_log
    # Imported here so that processes with mail off never load smtplib and ssl for it.
    from collector.alerts.email import EmailNotifier

    return FanOutNotifier(to_log, EmailNotifier(settings))


def deliver_queued_alerts(settings: Settings) -> int:
    """Mail the alerts queued while the mail server was unreachable; never raises.

    Returns how many still wait (0 with notifications off, -1 if unknown).
    """
    if not settings.notifications:
        return 0
    from collector.alerts.email import deliver_pending

    return deliver_pending(settings)
