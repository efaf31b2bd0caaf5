"""Outgoing email (core/email.py): the message a job carries, the MIME message built from it,
the outbox files, and delivery to a real SMTP server (aiosmtpd, started here on 127.0.0.1) in
plain text, STARTTLS and TLS, with its failures sorted into temporary and permanent."""

import ipaddress
import ssl
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from email import policy
from email.message import EmailMessage
from email.parser import BytesParser
from pathlib import Path
from typing import Any, NamedTuple

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from pydantic import ValidationError

from core import config
from core.config import Settings
from core.email import (
    EmailPermanentError,
    EmailTemporaryError,
    OutgoingEmail,
    build_message,
    send_email,
)
from tests.uvicorn_process import free_port

SENDER = "crm@tpm-finance.fr"
SENDER_NAME = "Équipe TPM Finance"
RECIPIENT = "anne.lefevre@example.fr"
SUBJECT = "Réunion de suivi : ordre du jour, clôture trimestrielle et prochaines étapes à prévoir"
TEXT = "Bonjour Anne,\n\nVoici l'ordre du jour : « bilan », <résultats> & suite.\nÀ très bientôt."
SMTP_LOGIN = "crm-mailer"
SMTP_PASSWORD = "mot-de-passe-très-secret"


def make_settings(**values: Any) -> Settings:
    return Settings(_env_file=None, **values)


def make_email(**values: Any) -> OutgoingEmail:
    return OutgoingEmail(**{"to": [RECIPIENT], "subject": SUBJECT, "text": TEXT, **values})


def parse(raw: bytes) -> EmailMessage:
    message = BytesParser(policy=policy.default).parsebytes(raw)
    assert isinstance(message, EmailMessage)
    return message


def assert_is_the_message(message: EmailMessage, email: OutgoingEmail) -> None:
    """Headers and both parts of `message` say what `email` says, accents intact."""
    assert message["Message-ID"] == email.message_id
    assert message["Subject"] == email.subject
    (sender,) = message["From"].addresses
    assert (sender.display_name, sender.addr_spec) == (SENDER_NAME, SENDER)
    assert [address.addr_spec for address in message["To"].addresses] == email.to
    assert message["Date"].datetime.tzinfo is not None
    assert message.get_content_type() == "multipart/alternative"
    plain, rich = message.iter_parts()
    assert (plain.get_content_type(), plain.get_content_charset()) == ("text/plain", "utf-8")
    assert (rich.get_content_type(), rich.get_content_charset()) == ("text/html", "utf-8")
    assert plain.get_content().rstrip("\n") == email.text
    assert "Bcc" not in message


# --- the message a job carries --------------------------------------------------------------


def test_a_job_payload_gives_back_the_same_message_and_message_id(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(config.settings, "email_from", SENDER)
    email = make_email(html="<p>Bonjour</p>", reply_to="contact@tpm-finance.fr")
    payload = email.model_dump(mode="json")
    assert OutgoingEmail.model_validate(payload) == email
    assert email.message_id.startswith("<")
    assert email.message_id.endswith("@tpm-finance.fr>")
    assert make_email().message_id != email.message_id


def test_recipients_are_normalised_and_counted_once() -> None:
    email = make_email(to=[" Anne.Lefevre@EXAMPLE.fr ", "anne.lefevre@example.fr", RECIPIENT])
    assert email.to == ["Anne.Lefevre@example.fr", RECIPIENT]


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("subject", "Bonjour\r\nBcc: intrus@example.com"),
        ("subject", "Bonjour\nBcc: intrus@example.com"),
        ("subject", "Bonjour\rBcc: intrus@example.com"),
        ("subject", "Bonjour\u2028Bcc: intrus@example.com"),
        ("subject", "Bonjour\x85Bcc: intrus@example.com"),
        ("subject", "Bonjour\x00"),
        ("subject", "   "),
        ("subject", "é" * 201),
        ("to", [f"{RECIPIENT}\r\nBcc: intrus@example.com"]),
        ("to", [f"Anne <{RECIPIENT}>"]),
        ("to", [f"{RECIPIENT}, intrus@example.com"]),
        ("to", ["not-an-address"]),
        ("to", []),
        ("to", [f"user{n}@example.fr" for n in range(51)]),
        ("reply_to", "contact@tpm-finance.fr\r\nBcc: intrus@example.com"),
        ("text", "Bonjour\x00"),
        ("text", ""),
        ("html", "<p>\x00</p>"),
        ("message_id", "<id@tpm-finance.fr>\r\nBcc: intrus@example.com"),
        ("message_id", "id@tpm-finance.fr"),
        ("bcc", ["intrus@example.com"]),
    ],
)
def test_unsafe_or_malformed_values_are_refused(field: str, value: object) -> None:
    with pytest.raises(ValidationError) as refused:
        make_email(**{field: value})
    assert refused.value.errors()[0]["loc"][0] == field


