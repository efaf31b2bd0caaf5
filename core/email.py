"""Outgoing email: the message a job carries (`OutgoingEmail`), its MIME form, and its delivery
to the outbox directory (development) or to an SMTP server.

Sending happens in a job, never in a request: `send_email` raises `EmailTemporaryError` when a
later attempt may succeed and `EmailPermanentError` when it cannot.
"""

import asyncio
import contextlib
import hashlib
import html
import logging
import os
import re
import ssl
import tempfile
from datetime import UTC, datetime
from email import policy
from email.headerregistry import Address
from email.message import EmailMessage
from email.utils import make_msgid
from pathlib import Path
from typing import Annotated

import aiosmtplib
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints

from core import config
from core.config import Settings, check_display_name, refuse_control_characters
from schemas.common import Email

logger = logging.getLogger(__name__)

# Used for the From address and the Message-ID domain when EMAIL_FROM is unset (file backend
# only: the smtp backend requires EMAIL_FROM).
FALLBACK_SENDER = "crm@localhost"
DEFAULT_SMTP_PORTS = {"starttls": 587, "ssl": 465, "none": 25}
MAX_RECIPIENTS = 50
MAX_SUBJECT_LENGTH = 200
MAX_BODY_LENGTH = 200_000
# What make_msgid writes: <id-left@domain>, printable ASCII without spaces or angle brackets.
_MESSAGE_ID_PATTERN = r"^<[!-;=?-~]{1,400}@[A-Za-z0-9.-]{1,253}>$"


class EmailError(Exception):
    """A message that was not delivered; the text names the cause, never a secret."""


class EmailTemporaryError(EmailError):
    """Delivery may succeed later (server unreachable, timeout, 4xx reply): retry the job."""


class EmailPermanentError(EmailError):
    """Delivery cannot succeed as configured (5xx reply, refused login, untrusted certificate)."""


def sender_address(settings: Settings) -> str:
    return settings.email_from or FALLBACK_SENDER


def _new_message_id() -> str:
    # Made once, when the message is: a job retried (even after a restart) resends the same
    # Message-ID, by which receivers recognise a duplicate.
    return make_msgid(domain=sender_address(config.settings).rpartition("@")[2])


def _reject_nul(value: str) -> str:
    if "\x00" in value:
        raise ValueError("must not contain NUL bytes")
    return value


def _distinct(addresses: list[str]) -> list[str]:
    return list(dict.fromkeys(addresses))


Subject = Annotated[
    str,
    StringConstraints(strip_whitespace=True, min_length=1, max_length=MAX_SUBJECT_LENGTH),
    AfterValidator(refuse_control_characters),
]
Body = Annotated[str, StringConstraints(min_length=1, max_length=MAX_BODY_LENGTH)]


