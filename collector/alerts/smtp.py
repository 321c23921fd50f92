"""One mail over SMTP (STARTTLS or implicit TLS, then login), with every secret blanked out.

No secret reaches a mail, a log line or an exception: the SMTP password and the API and OSF
tokens this host knows are removed from every subject and body (`redact`), and SMTP errors
are described by their code and the server's reply only (`describe_failure`).
"""

from __future__ import annotations

import contextlib
import os
import smtplib
import socket
import ssl
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from email.message import EmailMessage
from email.utils import formatdate, make_msgid

from collector.errors import (
    CredentialsError,
    RemoteError,
    SettingsError,
)
from collector.settings import (
    Settings,
    read_bearer_token,
    read_email_credentials,
    read_osf_token,
)

SMTP_TIMEOUT = 30.0
CAFILE_ENV = "COLLECTOR_SMTP_CAFILE"  # tests and the lab only: trust this CA instead
IMPLICIT_TLS_PORT = 465
REDACTED = "[redacted]"


@dataclass(frozen=True)
class MailCredentials:
    """The parsed `email_credentials.txt`; the password never shows in a repr."""

    server: str
    port: int
    user: str
    password: str = field(repr=False)
    fromaddr: str
    toaddrs: tuple[str, ...]
    starttls: bool = True

    @classmethod
    def from_mapping(cls, values: dict[str, str], source: str) -> MailCredentials:
        """Validate the raw key/value pairs; errors name the key, never a value."""
        try:
            port = int(values["port"])
        except ValueError:
            raise CredentialsError(f"{source}: port must be a number") from None
        if not 1 <= port <= 65535:
            raise CredentialsError(f"{source}: port must be from 1 to 65535")
        starttls_text = values.get("starttls", "True").strip().lower()
        if starttls_text not in ("true", "false", "yes", "no", "1", "0", "on", "off"):
            raise CredentialsError(f"{source}: starttls must be True or False")
        toaddrs = tuple(a.strip() for a in values["toaddr"].split(",") if a.strip())
        return cls(
            server=values["server"],
            port=port,
            user=values.get("user", ""),
            password=values.get("password", ""),
            fromaddr=values["fromaddr"],
            toaddrs=toaddrs,
            starttls=starttls_text in ("true", "yes", "1", "on"),
        )


def load_mail_credentials(settings: Settings) -> MailCredentials:
    """Read `email_credentials_dst/email_credentials.txt` (CredentialsError if unusable)."""
    values = read_email_credentials(settings)
    source = str(settings.email_credentials_dst) + "/email_credentials.txt"
    return MailCredentials.from_mapping(values, source)


@dataclass(frozen=True)
class Attachment:
    filename: str
    content: bytes
    maintype: str = "application"
    subtype: str = "octet-stream"


def redact(text: str, secrets: Sequence[str]) -> str:
    """`text` with every secret blanked out (secrets shorter than 4 characters are ignored,
    as blanking them would mangle ordinary words without protecting anything)."""
    for secret in sorted({s for s in secrets if len(s) >= 4}, key=len, reverse=True):
        text = text.replace(secret, REDACTED)
    return text


def build_message(credentials: MailCredentials, subject: str, body: str,
                  attachments: Sequence[Attachment] = ()) -> EmailMessage:
    """A plain-text mail; the subject is kept on one line so it cannot inject headers."""
    message = EmailMessage()
    message["Subject"] = " ".join(subject.split())
    message["From"] = credentials.fromaddr
    message["To"] = ", ".join(credentials.toaddrs)
    message["Date"] = formatdate(localtime=False, usegmt=True)
    message["Message-ID"] = make_msgid(domain=socket.getfqdn() or "collector")
    message.set_content(body)
    for attachment in attachments:
        message.add_attachment(attachment.content, maintype=attachment.maintype,
                               subtype=attachment.subtype, filename=attachment.filename)
    return message