def test_subject_keeps_french_typography() -> None:
    # Narrow no-break spaces before the colon and the question mark: printable, not line breaks.
    subject = "Relance\u202f: êtes-vous disponible\u202f?"
    assert make_email(subject=subject).subject == subject


def test_html_made_from_the_text_escapes_it() -> None:
    message = build_message(make_email(), make_settings(email_from=SENDER))
    html = message.get_body(("html",))
    assert html is not None
    page = html.get_content()
    assert "&lt;résultats&gt; &amp; suite.<br>" in page
    assert "<p>Bonjour Anne,</p>" in page
    assert "<title>Réunion de suivi : ordre du jour" in page
    assert "<résultats>" not in page


def test_html_given_is_sent_as_it_is() -> None:
    email = make_email(html="<p>Bonjour <strong>Anne</strong></p>")
    html = build_message(email, make_settings(email_from=SENDER)).get_body(("html",))
    assert html is not None
    assert html.get_content().rstrip("\n") == "<p>Bonjour <strong>Anne</strong></p>"


def test_headers_are_encoded_and_folded_for_smtp() -> None:
    settings = make_settings(email_from=SENDER, email_from_name=SENDER_NAME)
    raw = build_message(make_email(subject=SUBJECT * 2), settings).as_bytes()
    raw.decode("ascii")  # non-ASCII header text is RFC 2047-encoded, bodies quoted-printable
    assert all(len(line) <= 78 for line in raw.split(b"\r\n"))
    assert parse(raw)["Subject"] == SUBJECT * 2


# --- settings -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("values", "complaint"),
    [
        ({"email_backend": "smtp", "email_from": SENDER}, "SMTP_HOST"),
        ({"email_backend": "smtp", "smtp_host": "smtp.example.fr"}, "EMAIL_FROM"),
        ({"smtp_username": SMTP_LOGIN}, "SMTP_PASSWORD"),
        ({"smtp_password": SMTP_PASSWORD}, "SMTP_USERNAME"),
        (
            {"smtp_security": "none", "smtp_username": SMTP_LOGIN, "smtp_password": "x"},
            "in clear",
        ),
        ({"smtp_ca_file": "/nonexistent/ca.pem"}, "SMTP_CA_FILE"),
        ({"email_from": "crm@tpm-finance.fr\r\nBcc: intrus@example.com"}, "email"),
        ({"email_from_name": "TPM\r\nBcc: intrus@example.com"}, "line breaks"),
        ({"email_from_name": "TPM <intrus@example.com>"}, "must not contain"),
        ({"email_from_name": "TPM Finance, Paris"}, "must not contain"),
        ({"email_from_name": '"TPM" Finance'}, "must not contain"),
    ],
)
def test_email_settings_that_cannot_work_stop_the_start(
    values: dict[str, Any], complaint: str
) -> None:
    with pytest.raises(ValidationError, match=complaint):
        make_settings(**values)


# --- the file backend -----------------------------------------------------------------------