class OutgoingEmail(BaseModel):
    """One message, as a job payload carries it (`model_dump(mode="json")` / `model_validate`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    to: Annotated[
        list[Email],
        Field(min_length=1, max_length=MAX_RECIPIENTS),
        AfterValidator(_distinct),
    ]
    subject: Subject
    text: Annotated[Body, AfterValidator(_reject_nul)]
    # Unset: a minimal HTML version of `text`.
    html: Annotated[Body, AfterValidator(_reject_nul)] | None = None
    reply_to: Email | None = None
    message_id: Annotated[str, Field(pattern=_MESSAGE_ID_PATTERN)] = Field(
        default_factory=_new_message_id
    )


def html_from_text(text: str, title: str) -> str:
    """A minimal HTML page showing `text`: paragraphs at blank lines, every character escaped."""
    paragraphs = re.split(r"\n[ \t]*\n", text.replace("\r\n", "\n").strip())
    body = "\n".join(
        "<p>" + html.escape(paragraph.strip("\n")).replace("\n", "<br>\n") + "</p>"
        for paragraph in paragraphs
        if paragraph.strip()
    )
    return (
        '<!DOCTYPE html>\n<html lang="fr">\n<head>\n<meta charset="utf-8">\n'
        f"<title>{html.escape(title)}</title>\n</head>\n<body>\n{body}\n</body>\n</html>\n"
    )


def build_message(email: OutgoingEmail, settings: Settings) -> EmailMessage:
    """The MIME message: multipart/alternative (plain text, then HTML), UTF-8.

    The stdlib's `policy.SMTP` encodes non-ASCII header text (RFC 2047), folds long headers and
    raises ValueError on a header value holding CR or LF: no value can start a header of its own.
    """
    message = EmailMessage(policy=policy.SMTP)
    message["Date"] = datetime.now(UTC)
    message["Message-ID"] = email.message_id
    # Checked again here, not only at start-up: a name that needs quoting would be mangled.
    display_name = check_display_name(settings.email_from_name or "")
    message["From"] = Address(display_name=display_name, addr_spec=sender_address(settings))
    message["To"] = tuple(Address(addr_spec=address) for address in email.to)
    if email.reply_to is not None:
        message["Reply-To"] = Address(addr_spec=email.reply_to)
    message["Subject"] = email.subject
    # Quoted-printable keeps French text readable in the source and 7-bit safe for any relay.
    message.set_content(email.text, cte="quoted-printable")
    html_body = email.html if email.html is not None else html_from_text(email.text, email.subject)
    message.add_alternative(html_body, subtype="html", cte="quoted-printable")
    return message


async def send_email(email: OutgoingEmail, settings: Settings) -> None:
    """Deliver `email` through EMAIL_BACKEND; EmailTemporaryError or EmailPermanentError if not."""
    failure: EmailError | None = None
    try:
        message = build_message(email, settings)
    except ValueError as exc:
        failure = EmailPermanentError(f"The message cannot be built: {exc}")
    if failure is not None:
        raise failure
    if settings.email_backend == "smtp":
        await _send_by_smtp(message, settings)
        return
    try:
        path = await asyncio.to_thread(write_to_outbox, message, settings.email_outbox_dir)
    except OSError as exc:
        failure = EmailTemporaryError(f"The outbox cannot be written: {exc}")
    if failure is not None:
        raise failure
    logger.info("Email %s written to %s", email.message_id, path)


def write_to_outbox(message: EmailMessage, directory: Path) -> Path:
    """Write `message` as `<UTC time>-<Message-ID hash>.eml` in `directory`, atomically.

    A message already there (same Message-ID: a retried job) is not written twice.
    """
    directory.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256(str(message["Message-ID"]).encode()).hexdigest()[:16]
    written = next(directory.glob(f"*-{digest}.eml"), None)
    if written is not None:
        return written
    target = directory / f"{datetime.now(UTC):%Y%m%dT%H%M%S%fZ}-{digest}.eml"
    # mkstemp creates the file with mode 600: messages hold personal data.
    fd, temporary = tempfile.mkstemp(dir=directory, prefix=".", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as out:
            # Unix line ends, like a maildir: what mail readers and Python's parser expect
            # from a file (the SMTP backend sends CRLF, as the protocol wants).
            out.write(message.as_bytes(policy=message.policy.clone(linesep="\n")))
            out.flush()
            os.fsync(out.fileno())
        # A reader of the outbox sees a whole message or none, never half of one.
        os.replace(temporary, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        raise
    return target


async def _send_by_smtp(message: EmailMessage, settings: Settings) -> None:
    security = settings.smtp_security
    password = settings.smtp_password
    failure: EmailError | None = None
    try:
        refused, _ = await aiosmtplib.send(
            message,
            hostname=settings.smtp_host,
            port=settings.smtp_port or DEFAULT_SMTP_PORTS[security],
            username=settings.smtp_username,
            password=None if password is None else password.get_secret_value(),
            use_tls=security == "ssl",
            # True, not None: a server that does not offer STARTTLS is an error, not plain text.
            start_tls=security == "starttls",
            timeout=settings.smtp_timeout_seconds,
            tls_context=None if security == "none" else _tls_context(settings),
        )
    except (aiosmtplib.SMTPException, OSError) as exc:
        failure = _classify_smtp_failure(exc)
    # Raised outside the except block so that the library's frames (the password among their
    # locals) are not kept alive in the traceback the job layer records.
    if failure is not None:
        raise failure
    if refused:
        # The others have the message: retrying would send it to them again.
        logger.warning(
            "Email %s not delivered to %d of its recipients (%s)",
            message["Message-ID"],
            len(refused),
            ", ".join(sorted({str(response.code) for response in refused.values()})),
        )


def _tls_context(settings: Settings) -> ssl.SSLContext:
    # Certificates and host names are always verified; SMTP_CA_FILE replaces the system's CAs.
    ca_file = settings.smtp_ca_file
    return ssl.create_default_context(cafile=None if ca_file is None else str(ca_file))


def _classify_smtp_failure(exc: Exception) -> EmailError:
    if isinstance(exc, aiosmtplib.SMTPRecipientsRefused):
        codes = sorted({refusal.code for refusal in exc.recipients})
        kind = EmailPermanentError if all(code >= 500 for code in codes) else EmailTemporaryError
        return kind(f"The SMTP server refused every recipient ({', '.join(map(str, codes))})")
    if isinstance(exc, aiosmtplib.SMTPResponseException):
        kind = EmailPermanentError if exc.code >= 500 else EmailTemporaryError
        return kind(f"The SMTP server answered {exc.code}: {_printable(exc.message)}")
    if _caused_by_untrusted_certificate(exc):
        return EmailPermanentError(
            "The SMTP server's certificate is not trusted (see SMTP_CA_FILE and SMTP_HOST)"
        )
    if isinstance(exc, (ConnectionError, TimeoutError, OSError)):
        # aiosmtplib's connection, disconnection and timeout errors are among these.
        return EmailTemporaryError(f"The SMTP server could not be reached: {_printable(str(exc))}")
    # The server lacks what the settings ask for (STARTTLS, AUTH, SMTPUTF8): a configuration to
    # change, not a moment to wait for.
    return EmailPermanentError(f"The SMTP server cannot do this: {_printable(str(exc))}")


def _caused_by_untrusted_certificate(exc: BaseException) -> bool:
    cause: BaseException | None = exc
    while cause is not None:
        if isinstance(cause, ssl.SSLCertVerificationError):
            return True
        cause = cause.__cause__ or cause.__context__
    return False


def _printable(text: str) -> str:
    """A server's words, on one line and short, for an error message kept with the job."""
    return " ".join(text.split())[:200]
