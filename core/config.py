"""Application settings, read from the environment and an optional `.env` file."""

import ipaddress
import os
import secrets
import unicodedata
from pathlib import Path
from typing import Annotated, Any, Literal, get_args
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic.fields import FieldInfo
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)
from sqlalchemy.engine import make_url

from schemas.common import Email

PROJECT_ROOT = Path(__file__).resolve().parent.parent
DATA_DIR = PROJECT_ROOT / "data"

# The placeholder shipped in .env.example: never acceptable, whatever DEBUG says.
EXAMPLE_SECRET_KEY = "change-me-to-a-long-random-string-of-at-least-32-bytes"  # noqa: S105
MIN_SECRET_KEY_BYTES = 32

JWT_ISSUER = "tpm-finance-crm"
JWT_AUDIENCE = "tpm-finance-crm-api"

SECRET_FILE_SUFFIX = "_FILE"  # noqa: S105
# A secret is a few bytes: the cap keeps a mistaken SECRET_KEY_FILE=/dev/zero from hanging.
MAX_SECRET_FILE_BYTES = 64 * 1024

# Control characters and line or paragraph separators: what could end a mail header early.
_LINE_BREAKING_CATEGORIES = frozenset({"Cc", "Zl", "Zp"})


def refuse_control_characters(value: str) -> str:
    """`value` if it holds no control character or line break (a header's text), else ValueError."""
    if any(unicodedata.category(char) in _LINE_BREAKING_CATEGORIES for char in value):
        raise ValueError("must not contain control characters or line breaks")
    return value


