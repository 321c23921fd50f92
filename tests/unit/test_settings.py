"""Settings: every key parsed, and every mistake reported in one line naming key and file."""

from __future__ import annotations

from pathlib import Path

import pytest

from collector.errors import CredentialsError, SettingsError
from collector.settings import load_settings, read_bearer_token, read_credentials
from tests.conftest import SettingsWriter


def test_defaults_and_types(write_settings: SettingsWriter) -> None:
    settings = load_settings(write_settings())
    assert settings.role == "secondary" and not settings.is_main
    assert settings.servers == ("srv1", "srv2")
    assert str(settings.timezone) == "CET"
    assert settings.main_port == 22
    assert settings.backfill_minutes == 0
    assert settings.process_grace_minutes == 10
    assert settings.raw_retention_days == 7
    assert settings.tweet_fields == (
        "author_id", "conversation_id", "created_at", "id", "lang", "text",
        "referenced_tweets", "source",
    )
    assert settings.expansions == ("author_id",)
    assert settings.osf_enabled is True and settings.notifications is False
    assert settings.api_base_url == "http://127.0.0.1:9"
    assert settings.state_dir == settings.data_storage_dst / ".collector"
    assert settings.replica_dst is None and settings.replicas == ()


def test_bluesky_defaults_need_no_api_key(write_settings: SettingsWriter) -> None:
    settings = load_settings(write_settings(source="bluesky", API_key_dst=None))
    assert settings.source == "bluesky" and settings.API_key_dst is None
    assert settings.jetstream_url == "wss://jetstream.us-east.bsky.network/subscribe"
    assert settings.jetstream_collections == ("app.bsky.feed.post",)
    assert settings.jetstream_compress is True
    assert settings.deletion_window_days == 7
    wider = load_settings(write_settings(
        source="bluesky", jetstream_collections="app.bsky.feed.*, app.bsky.graph.follow",
        jetstream_url="ws://127.0.0.1:6008/subscribe", jetstream_compress="False"))
    assert wider.jetstream_collections == ("app.bsky.feed.*", "app.bsky.graph.follow")
    assert wider.jetstream_url == "ws://127.0.0.1:6008/subscribe"
    assert wider.jetstream_compress is False


def test_source_defaults_to_x(write_settings: SettingsWriter) -> None:
    assert load_settings(write_settings()).source == "x"


