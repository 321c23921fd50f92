"""Alerts: what went wrong reaches the team once, by log and by mail, never stopping the work.

* `notify`: the alert kinds, the `Notifier` every stage gets, and `make_notifier`, which sends
  them to the log and, when enabled, to `email.EmailNotifier`;
* `rate`: at most one mail per kind and hour per host (`AlertLedger`);
* `outbox`: alerts queued on disk until the mail server takes them (`Outbox`);
* `smtp`: one mail over SMTP with STARTTLS and login, secrets blanked out.
"""