def to_async_url(url: str) -> str:
    """Accept the URL forms Compose and most tools write and point them at asyncpg."""
    for prefix in ("postgresql+asyncpg://", "postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+asyncpg://" + url[len(prefix) :]
    raise ValueError("DATABASE_URL must start with postgresql:// or postgresql+asyncpg://")


class SecretFileError(ValueError):
    """A `<NAME>_FILE` setting that cannot be used (unreadable, empty, or set beside NAME)."""


def is_secret_field(field: FieldInfo) -> bool:
    """A SecretStr setting, optional or not: the settings `<NAME>_FILE` applies to."""
    return field.annotation is SecretStr or SecretStr in get_args(field.annotation)


def read_secret_file(variable: str, path: str) -> str:
    """The secret held in `path`, without the one newline editors and `echo` put at the end."""
    try:
        with open(path, "rb") as secret_file:
            raw = secret_file.read(MAX_SECRET_FILE_BYTES + 1)
    except OSError as exc:
        raise SecretFileError(f"{variable}: cannot read {path} ({exc.strerror})") from None
    if len(raw) > MAX_SECRET_FILE_BYTES:
        raise SecretFileError(f"{variable}: {path} is larger than {MAX_SECRET_FILE_BYTES} bytes")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise SecretFileError(f"{variable}: {path} is not UTF-8 text") from None
    value = text[:-2] if text.endswith("\r\n") else text.removesuffix("\n")
    if not value.strip():
        # An empty file is a mistake, not "unset": it would silently fall back to a default.
        raise SecretFileError(f"{variable}: {path} is empty")
    return value


# RFC 5322 specials: a display name holding one must be written as a quoted string, and the
# Python releases without the fix of CPython gh-80222 (2025) drop the quotes when they fold a
# long header, so that "Finance, Paris" becomes two addresses. Without them, none is needed.
_DISPLAY_NAME_SPECIALS = frozenset('"(),.:;<>@[\\]')


def check_display_name(value: str) -> str:
    """`value` if it can be a From display name as it is, else ValueError."""
    refuse_control_characters(value)
    found = sorted(_DISPLAY_NAME_SPECIALS.intersection(value))
    if found:
        raise ValueError(f"must not contain any of {' '.join(found)}")
    return value


class SecretFilesSource(PydanticBaseSettingsSource):
    """Every secret setting can come from the file named by `<NAME>_FILE` (Docker and Compose
    secrets under /run/secrets), so that it need not sit in the process environment.

    Keyed on the SecretStr type: a secret setting added later gets it with no further code.
    """

    def __init__(
        self, settings_cls: type[BaseSettings], *variables: PydanticBaseSettingsSource
    ) -> None:
        super().__init__(settings_cls)
        # The environment and .env sources: where NAME and NAME_FILE are looked up.
        self._variables = variables

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False  # unused: __call__ reads every field at once

    def _lookup(self, name: str) -> str | None:
        for source in self._variables:
            # Sources that are not case-sensitive (the default) keep lower-cased names.
            value = getattr(source, "env_vars", {}).get(name.lower())
            if isinstance(value, str) and value.strip():
                return value
        return None

    def __call__(self) -> dict[str, Any]:
        values: dict[str, Any] = {}
        for name, field in self.settings_cls.model_fields.items():
            if not is_secret_field(field):
                continue
            variable = name.upper() + SECRET_FILE_SUFFIX
            path = self._lookup(variable)
            if path is None:
                continue
            if self._lookup(name.upper()) is not None:
                raise SecretFileError(f"{name.upper()} and {variable} are both set; keep one")
            values[name] = read_secret_file(variable, path.strip())
        return values


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_file=".env", env_file_encoding="utf-8", extra="ignore")

    database_url: str | None = None
    # Kept out of DATABASE_URL so that it can come from DATABASE_PASSWORD_FILE.
    database_password: SecretStr | None = None
    # The owner role's URL, for migrations and restore.sh; unset, DATABASE_URL's role is used.
    migration_database_url: str | None = None
    # Likewise kept out of MIGRATION_DATABASE_URL (MIGRATION_DATABASE_PASSWORD_FILE).
    migration_database_password: SecretStr | None = None
    database_echo: bool = False
    database_pool_size: int = Field(default=20, ge=1, le=100)
    database_max_overflow: int = Field(default=0, ge=0, le=100)
    # Server-side cap on any single statement, so one slow query cannot hold a connection.
    database_statement_timeout_ms: int = Field(default=10_000, ge=100, le=600_000)
    database_ready_timeout_s: float = Field(default=2.0, gt=0, le=30)
    # Where `python main.py` keeps its embedded PostgreSQL when DATABASE_URL is unset.
    embedded_pgdata: Path = DATA_DIR / "postgres"

    debug: bool = False
    secret_key: SecretStr | None = None
    jwt_algorithm: str = "HS256"
    jwt_expiration_hours: int = Field(default=24, ge=1, le=24 * 30)
    # Lifetime of each refresh token (services.sessions): a session unused this long ends.
    refresh_token_days: int = Field(default=30, ge=1, le=365)

    allowed_origins: Annotated[list[str], NoDecode] = [
        "http://localhost:3000",
        "http://localhost:5173",
    ]
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=1, le=65535)

    first_admin_email: str | None = None
    first_admin_password: SecretStr | None = None

    # Admins without two-factor login reach only their profile, /auth/2fa/* and logout (403
    # 2fa_required elsewhere) until they turn it on.
    require_2fa_for_admins: bool = False
    # Key of the secrets kept encrypted in the database (TOTP secrets, core/encryption.py);
    # unset, a key generated once in data/encryption_key. Never derived from SECRET_KEY: a new
    # signing key must not make every stored secret unreadable.
    encryption_key: SecretStr | None = None

    login_max_failures: int = Field(default=5, ge=1)
    login_failure_window_minutes: int = Field(default=15, ge=1)
    # argon2 hashes at once per process (each takes 64 MiB and a core for a fraction of a
    # second); further logins and password changes wait for a slot, holding no connection.
    password_hashing_concurrency: int = Field(default=2, ge=1, le=64)
    # Peers (addresses or networks) whose X-Forwarded-For is believed: the reverse proxy only.
    # Also what uvicorn reads from the environment when started as `uvicorn main:app`.
    forwarded_allow_ips: Annotated[list[str], NoDecode] = ["127.0.0.1", "::1"]
    max_body_bytes: int = Field(default=1024 * 1024, ge=1024)
    # Spreadsheet exports running at once per process (each holds a connection and a snapshot
    # for its whole length); one more is answered 429 `export_busy`.
    export_concurrency: int = Field(default=2, ge=1, le=64)
    # The cap of POST /api/v1/imports instead of MAX_BODY_BYTES (the shipped nginx agrees).
    import_max_bytes: int = Field(default=20 * 1024 * 1024, ge=1024)

    log_format: Literal["text", "json"] = "text"
    # GET /metrics answers only to this bearer token; unset, it answers 404 like any unknown path.
    metrics_token: SecretStr | None = None
    # False hides /docs, /redoc and /openapi.json (404) where the API surface is not to be shown.
    docs_enabled: bool = True

    # Background jobs (worker/, docs/operations.md). `make run` also runs a worker inside the API
    # process; production sets RUN_WORKER=false on the API and runs `python -m worker` apart.
    run_worker: bool = True
    # At least 2: PgQueuer claims jobs in batches of half the concurrency.
    worker_concurrency: int = Field(default=4, ge=2, le=256)
    # A picked job whose worker stopped beating for this long is handed to another worker.
    job_heartbeat_timeout_seconds: float = Field(default=60.0, ge=1, le=3600)
    # On SIGTERM: running jobs get this long to finish, then go back to the queue.
    worker_shutdown_grace_seconds: float = Field(default=30.0, ge=0, le=3600)
    job_retention_days: int = Field(default=30, ge=1, le=3650)
    # A deleted record stays this long in the trash (restorable), then a nightly job destroys it.
    trash_retention_days: int = Field(default=30, ge=1, le=3650)
    # Audit entries older than this are purged nightly; French record-keeping asks for years,
    # and crm_audit_purge refuses less than a year (migration 0016).
    audit_retention_days: int = Field(default=3650, ge=365, le=36500)
    # Bench only (bench/audit.py measures the trail's cost against a run without it): off, no
    # change is recorded, which no deployment may allow.
    audit_enabled: bool = True
    # Notifications (services/notifications.py) older than this are purged nightly.
    notification_retention_days: int = Field(default=90, ge=1, le=3650)
    # An open notification stream sends a comment this often, and checks its user each time.
    notification_heartbeat_seconds: float = Field(default=15.0, gt=0, le=300)
    # A stream ends after this long (the client resumes with Last-Event-ID and a new ticket):
    # none outlives the proxy's read timeout, nor runs for ever on one check of its ticket.
    notification_stream_max_seconds: float = Field(default=3600.0, gt=0, le=86400)
    # Schedules are written in this zone's wall-clock time (cron expressions, DST included).
    timezone: str = "Europe/Paris"

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        secret_files = SecretFilesSource(settings_cls, env_settings, dotenv_settings)
        return init_settings, secret_files, env_settings, dotenv_settings, file_secret_settings

    # HMAC key of the backups; unset, a key generated once in data/backup_signing_key.
    backup_signing_key: SecretStr | None = None
    backup_encryption: Literal["none", "age"] = "none"
    # The age public key backups are encrypted to; its private key stays off the server.
    backup_age_recipient: str | None = None

    # Outgoing mail (core/email.py): `file` writes .eml files into EMAIL_OUTBOX_DIR, for
    # development; `smtp` hands them to SMTP_HOST.
    email_backend: Literal["file", "smtp"] = "file"
    email_outbox_dir: Path = DATA_DIR / "outbox"
    email_from: Email | None = None
    email_from_name: str | None = Field(default=None, max_length=100)
    smtp_host: str | None = None
    # Unset: 587 with starttls, 465 with ssl, 25 with none.
    smtp_port: int | None = Field(default=None, ge=1, le=65535)
    smtp_username: str | None = None
    smtp_password: SecretStr | None = None
    smtp_security: Literal["starttls", "ssl", "none"] = "starttls"
    smtp_timeout_seconds: float = Field(default=30, gt=0, le=600)
    # CA certificates that sign the server's certificate (an internal CA), instead of the system's.
    smtp_ca_file: Path | None = None

    # The page of the web client where a password reset is finished: the emailed link is this
    # URL with the reset token appended as the query parameter `token`.
    password_reset_url: str = "http://localhost:5173/password-reset"  # noqa: S105

    @model_validator(mode="before")
    @classmethod
    def _empty_is_unset(cls, values: object) -> object:
        # `KEY=` in a .env file (or an empty variable) means "not set": the default applies.
        if isinstance(values, dict):
            return {k: v for k, v in values.items() if not (isinstance(v, str) and not v.strip())}
        return values

    @field_validator("database_url", "migration_database_url")
    @classmethod
    def _normalise_database_url(cls, value: str | None) -> str | None:
        return None if value is None else to_async_url(value.strip())

    @field_validator("allowed_origins", mode="before")
    @classmethod
    def _split_origins(cls, value: object) -> object:
        if isinstance(value, str):
            return [origin.strip() for origin in value.split(",") if origin.strip()]
        return value

    @field_validator("allowed_origins")
    @classmethod
    def _no_wildcard_origin(cls, value: list[str]) -> list[str]:
        if "*" in value:
            raise ValueError("ALLOWED_ORIGINS must list origins explicitly, '*' is refused")
        return value

    @field_validator("forwarded_allow_ips", mode="before")
    @classmethod
    def _split_forwarded_allow_ips(cls, value: object) -> object:
        if isinstance(value, str):
            return [item.strip() for item in value.split(",") if item.strip()]
        return value

    @field_validator("forwarded_allow_ips")
    @classmethod
    def _proxy_addresses_only(cls, value: list[str]) -> list[str]:
        # With '*', the server believes the leftmost entry, which the client writes itself: a
        # new address for every guess, and the per-address login lock means nothing.
        if "*" in value:
            raise ValueError("FORWARDED_ALLOW_IPS must list the proxy's addresses, '*' is refused")
        for item in value:
            try:
                # Strict, as uvicorn reads it: 172.18.0.1/16 would pass here and match nothing
                # there, so every client would seem to come from the proxy.
                network = ipaddress.ip_network(item)
            except ValueError:
                raise ValueError(
                    f"FORWARDED_ALLOW_IPS: {item!r} is no address or network "
                    "(a network is written with its first address, e.g. 172.18.0.0/16)"
                ) from None
            if network.prefixlen == 0:
                raise ValueError(f"FORWARDED_ALLOW_IPS: {item!r} trusts every address, like '*'")
        return value

    @field_validator("timezone")
    @classmethod
    def _known_timezone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(
                f"TIMEZONE: {value!r} is no IANA time zone (e.g. Europe/Paris)"
            ) from None
        return value

    @field_validator("email_from_name")
    @classmethod
    def _display_name_needs_no_quoting(cls, value: str | None) -> str | None:
        return None if value is None else check_display_name(value.strip())

    @field_validator("password_reset_url")
    @classmethod
    def _web_page_url(cls, value: str) -> str:
        parsed = urlsplit(value.strip())
        if parsed.scheme not in ("http", "https") or not parsed.hostname or parsed.fragment:
            raise ValueError(
                "PASSWORD_RESET_URL must be an http(s) URL with a host and no #fragment"
            )
        return value.strip()

    @field_validator("jwt_algorithm")
    @classmethod
    def _hmac_algorithm_only(cls, value: str) -> str:
        if value not in {"HS256", "HS384", "HS512"}:
            raise ValueError("JWT_ALGORITHM must be one of HS256, HS384, HS512")
        return value

    @model_validator(mode="after")
    def _refuse_unsafe_production_key(self) -> "Settings":
        # Whatever DEBUG says: a debug instance reachable from a network is still forgeable.
        if self.secret_key is None:
            return self
        key = self.secret_key.get_secret_value()
        if key == EXAMPLE_SECRET_KEY:
            raise ValueError("SECRET_KEY is the example value; set a random key or unset it")
        if len(key.encode()) < MIN_SECRET_KEY_BYTES:
            raise ValueError(f"SECRET_KEY is shorter than {MIN_SECRET_KEY_BYTES} bytes")
        return self

    @model_validator(mode="after")
    def _encryption_key_long_enough(self) -> "Settings":
        key = self.encryption_key
        if key is not None and len(key.get_secret_value().encode()) < MIN_SECRET_KEY_BYTES:
            raise ValueError(f"ENCRYPTION_KEY is shorter than {MIN_SECRET_KEY_BYTES} bytes")
        return self

    @model_validator(mode="after")
    def _passwords_into_urls(self) -> "Settings":
        self.database_url = _with_password(
            "DATABASE_URL", self.database_url, "DATABASE_PASSWORD", self.database_password
        )
        self.migration_database_url = _with_password(
            "MIGRATION_DATABASE_URL",
            self.migration_database_url,
            "MIGRATION_DATABASE_PASSWORD",
            self.migration_database_password,
        )
        return self

    @model_validator(mode="after")
    def _backup_settings_fit(self) -> "Settings":
        key = self.backup_signing_key
        if key is not None and len(key.get_secret_value().encode()) < MIN_SECRET_KEY_BYTES:
            raise ValueError(f"BACKUP_SIGNING_KEY is shorter than {MIN_SECRET_KEY_BYTES} bytes")
        if self.backup_encryption == "age" and not self.backup_age_recipient:
            raise ValueError("BACKUP_ENCRYPTION=age needs BACKUP_AGE_RECIPIENT (an age1... key)")
        return self

    @model_validator(mode="after")
    def _email_settings_fit(self) -> "Settings":
        if self.email_backend == "smtp" and not self.smtp_host:
            raise ValueError("EMAIL_BACKEND=smtp needs SMTP_HOST, the server to send through")
        if self.email_backend == "smtp" and not self.email_from:
            raise ValueError("EMAIL_BACKEND=smtp needs EMAIL_FROM, the sender address")
        if (self.smtp_username is None) != (self.smtp_password is None):
            raise ValueError("SMTP_USERNAME and SMTP_PASSWORD go together; set both or neither")
        if self.smtp_password is not None and self.smtp_security == "none":
            raise ValueError("SMTP_SECURITY=none would send SMTP_PASSWORD in clear (use starttls)")
        if self.smtp_ca_file is not None and not self.smtp_ca_file.is_file():
            raise ValueError(f"SMTP_CA_FILE: {self.smtp_ca_file} is not a file")
        return self

    def signing_key(self) -> str:
        """The JWT key: SECRET_KEY, or a random key generated once and kept in data/secret_key."""
        if self.secret_key is None:
            self.secret_key = SecretStr(load_or_create_secret_key(DATA_DIR / "secret_key"))
        return self.secret_key.get_secret_value()

    def encryption_key_material(self) -> str:
        """The key of the secrets encrypted at rest: ENCRYPTION_KEY, or a random key generated
        once and kept in data/encryption_key."""
        if self.encryption_key is None:
            self.encryption_key = SecretStr(load_or_create_secret_key(DATA_DIR / "encryption_key"))
        return self.encryption_key.get_secret_value()