def tls_context() -> ssl.SSLContext:
    """The system trust store, or the CA file in `$COLLECTOR_SMTP_CAFILE` (tests, the lab)."""
    cafile = os.environ.get(CAFILE_ENV) or None
    return ssl.create_default_context(cafile=cafile)


def send_mail(credentials: MailCredentials, subject: str, body: str,
              attachments: Sequence[Attachment] = (), timeout: float = SMTP_TIMEOUT) -> None:
    """Deliver one mail: STARTTLS unless turned off (implicit TLS on port 465), then login.

    Raises `OSError` or `smtplib.SMTPException` on failure; the callers decide whether a
    failure is fatal (the report command) or only logged (alerts).
    """
    message = build_message(credentials, subject, body, attachments)
    context = tls_context()
    client: smtplib.SMTP
    if credentials.port == IMPLICIT_TLS_PORT:
        client = smtplib.SMTP_SSL(credentials.server, credentials.port, timeout=timeout,
                                  context=context)
    else:
        client = smtplib.SMTP(credentials.server, credentials.port, timeout=timeout)
    with client:
        client.ehlo()
        if credentials.starttls and credentials.port != IMPLICIT_TLS_PORT:
            client.starttls(context=context)
            client.ehlo()
        if credentials.user and credentials.password:
            client.login(credentials.user, credentials.password)
        client.send_message(message, from_addr=credentials.fromaddr,
                            to_addrs=list(credentials.toaddrs))


def describe_failure(error: BaseException, secrets: Sequence[str] = ()) -> str:
    """One safe line about a mail failure: the SMTP code and reply, or the socket error."""
    if isinstance(error, smtplib.SMTPAuthenticationError):
        reply = error.smtp_error.decode("utf-8", "replace") if isinstance(
            error.smtp_error, bytes) else str(error.smtp_error)
        text = f"login refused ({error.smtp_code} {reply}); check user and password"
    elif isinstance(error, smtplib.SMTPResponseException):
        reply = error.smtp_error.decode("utf-8", "replace") if isinstance(
            error.smtp_error, bytes) else str(error.smtp_error)
        text = f"server replied {error.smtp_code} {reply}"
    elif isinstance(error, smtplib.SMTPRecipientsRefused):
        text = f"recipients refused: {', '.join(error.recipients)}"
    elif isinstance(error, smtplib.SMTPException):  # before OSError: it is a subclass
        text = str(error) or type(error).__name__
    elif isinstance(error, ssl.SSLError):
        text = f"TLS failed: {error.reason or error}"
    elif isinstance(error, OSError):
        text = error.strerror or type(error).__name__
        if isinstance(error, TimeoutError | socket.timeout):
            text = "timed out"
    else:
        text = str(error) or type(error).__name__
    return redact(" ".join(text.split()), secrets)


def known_secrets(settings: Settings, credentials: MailCredentials | None) -> list[str]:
    """Every secret this host holds that a careless alert text could contain."""
    secrets = [credentials.password] if credentials is not None else []
    readers: tuple[Callable[[Settings], str], ...] = (read_bearer_token, read_osf_token)
    for reader in readers:
        with contextlib.suppress(CredentialsError, SettingsError):
            secrets.append(reader(settings))
    return secrets


def send_or_raise(settings: Settings, subject: str, body: str,
                  attachments: Sequence[Attachment] = (),
                  timeout: float = SMTP_TIMEOUT) -> MailCredentials:
    """Send a mail whose delivery is the caller's whole job (the report): failures raise
    `RemoteError` with one safe line instead of being only logged."""
    credentials = load_mail_credentials(settings)
    secrets = known_secrets(settings, credentials)
    try:
        send_mail(credentials, redact(subject, secrets), redact(body, secrets), attachments,
                  timeout=timeout)
    except (OSError, smtplib.SMTPException) as error:
        raise RemoteError(f"cannot send mail through {credentials.server}:{credentials.port}: "
                          f"{describe_failure(error, secrets)}") from None
    return credentials
