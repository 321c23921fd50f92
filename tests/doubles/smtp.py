"""A real SMTP server on loopback that keeps every mail it accepts (tests and the lab).

Built on aiosmtpd: EHLO, STARTTLS (with a certificate given by the caller), AUTH LOGIN and
PLAIN checked against one user and password, and by default both TLS and login required
before a mail is accepted, as a real submission server would. Accepted mails are kept in
memory (`SmtpDouble.messages`) and, with a maildir, written as one `.eml` file each.

As a context manager in tests:

    with SmtpDouble(user="u", password="p", cert=c, key=k) as smtp:
        ... smtp.port ...; smtp.wait_for(1)

As a process in the lab (until SIGTERM):

    python -m tests.doubles.smtp --port 0 --user U --password P --maildir DIR \
        [--port-file F] [--tls-cert C --tls-key K]
"""

from __future__ import annotations

import argparse
import asyncio
import email
import email.policy
import os
import signal
import ssl
import subprocess
import threading
import time
from collections.abc import Awaitable
from email.message import EmailMessage
from pathlib import Path
from types import TracebackType
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session

from tests.doubles.portfile import write_port_file


class _FreePortController(Controller):
    """aiosmtpd's Controller, able to bind port 0 and learn the port the kernel chose
    (upstream would try to reach port 0 when it checks that the server is up)."""

    def _create_server(self) -> Awaitable[asyncio.AbstractServer]:
        created = super()._create_server()

        async def bind_and_learn_port() -> asyncio.AbstractServer:
            server = await created
            assert isinstance(server, asyncio.Server)
            self.port = server.sockets[0].getsockname()[1]
            return server

        return bind_and_learn_port()


class _Authenticator:
    def __init__(self, user: str, password: str, double: SmtpDouble) -> None:
        self.user = user.encode()
        self.password = password.encode()
        self.double = double

    def __call__(self, server: SMTP, session: Session, envelope: Envelope, mechanism: str,
                 auth_data: Any) -> AuthResult:
        ok = (isinstance(auth_data, LoginPassword) and auth_data.login == self.user
              and auth_data.password == self.password)
        with self.double.lock:
            self.double.logins.append((mechanism, ok))
        return AuthResult(success=ok, handled=False)


class _Handler:
    def __init__(self, double: SmtpDouble) -> None:
        self.double = double

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        self.double._keep(envelope, tls=session.ssl is not None)
        return "250 2.0.0 OK: kept"


class SmtpDouble:
    """The server; `messages` holds every accepted mail as an `EmailMessage`."""

    def __init__(self, user: str = "", password: str = "", *, host: str = "127.0.0.1",
                 port: int = 0, cert: Path | None = None, key: Path | None = None,
                 maildir: Path | None = None, require_tls: bool = True) -> None:
        self.host = host
        self.requested_port = port
        self.maildir = maildir
        self.lock = threading.Lock()
        self.messages: list[EmailMessage] = []
        self.envelopes: list[tuple[str, list[str], bool]] = []  # from, to, over TLS
        self.logins: list[tuple[str, bool]] = []  # mechanism, accepted
        tls_context: ssl.SSLContext | None = None
        if cert is not None and key is not None:
            tls_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            tls_context.load_cert_chain(str(cert), str(key))
        smtp_kwargs: dict[str, Any] = {}
        if user:
            smtp_kwargs.update(authenticator=_Authenticator(user, password, self),
                               auth_required=True,
                               auth_require_tls=tls_context is not None and require_tls)
        if tls_context is not None:
            smtp_kwargs.update(tls_context=tls_context, require_starttls=require_tls)
        self.controller = _FreePortController(_Handler(self), hostname=host, port=port,
                                              **smtp_kwargs)

    @property
    def port(self) -> int:
        return int(self.controller.port)

    def start(self) -> SmtpDouble:
        self.controller.start()
        return self

    def stop(self) -> None:
        self.controller.stop()

    def __enter__(self) -> SmtpDouble:
        return self.start()

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.stop()

    def _keep(self, envelope: Envelope, tls: bool) -> None:
        raw = envelope.original_content or b""
        message = email.message_from_bytes(raw, policy=email.policy.default)
        assert isinstance(message, EmailMessage)
        with self.lock:
            self.messages.append(message)
            self.envelopes.append((str(envelope.mail_from), list(envelope.rcpt_tos), tls))
            number = len(self.messages)
        if self.maildir is not None:
            self.maildir.mkdir(parents=True, exist_ok=True)
            # The process id keeps names unique when the lab restarts the double (SMTP down).
            name = f"{time.strftime('%Y%m%dT%H%M%S')}_{os.getpid()}_{number:05d}.eml"
            temporary = self.maildir / f".{name}.tmp"
            temporary.write_bytes(raw)
            temporary.rename(self.maildir / name)

    def wait_for(self, count: int, timeout: float = 10.0) -> list[EmailMessage]:
        """Wait until at least `count` mails arrived; return them all (fewer on timeout)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                if len(self.messages) >= count:
                    return list(self.messages)
            time.sleep(0.02)
        with self.lock:
            return list(self.messages)


def make_self_signed_cert(folder: Path, name: str = "smtp") -> tuple[Path, Path]:
    """A throwaway certificate for 127.0.0.1 and localhost (openssl from Debian); it is its
    own CA, so clients trust it by pointing `COLLECTOR_SMTP_CAFILE` at the cert file."""
    folder.mkdir(parents=True, exist_ok=True)
    cert, key = folder / f"{name}.crt", folder / f"{name}.key"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
         "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost",
         "-addext", "basicConstraints=critical,CA:TRUE",
         "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True, timeout=60,
    )
    return cert, key


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="SMTP test double that keeps its mail")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--user", default="")
    parser.add_argument("--password", default="")
    parser.add_argument("--maildir", type=Path, required=True)
    parser.add_argument("--port-file", type=Path, help="write the bound port here when ready")
    parser.add_argument("--tls-cert", type=Path)
    parser.add_argument("--tls-key", type=Path)
    args = parser.parse_args(argv)
    if (args.tls_cert is None) != (args.tls_key is None):
        parser.error("--tls-cert and --tls-key go together")
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    with SmtpDouble(args.user, args.password, host=args.host, port=args.port,
                    cert=args.tls_cert, key=args.tls_key, maildir=args.maildir) as smtp:
        if args.port_file is not None:
            write_port_file(args.port_file, smtp.port)
        print(f"smtp double listening on {args.host}:{smtp.port}", flush=True)
        stop.wait()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