def _with_password(
    url_name: str, url: str | None, password_name: str, password: SecretStr | None
) -> str | None:
    """`url` with `password` in it, when the password is given apart (say, from a file)."""
    if password is None:
        return url
    if url is None:
        raise ValueError(f"{password_name} is set but {url_name} is not")
    parsed = make_url(url)
    if parsed.password is not None:
        raise ValueError(f"{url_name} already holds a password; set it in one place")
    # Quoted by SQLAlchemy: any character is fine, unlike a password typed into the URL.
    return parsed.set(password=password.get_secret_value()).render_as_string(hide_password=False)


def load_or_create_secret_key(path: Path) -> str:
    """The key kept in `path`, created (random, 256 bits, mode 600) on first use."""
    if path.exists():
        key = path.read_text().strip()
        if len(key.encode()) < MIN_SECRET_KEY_BYTES:
            # An empty key (say, a disk filled up mid-write) would sign forgeable tokens.
            raise SystemExit(
                f"Invalid configuration: {path} holds a key shorter than "
                f"{MIN_SECRET_KEY_BYTES} bytes; delete it to generate a new one"
            )
        return key
    path.parent.mkdir(parents=True, exist_ok=True)
    key = secrets.token_urlsafe(32)  # 256 bits
    # Create with mode 600 from the start so the key is never world-readable, even briefly.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(key + "\n")
    return key


def load_settings() -> Settings:
    """Read the settings, turning a validation failure into one clear line and exit code 1."""
    try:
        return Settings()
    except SecretFileError as exc:
        raise SystemExit(f"Invalid configuration: {exc}") from None
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(part) for part in err['loc']) or 'settings'}: {err['msg']}"
            for err in exc.errors()
        )
        raise SystemExit(f"Invalid configuration: {problems}") from None


settings = load_settings()
