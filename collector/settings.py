"""Read and validate `server_settings.txt` and the credential files it points to.

The file is rendered by Ansible, but a human edits it too, so every problem is reported as
one line that names the key and the file. Secrets live in separate files (mode 0640 or
stricter) and are read only by the command that needs them, never kept in `Settings`.
"""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from collector.errors import CredentialsError, SettingsError
from collector.layout import DEFAULT_MAX_CHUNK_MB

DEFAULT_SETTINGS_PATH = Path("/etc/collector/server_settings.txt")
SETTINGS_ENV = "COLLECTOR_SETTINGS"

DEFAULT_TWEET_FIELDS = (
    "author_id,conversation_id,created_at,id,lang,text,referenced_tweets,source"
)
DEFAULT_USER_FIELDS = (
    "created_at,id,location,name,protected,public_metrics,username,verified"
)
DEFAULT_EXPANSIONS = "author_id"

SOURCES = ("x", "bluesky")
DEFAULT_JETSTREAM_URL = "wss://jetstream.us-east.bsky.network/subscribe"

# Credential bits that must be clear: group write/exec and anything for others (0640 or stricter).
_TOO_OPEN_BITS = 0o037


def _text(value: str) -> str:
    if not value:
        raise ValueError("must not be empty")
    return value


def _path(value: str) -> Path:
    if not value.startswith("/"):
        raise ValueError("must be an absolute path")
    return Path(value)


def _bool(value: str) -> bool:
    lowered = value.lower()
    if lowered in ("true", "yes", "1", "on"):
        return True
    if lowered in ("false", "no", "0", "off"):
        return False
    raise ValueError("must be True or False")


def _int_between(low: int, high: int) -> Callable[[str], int]:
    def parse(value: str) -> int:
        try:
            number = int(value)
        except ValueError:
            raise ValueError(f"must be a whole number from {low} to {high}") from None
        if not low <= number <= high:
            raise ValueError(f"must be a whole number from {low} to {high}")
        return number

    return parse


def _role(value: str) -> str:
    if value not in ("main", "secondary"):
        raise ValueError("must be main or secondary")
    return value


def _timezone(value: str) -> ZoneInfo:
    try:
        return ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError("is not a known time zone (e.g. CET, Europe/Berlin, UTC)") from None


def _url(value: str) -> str:
    parsed = urlparse(value)
    if parsed.scheme not in ("http", "https") or not parsed.netloc:
        raise ValueError("must be an http(s) URL")
    return value.rstrip("/")


@dataclass(frozen=True)
class ReplicaTarget:
    """One host the main replicates to (`collector replicate`): its id and its sshd."""

    server_id: str
    host: str
    port: int

    @property
    def label(self) -> str:
        return f"{self.server_id}@{self.host}:{self.port}"


_REPLICA = re.compile(r"^(?P<id>[A-Za-z0-9][A-Za-z0-9._-]*)@(?P<host>[A-Za-z0-9.:_-]+?)"
                      r"(?::(?P<port>[0-9]{1,5}))?$")


class _ValueWithSecret(ValueError):
    """A bad value that must not be repeated in the error line (it holds a secret)."""


def _source(value: str) -> str:
    if value not in SOURCES:
        raise ValueError("must be x or bluesky")
    return value


def _websocket_url(value: str) -> str:
    parsed = urlparse(value)
    if parsed.scheme not in ("ws", "wss") or not parsed.netloc:
        raise ValueError("must be a ws(s) URL (a Jetstream /subscribe endpoint)")
    if parsed.query or parsed.fragment:
        raise ValueError("must not carry a query: the collector adds the parameters")
    if parsed.username is not None or parsed.password is not None:
        # The URL is logged and written into every chunk line (`__collector.url`).
        raise _ValueWithSecret("must not carry credentials (user:password@)")
    return value


# An NSID (`app.bsky.feed.post`) or a prefix of one (`app.bsky.feed.*`), as Jetstream takes them.
_COLLECTION = re.compile(r"^[A-Za-z][A-Za-z0-9-]*(\.[A-Za-z0-9-]+)+(\.\*)?$")
MAX_COLLECTIONS = 100  # Jetstream's own limit on wantedCollections


