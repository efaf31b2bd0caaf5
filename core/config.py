"""Application settings, read from the environment and an optional `.env` file."""

import os
import secrets
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

PROJECT_ROOT = Path(__file__).resolve().parent.parent
DATA_DIR = PROJECT_ROOT / "data"

# The placeholder shipped in .env.example: never acceptable outside debug mode.
EXAMPLE_SECRET_KEY = "change-me-to-a-long-random-string-of-at-least-32-bytes"  # noqa: S105
MIN_SECRET_KEY_BYTES = 32

JWT_ISSUER = "tpm-finance-crm"
JWT_AUDIENCE = "tpm-finance-crm-api"


def to_async_url(url: str) -> str:
    """Accept the URL forms Compose and most tools write and point them at asyncpg."""
    for prefix in ("postgresql+asyncpg://", "postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+asyncpg://" + url[len(prefix) :]
    raise ValueError("DATABASE_URL must start with postgresql:// or postgresql+asyncpg://")


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_file=".env", env_file_encoding="utf-8", extra="ignore")

    database_url: str | None = None
    # The owner role's URL, for migrations and restore.sh; unset, DATABASE_URL's role is used.
    migration_database_url: str | None = None
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

    allowed_origins: Annotated[list[str], NoDecode] = [
        "http://localhost:3000",
        "http://localhost:5173",
    ]
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=1, le=65535)

    first_admin_email: str | None = None
    first_admin_password: SecretStr | None = None

    login_max_failures: int = Field(default=5, ge=1)
    login_failure_window_minutes: int = Field(default=15, ge=1)
    max_body_bytes: int = Field(default=1024 * 1024, ge=1024)

    log_format: Literal["text", "json"] = "text"
    # GET /metrics answers only to this bearer token; unset, it answers 404 like any unknown path.
    metrics_token: SecretStr | None = None

    # HMAC key of the backups; unset, a key generated once in data/backup_signing_key.
    backup_signing_key: SecretStr | None = None
    backup_encryption: Literal["none", "age"] = "none"
    # The age public key backups are encrypted to; its private key stays off the server.
    backup_age_recipient: str | None = None

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

    @field_validator("jwt_algorithm")
    @classmethod
    def _hmac_algorithm_only(cls, value: str) -> str:
        if value not in {"HS256", "HS384", "HS512"}:
            raise ValueError("JWT_ALGORITHM must be one of HS256, HS384, HS512")
        return value

    @model_validator(mode="after")
    def _refuse_unsafe_production_key(self) -> "Settings":
        if self.debug or self.secret_key is None:
            return self
        key = self.secret_key.get_secret_value()
        if key == EXAMPLE_SECRET_KEY:
            raise ValueError("SECRET_KEY is the example value; set a random key or unset it")
        if len(key.encode()) < MIN_SECRET_KEY_BYTES:
            raise ValueError(f"SECRET_KEY is shorter than {MIN_SECRET_KEY_BYTES} bytes")
        return self

    @model_validator(mode="after")
    def _backup_settings_fit(self) -> "Settings":
        key = self.backup_signing_key
        if key is not None and len(key.get_secret_value().encode()) < MIN_SECRET_KEY_BYTES:
            raise ValueError(f"BACKUP_SIGNING_KEY is shorter than {MIN_SECRET_KEY_BYTES} bytes")
        if self.backup_encryption == "age" and not self.backup_age_recipient:
            raise ValueError("BACKUP_ENCRYPTION=age needs BACKUP_AGE_RECIPIENT (an age1... key)")
        return self

    def signing_key(self) -> str:
        """The JWT key: SECRET_KEY, or a random key generated once and kept in data/secret_key."""
        if self.secret_key is None:
            self.secret_key = SecretStr(load_or_create_secret_key(DATA_DIR / "secret_key"))
        return self.secret_key.get_secret_value()


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
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(part) for part in err['loc']) or 'settings'}: {err['msg']}"
            for err in exc.errors()
        )
        raise SystemExit(f"Invalid configuration: {problems}") from None


settings = load_settings()