def test_replica_targets(write_settings: SettingsWriter) -> None:
    settings = load_settings(write_settings(replicas="srv2@127.0.0.1:2202, srv3@backup.example",
                                            servers="srv1,srv2,srv3",
                                            replica_dst="/srv/collector/replica"))
    assert [t.label for t in settings.replicas] == ["srv2@127.0.0.1:2202",
                                                    "srv3@backup.example:22"]
    assert settings.replica_dst == Path("/srv/collector/replica")


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"colour": "blue"}, "unknown key colour"),
        ({"server_id": None}, "missing required key server_id"),
        ({"role": "primary"}, "role='primary' must be main or secondary"),
        ({"timezone": "Mars/Olympus"},
         "timezone='Mars/Olympus' is not a known time zone (e.g. CET, Europe/Berlin, UTC)"),
        ({"main_port": "70000"}, "main_port='70000' must be a whole number from 1 to 65535"),
        ({"backfill_minutes": "6"}, "backfill_minutes='6' must be a whole number from 0 to 5"),
        ({"backfill_minutes": "-1"}, "backfill_minutes='-1' must be a whole number from 0 to 5"),
        ({"osf_enabled": "maybe"}, "osf_enabled='maybe' must be True or False"),
        ({"api_base_url": "ftp://x"}, "api_base_url='ftp://x' must be an http(s) URL"),
        ({"data_storage_dst": "data"}, "data_storage_dst='data' must be an absolute path"),
        ({"main_host": None}, "missing required key main_host (needed on a secondary)"),
        ({"server_id": "srv9"}, "server_id srv9 is not listed in servers"),
        ({"notifications": "True"},
         "missing required key email_credentials_dst (notifications=True)"),
        ({"role": "main"}, "missing required key data_vault_dst (needed on a main)"),
        ({"replicas": "srv2@10.0.0.2:99999"},
         "replicas='srv2@10.0.0.2:99999' entry 'srv2@10.0.0.2:99999' is not "
         "server_id@host[:port]"),
        ({"replicas": "10.0.0.2"}, "replicas='10.0.0.2' entry '10.0.0.2' is not "
                                   "server_id@host[:port]"),
        ({"replicas": "srv2@a,srv2@b"}, "replicas='srv2@a,srv2@b' lists a server id twice"),
        ({"replicas": "srv1@127.0.0.1"},
         "replicas names this host (srv1); a copy on the same disk is no second copy"),
        ({"source": "mastodon"}, "source='mastodon' must be x or bluesky"),
        ({"API_key_dst": None}, "missing required key API_key_dst (source=x)"),
        ({"source": "bluesky", "jetstream_url": "https://jetstream.example/subscribe"},
         "jetstream_url='https://jetstream.example/subscribe' must be a ws(s) URL "
         "(a Jetstream /subscribe endpoint)"),
        ({"source": "bluesky", "jetstream_url": "wss://j.example/subscribe?cursor=1"},
         "jetstream_url='wss://j.example/subscribe?cursor=1' must not carry a query: "
         "the collector adds the parameters"),
        ({"source": "bluesky", "jetstream_url": "wss://me:secret@j.example/subscribe"},
         "jetstream_url must not carry credentials (user:password@)"),
        ({"source": "bluesky", "jetstream_collections": "app.bsky.feed.post,posts"},
         "jetstream_collections='app.bsky.feed.post,posts' entry 'posts' is not a "
         "collection NSID such as app.bsky.feed.post"),
        ({"source": "bluesky", "jetstream_collections": ","},
         "jetstream_collections=',' must list at least one name"),
        ({"source": "bluesky", "jetstream_compress": "zstd"},
         "jetstream_compress='zstd' must be True or False"),
        ({"source": "bluesky", "deletion_window_days": "0"},
         "deletion_window_days='0' must be a whole number from 1 to 3650"),
    ],
)
def test_bad_settings_name_key_and_file(
    write_settings: SettingsWriter, overrides: dict[str, str | None], message: str
) -> None:
    path = write_settings(**overrides)
    with pytest.raises(SettingsError) as caught:
        load_settings(path)
    assert str(caught.value) == f"{path}: {message}"


def test_main_needs_osf_project_when_enabled(write_settings: SettingsWriter,
                                             tmp_path: Path) -> None:
    path = write_settings(role="main", data_vault_dst=str(tmp_path / "vault"),
                          incoming_dst=str(tmp_path / "in"), OSF_key_dst=str(tmp_path))
    with pytest.raises(SettingsError, match="missing required key osf_project"):
        load_settings(path)
    path = write_settings(role="main", data_vault_dst=str(tmp_path / "vault"),
                          incoming_dst=str(tmp_path / "in"), osf_enabled="False")
    assert load_settings(path).is_main


def test_malformed_line_and_duplicate_key(tmp_path: Path) -> None:
    path = tmp_path / "s.txt"
    path.write_text("server_id srv1\n")
    with pytest.raises(SettingsError, match=r"s.txt:1: expected KEY=VALUE"):
        load_settings(path)
    path.write_text("role=main\nrole=secondary\n")
    with pytest.raises(SettingsError, match=r"s.txt:2: key role is set twice"):
        load_settings(path)


def test_missing_settings_file(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="does not exist"):
        load_settings(tmp_path / "nope.txt")


def test_bearer_token_read_and_never_in_errors(write_settings: SettingsWriter) -> None:
    settings = load_settings(write_settings())
    assert read_bearer_token(settings) == "test-token-1"
    token_file = settings.API_key_dst / "twitter_api.txt"
    token_file.chmod(0o644)
    with pytest.raises(CredentialsError) as caught:
        read_bearer_token(settings)
    assert str(caught.value) == (
        f"credentials file {token_file} has mode 0644; it must be 0640 or stricter"
    )
    assert "test-token-1" not in str(caught.value)
    token_file.unlink()
    with pytest.raises(CredentialsError, match="does not exist"):
        read_bearer_token(settings)


def test_credentials_missing_key(tmp_path: Path) -> None:
    path = tmp_path / "osf_credentials.txt"
    path.write_text("tokn=oops\n")
    path.chmod(0o600)
    with pytest.raises(CredentialsError, match="has no value for token"):
        read_credentials(path, ("token",))