def _collections(value: str) -> tuple[str, ...]:
    items = _comma_list(value)
    for item in items:
        if not _COLLECTION.match(item):
            raise ValueError(f"entry {item!r} is not a collection NSID such as app.bsky.feed.post")
    if len(items) > MAX_COLLECTIONS:
        raise ValueError(f"lists more than {MAX_COLLECTIONS} collections (Jetstream's limit)")
    return items


def _replica_targets(value: str) -> tuple[ReplicaTarget, ...]:
    """`server_id@host[:port],...` (port 22 when left out); every id at most once."""
    targets = []
    for item in _comma_list(value):
        match = _REPLICA.match(item)
        port = int(match["port"] or 22) if match else 0
        if match is None or not 1 <= port <= 65535:
            raise ValueError(f"entry {item!r} is not server_id@host[:port]")
        targets.append(ReplicaTarget(match["id"], match["host"], port))
    if len({t.server_id for t in targets}) != len(targets):
        raise ValueError("lists a server id twice")
    return tuple(targets)


def _comma_list(value: str) -> tuple[str, ...]:
    items = tuple(item.strip() for item in value.split(",") if item.strip())
    if not items:
        raise ValueError("must list at least one name")
    return items


# key -> (parser, default); a default of None means the key is required where it applies.
_KEYS: dict[str, tuple[Callable[[str], Any], str | None]] = {
    "library_dst": (_text, ""),
    # Required for source=x only (the Jetstream live tail needs no key).
    "API_key_dst": (_path, ""),
    "OSF_key_dst": (_path, ""),
    "data_storage_dst": (_path, None),
    "data_vault_dst": (_path, ""),
    "username": (_text, None),
    "groupname": (_text, None),
    "server_id": (_text, None),
    "role": (_role, None),
    "servers": (_comma_list, None),
    "api_base_url": (_url, "https://api.x.com"),
    "incoming_dst": (_path, ""),
    "main_host": (_text, ""),
    "main_port": (_int_between(1, 65535), "22"),
    "main_user": (_text, ""),
    "timezone": (_timezone, "CET"),
    "tweet_fields": (_comma_list, DEFAULT_TWEET_FIELDS),
    "user_fields": (_comma_list, DEFAULT_USER_FIELDS),
    "expansions": (_comma_list, DEFAULT_EXPANSIONS),
    "backfill_minutes": (_int_between(0, 5), "0"),
    "process_grace_minutes": (_int_between(0, 1440), "10"),
    "raw_retention_days": (_int_between(1, 3650), "7"),
    "osf_enabled": (_bool, "True"),
    "osf_project": (_text, ""),
    "osf_storage": (_text, "osfstorage"),
    "osf_base_url": (_url, "https://api.osf.io/v2/"),
    "notifications": (_bool, "True"),
    "email_credentials_dst": (_path, ""),
    # Added by this product (not in the seed):
    "stall_seconds": (_int_between(2, 86400), "300"),
    "read_timeout_seconds": (_int_between(1, 600), "20"),
    "xz_preset": (_int_between(0, 9), "6"),
    # Larger entries in a chunk folder are no chunk and are quarantined (collector.process).
    "max_chunk_mb": (_int_between(1, 65536), str(DEFAULT_MAX_CHUNK_MB)),
    "ssh_identity_file": (_path, ""),
    "ssh_known_hosts_file": (_path, ""),
    # Every host: where the copies the main replicates to this host land
    # (collector.transfer.replicate).
    "replica_dst": (_path, ""),
    # Main: the hosts it replicates its own chunks, departed servers' chunks and its vault to.
    "replicas": (_replica_targets, ""),
    # The stream captured (SPEC section 8); the jetstream_* keys and deletion_window_days apply
    # to bluesky only, tweet_fields, user_fields, expansions and backfill_minutes to x only.
    "source": (_source, "x"),
    "jetstream_url": (_websocket_url, DEFAULT_JETSTREAM_URL),
    "jetstream_collections": (_collections, "app.bsky.feed.post"),
    "jetstream_compress": (_bool, "True"),
    "deletion_window_days": (_int_between(1, 3650), "7"),
}
# What an empty value of a key means, where it is not "" (paths: None).
_EMPTY: dict[str, Any] = {"replicas": ()}