async def test_file_backend_writes_each_message_once_as_an_eml_file(tmp_path: Path) -> None:
    outbox = tmp_path / "data" / "outbox"  # created on first use
    settings = make_settings(
        email_outbox_dir=outbox, email_from=SENDER, email_from_name=SENDER_NAME
    )
    first = make_email()
    await send_email(first, settings)
    await send_email(first, settings)  # a retried job: the same Message-ID, no second file
    second = make_email(to=["bruno@example.fr", RECIPIENT], subject="Compte rendu")
    await send_email(second, settings)

    files = sorted(outbox.iterdir())
    assert [path.suffix for path in files] == [".eml", ".eml"]  # no temporary file left over
    assert [parse(path.read_bytes())["Message-ID"] for path in files] == [
        first.message_id,
        second.message_id,
    ]
    assert_is_the_message(parse(files[0].read_bytes()), first)
    assert_is_the_message(parse(files[1].read_bytes()), second)
    assert stat.S_IMODE(files[0].stat().st_mode) == 0o600


async def test_an_outbox_that_cannot_be_written_is_a_temporary_error(tmp_path: Path) -> None:
    blocker = tmp_path / "outbox"
    blocker.write_text("a file where the directory should be")
    with pytest.raises(EmailTemporaryError, match="outbox"):
        await send_email(make_email(), make_settings(email_outbox_dir=blocker))


# --- a real SMTP server ---------------------------------------------------------------------


class Certificate(NamedTuple):
    cert_file: Path
    key_file: Path

    def server_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(self.cert_file, self.key_file)
        return context


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> Certificate:
    """A self-signed certificate for 127.0.0.1, which the client trusts through SMTP_CA_FILE."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(days=1))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    directory = tmp_path_factory.mktemp("smtp-tls")
    cert_file, key_file = directory / "cert.pem", directory / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return Certificate(cert_file, key_file)


class Mailbox:
    """An aiosmtpd handler keeping what it accepts; it can answer RCPT or DATA with an error."""

    def __init__(
        self,
        *,
        rcpt_reply: str | None = None,
        refused: set[str] | None = None,
        data_replies: list[str] | None = None,
    ):
        # The answer to RCPT TO for the addresses in `refused` (every address if None).
        self.rcpt_reply = rcpt_reply
        self.refused = refused
        # Answers given to the next DATA commands, one each, before accepting again.
        self.data_replies = list(data_replies or [])
        self.delivered: list[Envelope] = []

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        if self.rcpt_reply is not None and (self.refused is None or address in self.refused):
            return self.rcpt_reply
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        if self.data_replies:
            return self.data_replies.pop(0)
        self.delivered.append(envelope)
        return "250 Message accepted for delivery"

    def message(self) -> EmailMessage:
        """The one message delivered, parsed as a receiver would."""
        (envelope,) = self.delivered
        assert isinstance(envelope.content, bytes)
        # Stored with local line ends, as a mail store does: the parser keeps a CR of CRLF in
        # quoted-printable text.
        return parse(envelope.content.replace(b"\r\n", b"\n"))


def accept_login(
    server: SMTP, session: Session, envelope: Envelope, mechanism: str, auth_data: object
) -> AuthResult:
    valid = isinstance(auth_data, LoginPassword) and auth_data == (
        SMTP_LOGIN.encode(),
        SMTP_PASSWORD.encode(),
    )
    return AuthResult(success=valid, handled=False)


@contextmanager
def smtp_server(mailbox: Mailbox, **options: Any) -> Iterator[int]:
    """An SMTP server on 127.0.0.1 handing what it receives to `mailbox`; yields its port."""
    port = free_port()
    controller = Controller(mailbox, hostname="127.0.0.1", port=port, **options)
    controller.start()
    try:
        yield port
    finally:
        controller.stop()


def smtp_settings(port: int, **values: Any) -> Settings:
    return make_settings(
        **{
            "email_backend": "smtp",
            "smtp_host": "127.0.0.1",
            "smtp_port": port,
            "smtp_security": "none",
            "email_from": SENDER,
            "email_from_name": SENDER_NAME,
            **values,
        }
    )


def server_options(security: str, certificate: Certificate) -> dict[str, Any]:
    """aiosmtpd's options for `security`: STARTTLS demanded before MAIL, or TLS from the start."""
    if security == "starttls":
        return {"tls_context": certificate.server_context(), "require_starttls": True}
    if security == "ssl":
        return {"ssl_context": certificate.server_context()}
    return {}


