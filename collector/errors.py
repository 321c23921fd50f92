"""The one exception family the CLI turns into a single line on stderr and a non-zero exit.

Anything a user can cause or fix (bad settings, a missing credential, a full disk, an
unreachable host) is raised as a subclass of `CollectorError`; its message must make sense on
its own, without a traceback, and must never contain a secret.
"""


class CollectorError(Exception):
    """Base of every expected failure; `exit_code` is what the process returns."""

    exit_code = 1


class SettingsError(CollectorError):
    """`server_settings.txt` is missing, unreadable, or holds a bad or unknown key."""

    exit_code = 2


class CredentialsError(CollectorError):
    """A credentials file is missing, unreadable, too open, or lacks a required key."""

    exit_code = 2


class DiskFullError(CollectorError):
    """The disk holding data filled up; nothing already written was lost."""


class LockedError(CollectorError):
    """Another run of the same command holds the lock; this run did nothing."""


class RemoteError(CollectorError):
    """A remote service (main host, OSF, SMTP) refused or failed; retried on the next run."""