# Keys that are required only for one role or when a feature is switched on.
_MAIN_ONLY = ("data_vault_dst", "incoming_dst")
_SECONDARY_ONLY = ("main_host", "main_user")


@dataclass(frozen=True)
class Settings:
    """Every key of `server_settings.txt`, parsed; `path` is the file it came from."""

    path: Path
    library_dst: str
    API_key_dst: Path | None
    OSF_key_dst: Path | None
    data_storage_dst: Path
    data_vault_dst: Path | None
    username: str
    groupname: str
    server_id: str
    role: str
    servers: tuple[str, ...]
    api_base_url: str
    incoming_dst: Path | None
    main_host: str
    main_port: int
    main_user: str
    timezone: ZoneInfo
    tweet_fields: tuple[str, ...]
    user_fields: tuple[str, ...]
    expansions: tuple[str, ...]
    backfill_minutes: int
    process_grace_minutes: int
    raw_retention_days: int
    osf_enabled: bool
    osf_project: str
    osf_storage: str
    osf_base_url: str
    notifications: bool
    email_credentials_dst: Path | None
    stall_seconds: int
    read_timeout_seconds: int
    xz_preset: int
    max_chunk_mb: int
    ssh_identity_file: Path | None
    ssh_known_hosts_file: Path | None
    replica_dst: Path | None
    replicas: tuple[ReplicaTarget, ...]
    source: str
    jetstream_url: str
    jetstream_collections: tuple[str, ...]
    jetstream_compress: bool
    deletion_window_days: int

    @property
    def is_main(self) -> bool:
        return self.role == "main"

    @property
    def max_chunk_bytes(self) -> int:
        """`max_chunk_mb` in bytes: the largest file `process` reads as a chunk."""
        return self.max_chunk_mb * 1024 * 1024

    @property
    def state_dir(self) -> Path:
        """Where commands keep their small state files (stream status, ledgers, failure
        counts, locks); the upload's ledger lives with the vault instead
        (`collector.publish.ledger.upload_state_dir`), since it describes what is published."""
        return self.data_storage_dst / ".collector"


def resolve_settings_path(cli_path: str | None) -> Path:
    """`--settings`, else `$COLLECTOR_SETTINGS`, else the path Ansible installs to."""
    if cli_path:
        return Path(cli_path)
    env_path = os.environ.get(SETTINGS_ENV)
    if env_path:
        return Path(env_path)
    return DEFAULT_SETTINGS_PATH


def parse_key_values(text: str, source: Path) -> dict[str, str]:
    """Split `KEY=VALUE` lines; `#` starts a comment line, blank lines are ignored."""
    values: dict[str, str] = {}
    for number, raw_line in enumerate(text.splitlines(), start=1):
        line = raw_line.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition("=")
        key = key.strip()
        if not sep or not key:
            raise SettingsError(f"{source}:{number}: expected KEY=VALUE, got {line[:40]!r}")
        if key in values:
            raise SettingsError(f"{source}:{number}: key {key} is set twice")
        values[key] = value.strip()
    return values


def settings_from_mapping(raw: Mapping[str, str], source: Path) -> Settings:
    """Validate a parsed settings mapping; raise SettingsError naming the first bad key."""
    unknown = sorted(set(raw) - set(_KEYS))
    if unknown:
        raise SettingsError(f"{source}: unknown key {unknown[0]}")
    role = raw.get("role", "")
    parsed: dict[str, Any] = {}
    for key, (parser, default) in _KEYS.items():
        value = raw.get(key, default)
        if value is None:
            raise SettingsError(f"{source}: missing required key {key}")
        if value == "":
            required_here = (role == "main" and key in _MAIN_ONLY) or (
                role == "secondary" and key in _SECONDARY_ONLY
            )
            if required_here:
                raise SettingsError(f"{source}: missing required key {key} (needed on a {role})")
            parsed[key] = _EMPTY.get(key, None if parser is _path else "")
            continue
        try:
            parsed[key] = parser(value)
        except _ValueWithSecret as error:  # the value is not shown: it holds a secret
            raise SettingsError(f"{source}: {key} {error}") from None
        except ValueError as error:
            raise SettingsError(f"{source}: {key}={value!r} {error}") from None
    settings = Settings(path=source, **parsed)
    _check_consistency(settings)
    return settings