@pytest.mark.parametrize("security", ["none", "starttls", "ssl"])
async def test_smtp_delivers_the_message_intact(security: str, certificate: Certificate) -> None:
    mailbox = Mailbox()
    email = make_email(to=[RECIPIENT, "bruno@example.fr"], reply_to="contact@tpm-finance.fr")
    with smtp_server(mailbox, **server_options(security, certificate)) as port:
        ca_file = None if security == "none" else certificate.cert_file
        await send_email(email, smtp_settings(port, smtp_security=security, smtp_ca_file=ca_file))
    (envelope,) = mailbox.delivered
    assert (envelope.mail_from, envelope.rcpt_tos) == (SENDER, [RECIPIENT, "bruno@example.fr"])
    message = mailbox.message()
    assert_is_the_message(message, email)
    assert message["Reply-To"] == "contact@tpm-finance.fr"


async def test_smtp_logs_in_with_the_password_from_its_file(
    certificate: Certificate, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    password_file = tmp_path / "smtp_password"
    password_file.write_text(SMTP_PASSWORD + "\n")
    monkeypatch.setenv("SMTP_PASSWORD_FILE", str(password_file))
    mailbox = Mailbox()
    options = server_options("starttls", certificate)
    with smtp_server(mailbox, authenticator=accept_login, auth_required=True, **options) as port:
        settings = smtp_settings(
            port,
            smtp_security="starttls",
            smtp_ca_file=certificate.cert_file,
            smtp_username=SMTP_LOGIN,
        )
        await send_email(make_email(), settings)
    assert mailbox.message()["Subject"] == SUBJECT


async def test_a_refused_login_is_permanent_and_does_not_tell_the_password(
    certificate: Certificate,
) -> None:
    mailbox = Mailbox()
    options = server_options("starttls", certificate)
    with smtp_server(mailbox, authenticator=accept_login, auth_required=True, **options) as port:
        settings = smtp_settings(
            port,
            smtp_security="starttls",
            smtp_ca_file=certificate.cert_file,
            smtp_username=SMTP_LOGIN,
            smtp_password="wrong-password-123",
        )
        with pytest.raises(EmailPermanentError, match="535") as refused:
            await send_email(make_email(), settings)
    assert "wrong-password-123" not in str(refused.value)
    # Raised outside the library's frames: no chained error keeps them (and the password) alive.
    assert refused.value.__context__ is None
    assert refused.value.__cause__ is None
    assert mailbox.delivered == []


async def test_a_temporary_refusal_is_retried_and_the_message_arrives_once() -> None:
    mailbox = Mailbox(data_replies=["451 4.3.0 Try again later"])
    email = make_email()
    with smtp_server(mailbox) as port:
        settings = smtp_settings(port)
        with pytest.raises(EmailTemporaryError, match="451"):
            await send_email(email, settings)
        assert mailbox.delivered == []
        # What the job does on its next attempt, with the payload it stored.
        await send_email(OutgoingEmail.model_validate(email.model_dump(mode="json")), settings)
    assert mailbox.message()["Message-ID"] == email.message_id


@pytest.mark.parametrize(
    ("reply", "error"),
    [
        ("550 5.1.1 No such user here", EmailPermanentError),
        ("450 4.2.1 Mailbox busy", EmailTemporaryError),
    ],
)
async def test_every_recipient_refused(reply: str, error: type[Exception]) -> None:
    mailbox = Mailbox(rcpt_reply=reply)
    with smtp_server(mailbox) as port:
        email = make_email(to=[RECIPIENT, "bruno@example.fr"])
        with pytest.raises(error, match=reply[:3]):
            await send_email(email, smtp_settings(port))
    assert mailbox.delivered == []


async def test_some_recipients_refused_is_no_failure(caplog: pytest.LogCaptureFixture) -> None:
    """The others have the message: a retry would send it to them a second time."""
    mailbox = Mailbox(rcpt_reply="550 5.1.1 No such user here", refused={"bruno@example.fr"})
    email = make_email(to=[RECIPIENT, "bruno@example.fr"])
    with smtp_server(mailbox) as port:
        await send_email(email, smtp_settings(port))
    (envelope,) = mailbox.delivered
    assert envelope.rcpt_tos == [RECIPIENT]
    (warning,) = [record for record in caplog.records if record.name == "core.email"]
    assert warning.levelname == "WARNING"
    assert "1 of its recipients (550)" in warning.getMessage()


async def test_a_closed_port_is_a_temporary_error() -> None:
    with pytest.raises(EmailTemporaryError, match="could not be reached"):
        await send_email(make_email(), smtp_settings(free_port()))


@pytest.mark.parametrize("security", ["starttls", "ssl"])
async def test_an_untrusted_certificate_is_a_permanent_error(
    security: str, certificate: Certificate
) -> None:
    mailbox = Mailbox()
    options = server_options(security, certificate)
    with smtp_server(mailbox, **options) as port, pytest.raises(EmailPermanentError, match="cert"):
        # No SMTP_CA_FILE: the system's CAs do not know this self-signed certificate.
        await send_email(make_email(), smtp_settings(port, smtp_security=security))
    assert mailbox.delivered == []


async def test_starttls_demanded_from_a_server_without_it_is_a_permanent_error(
    certificate: Certificate,
) -> None:
    mailbox = Mailbox()
    with smtp_server(mailbox) as port:
        settings = smtp_settings(port, smtp_security="starttls", smtp_ca_file=certificate.cert_file)
        with pytest.raises(EmailPermanentError, match="STARTTLS"):
            await send_email(make_email(), settings)
    assert mailbox.delivered == []


# --- header injection -----------------------------------------------------------------------


async def test_the_display_name_checked_at_start_up_is_a_plain_phrase() -> None:
    """Letters, digits, spaces, accents and the like pass; they need no quoting."""
    mailbox = Mailbox()
    display_name = "L'équipe TPM & partenaires - relations investisseurs"
    with smtp_server(mailbox) as port:
        await send_email(make_email(), smtp_settings(port, email_from_name=display_name))
    (sender,) = mailbox.message()["From"].addresses
    assert (sender.display_name, sender.addr_spec) == (display_name, SENDER)


@pytest.mark.parametrize(
    "display_name",
    [
        "TPM\r\nBcc: intrus@example.com",
        # Quoting such a long name is what the stdlib's folding gets wrong (CPython gh-80222).
        'TPM <intrus@example.com>, "Bcc: intrus@example.com"; Cc: autre@example.com',
    ],
)
async def test_a_display_name_that_slipped_past_the_settings_sends_nothing(
    display_name: str,
) -> None:
    mailbox = Mailbox()
    with smtp_server(mailbox) as port:
        unchecked = smtp_settings(port).model_copy(update={"email_from_name": display_name})
        with pytest.raises(EmailPermanentError, match="cannot be built"):
            await send_email(make_email(), unchecked)
    assert mailbox.delivered == []


async def test_a_subject_that_looks_like_a_header_stays_in_the_subject() -> None:
    mailbox = Mailbox()
    subject = "Bonjour Bcc: intrus@example.com To: autre@example.com"
    with smtp_server(mailbox) as port:
        await send_email(make_email(subject=subject), smtp_settings(port))
    (envelope,) = mailbox.delivered
    assert envelope.rcpt_tos == [RECIPIENT]
    message = mailbox.message()
    assert message["Subject"] == subject
    assert "Bcc" not in message
    assert [address.addr_spec for address in message["To"].addresses] == [RECIPIENT]