def _check_consistency(settings: Settings) -> None:
    source = settings.path
    if settings.server_id not in settings.servers:
        raise SettingsError(f"{source}: server_id {settings.server_id} is not listed in servers")
    if len(set(settings.servers)) != len(settings.servers):
        raise SettingsError(f"{source}: servers lists a server id twice")
    if any(target.server_id == settings.server_id for target in settings.replicas):
        raise SettingsError(f"{source}: replicas names this host ({settings.server_id}); "
                            "a copy on the same disk is no second copy")
    if settings.source == "x" and settings.API_key_dst is None:
        raise SettingsError(f"{source}: missing required key API_key_dst (source=x)")
    if settings.is_main and settings.osf_enabled:
        if not settings.osf_project:
            raise SettingsError(f"{source}: missing required key osf_project (osf_enabled=True)")
        if settings.OSF_key_dst is None:
            raise SettingsError(f"{source}: missing required key OSF_key_dst (osf_enabled=True)")
    if settings.notifications and settings.email_credentials_dst is None:
        raise SettingsError(
            f"{source}: missing required key email_credentials_dst (notifications=True)"
        )


def load_settings(path: Path) -> Settings:
    """Read and validate one settings file."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SettingsError(f"settings file {path} does not exist") from None
    except PermissionError:
        raise SettingsError(f"settings file {path} is not readable by this user") from None
    except (OSError, UnicodeDecodeError) as error:
        raise SettingsError(f"settings file {path} cannot be read: {error}") from None
    return settings_from_mapping(parse_key_values(text, path), path)


def read_credentials(path: Path, required: tuple[str, ...]) -> dict[str, str]:
    """Read a `key=value` credentials file, refusing one that others could read.

    Values are returned but never put into an exception message.
    """
    try:
        info = path.stat()
    except FileNotFoundError:
        raise CredentialsError(f"credentials file {path} does not exist") from None
    except PermissionError:
        raise CredentialsError(f"credentials file {path} is not readable by this user") from None
    if not stat.S_ISREG(info.st_mode):
        raise CredentialsError(f"credentials file {path} is not a regular file")
    mode = stat.S_IMODE(info.st_mode)
    if mode & _TOO_OPEN_BITS:
        raise CredentialsError(
            f"credentials file {path} has mode {mode:04o}; it must be 0640 or stricter"
        )
    try:
        text = path.read_text(encoding="utf-8")
    except PermissionError:
        raise CredentialsError(f"credentials file {path} is not readable by this user") from None
    except (OSError, UnicodeDecodeError):
        raise CredentialsError(f"credentials file {path} cannot be read") from None
    values: dict[str, str] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, _, value = line.partition("=")
        values[key.strip()] = value.strip()
    for key in required:
        if not values.get(key):
            raise CredentialsError(f"credentials file {path} has no value for {key}")
    return values


def read_bearer_token(settings: Settings) -> str:
    """This host's own API bearer token, from `API_key_dst/twitter_api.txt`."""
    if settings.API_key_dst is None:
        raise SettingsError(f"{settings.path}: API_key_dst is not set")
    path = settings.API_key_dst / "twitter_api.txt"
    return read_credentials(path, ("bearer_token",))["bearer_token"]


def read_osf_token(settings: Settings) -> str:
    """The OSF personal access token, from `OSF_key_dst/osf_credentials.txt`."""
    if settings.OSF_key_dst is None:
        raise SettingsError(f"{settings.path}: OSF_key_dst is not set")
    path = settings.OSF_key_dst / "osf_credentials.txt"
    return read_credentials(path, ("token",))["token"]


def read_email_credentials(settings: Settings) -> dict[str, str]:
    """SMTP server, port, login and addresses from `email_credentials.txt`."""
    if settings.email_credentials_dst is None:
        raise SettingsError(f"{settings.path}: email_credentials_dst is not set")
    path = settings.email_credentials_dst / "email_credentials.txt"
    return read_credentials(path, ("server", "port", "user", "password", "fromaddr", "toaddr"))
