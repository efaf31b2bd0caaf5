"""Settings: safe production keys, URL and origin parsing, empty values, the generated key file."""

import re
import stat
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError
from sqlalchemy.engine import make_url

import core.config
from core.config import (
    EXAMPLE_SECRET_KEY,
    MAX_SECRET_FILE_BYTES,
    SECRET_FILE_SUFFIX,
    Settings,
    is_secret_field,
    load_or_create_secret_key,
    load_settings,
    to_async_url,
)

GOOD_KEY = "k" * 32
SECRET_SETTINGS = [name for name, field in Settings.model_fields.items() if is_secret_field(field)]
SETTING_VARIABLES = [name.upper() for name in Settings.model_fields] + [
    name.upper() + SECRET_FILE_SUFFIX for name in SECRET_SETTINGS
]


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No variable from the test run and no stray .env file leaks into these settings."""
    for name in SETTING_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)


def make(**values: Any) -> Settings:
    return Settings(_env_file=None, **values)


# --- defaults -------------------------------------------------------------------------------


def test_defaults() -> None:
    settings = make()
    assert settings.database_url is None
    assert settings.database_echo is False
    assert settings.debug is False
    assert settings.secret_key is None
    assert settings.jwt_algorithm == "HS256"
    assert settings.jwt_expiration_hours == 24
    assert settings.allowed_origins == ["http://localhost:3000", "http://localhost:5173"]
    assert (settings.host, settings.port) == ("127.0.0.1", 8000)
    assert settings.first_admin_email is None
    assert settings.first_admin_password is None
    assert (settings.login_max_failures, settings.login_failure_window_minutes) == (5, 15)
    assert settings.max_body_bytes == 1024 * 1024
    assert (settings.log_format, settings.metrics_token) == ("text", None)
    assert (settings.database_password, settings.docs_enabled) == (None, True)


def test_every_setting_is_documented_in_env_example() -> None:
    example = (core.config.PROJECT_ROOT / ".env.example").read_text()
    documented = {
        line.split("=", 1)[0]
        for line in example.splitlines()
        if line and not line.startswith("#") and "=" in line
    }
    # Beside the API's settings, .env also feeds Docker Compose and the backup script.
    deployment_only = {"POSTGRES_USER", "POSTGRES_DB", "BACKUP_KEEP"}
    assert documented - deployment_only == {name.upper() for name in Settings.model_fields}


# --- secret key safety ----------------------------------------------------------------------


@pytest.mark.parametrize("debug", [False, True])
@pytest.mark.parametrize("key", [EXAMPLE_SECRET_KEY, "short", "k", "k" * 31, "é" * 15])
def test_an_unsafe_secret_key_is_refused_whatever_debug_says(debug: bool, key: str) -> None:
    with pytest.raises(ValidationError, match="SECRET_KEY"):
        make(debug=debug, secret_key=key)


def test_production_accepts_a_key_of_32_bytes() -> None:
    assert make(debug=False, secret_key=GOOD_KEY).signing_key() == GOOD_KEY
    # 16 two-byte characters: the length rule counts bytes.
    assert make(debug=False, secret_key="é" * 16).signing_key() == "é" * 16


@pytest.mark.parametrize(
    ("environment", "expected"),
    [
        ({"SECRET_KEY": EXAMPLE_SECRET_KEY}, "SECRET_KEY is the example value"),
        ({"SECRET_KEY": "short"}, "SECRET_KEY is shorter than 32 bytes"),
        ({"ALLOWED_ORIGINS": "*"}, "allowed_origins"),
        ({"JWT_ALGORITHM": "none"}, "jwt_algorithm"),
        ({"DATABASE_URL": "mysql://u@h/db"}, "database_url"),
        ({"PORT": "eighty"}, "port"),
    ],
)
def test_load_settings_exits_with_one_line(
    monkeypatch: pytest.MonkeyPatch, environment: dict[str, str], expected: str
) -> None:
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(SystemExit) as exc_info:
        load_settings()
    message = str(exc_info.value.code)
    assert message.startswith("Invalid configuration: ")
    assert expected in message
    assert "\n" not in message


def test_load_settings_exit_lists_every_problem_on_one_line(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("PORT", "0")
    monkeypatch.setenv("JWT_EXPIRATION_HOURS", "0")
    with pytest.raises(SystemExit) as exc_info:
        load_settings()
    message = str(exc_info.value.code)
    assert "port" in message
    assert "jwt_expiration_hours" in message
    assert "\n" not in message


def test_load_settings_reads_a_dot_env_file(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text(f"SECRET_KEY={GOOD_KEY}\nPORT=9000\nDEBUG=false\n")
    settings = load_settings()
    assert settings.signing_key() == GOOD_KEY
    assert settings.port == 9000


@pytest.mark.parametrize("debug", ["false", "true"])
def test_dot_env_with_the_example_key_refuses_to_start(tmp_path: Path, debug: str) -> None:
    # .env.example copied as it is, DEBUG=true included: the example key still stops the start.
    (tmp_path / ".env").write_text(f"DEBUG={debug}\nSECRET_KEY={EXAMPLE_SECRET_KEY}\n")
    with pytest.raises(SystemExit, match="example value"):
        load_settings()


# --- parsing --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("postgresql://u:p@db:5432/crm", "postgresql+asyncpg://u:p@db:5432/crm"),
        ("postgres://u:p@db/crm", "postgresql+asyncpg://u:p@db/crm"),
        ("postgresql+asyncpg://u@/crm?host=/tmp", "postgresql+asyncpg://u@/crm?host=/tmp"),
        ("  postgresql://u@db/crm  ", "postgresql+asyncpg://u@db/crm"),
    ],
)
def test_database_url_is_pointed_at_asyncpg(url: str, expected: str) -> None:
    assert make(database_url=url).database_url == expected


@pytest.mark.parametrize("url", ["mysql://u@h/db", "sqlite:///crm.db", "db:5432"])
def test_other_database_urls_are_refused(url: str) -> None:
    with pytest.raises(ValidationError, match="DATABASE_URL"):
        make(database_url=url)
    with pytest.raises(ValueError, match="postgresql"):
        to_async_url(url)


def test_allowed_origins_from_a_comma_separated_variable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("ALLOWED_ORIGINS", " https://crm.tpm.fr , http://localhost:5173,, ")
    assert make().allowed_origins == ["https://crm.tpm.fr", "http://localhost:5173"]


@pytest.mark.parametrize("origins", ["*", "https://crm.tpm.fr,*", " * "])
def test_wildcard_origin_is_refused(monkeypatch: pytest.MonkeyPatch, origins: str) -> None:
    monkeypatch.setenv("ALLOWED_ORIGINS", origins)
    with pytest.raises(ValidationError, match="'\\*' is refused"):
        make()


@pytest.mark.parametrize("algorithm", ["HS384", "HS512"])
def test_other_hmac_algorithms_are_accepted(algorithm: str) -> None:
    assert make(jwt_algorithm=algorithm).jwt_algorithm == algorithm


@pytest.mark.parametrize("algorithm", ["none", "RS256", "hs256", "HS1024"])
def test_non_hmac_algorithms_are_refused(algorithm: str) -> None:
    with pytest.raises(ValidationError, match="JWT_ALGORITHM"):
        make(jwt_algorithm=algorithm)


def test_values_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DEBUG", "true")
    monkeypatch.setenv("DATABASE_ECHO", "1")
    monkeypatch.setenv("JWT_EXPIRATION_HOURS", "8")
    monkeypatch.setenv("FIRST_ADMIN_EMAIL", "boss@tpm.fr")
    monkeypatch.setenv("FIRST_ADMIN_PASSWORD", "boss-password")
    settings = make()
    assert (settings.debug, settings.database_echo, settings.jwt_expiration_hours) == (
        True,
        True,
        8,
    )
    assert settings.first_admin_email == "boss@tpm.fr"
    assert settings.first_admin_password is not None
    assert settings.first_admin_password.get_secret_value() == "boss-password"


@pytest.mark.parametrize("name", SETTING_VARIABLES)
@pytest.mark.parametrize("value", ["", "   "])
def test_empty_variables_mean_unset(monkeypatch: pytest.MonkeyPatch, name: str, value: str) -> None:
    defaults = make()
    monkeypatch.setenv(name, value)
    assert make() == defaults


def test_empty_values_in_dot_env_mean_unset(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text(
        "DATABASE_URL=\nSECRET_KEY=\nFIRST_ADMIN_PASSWORD=\nPORT=\nJWT_ALGORITHM=\nDEBUG=\n"
    )
    settings = load_settings()
    assert settings.database_url is None
    assert settings.secret_key is None
    assert settings.first_admin_password is None
    assert (settings.port, settings.jwt_algorithm, settings.debug) == (8000, "HS256", False)


# --- the generated key file -----------------------------------------------------------------


def test_key_file_is_created_with_mode_600_and_reused(tmp_path: Path) -> None:
    path = tmp_path / "nested" / "secret_key"
    key = load_or_create_secret_key(path)
    assert len(key.encode()) >= 32
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_or_create_secret_key(path) == key
    assert path.read_text().strip() == key


def test_each_new_key_file_gets_a_different_key(tmp_path: Path) -> None:
    assert load_or_create_secret_key(tmp_path / "a") != load_or_create_secret_key(tmp_path / "b")


def test_signing_key_without_secret_key_uses_the_data_directory(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(core.config, "DATA_DIR", tmp_path / "data")
    first = make(secret_key=None).signing_key()
    assert stat.S_IMODE((tmp_path / "data" / "secret_key").stat().st_mode) == 0o600
    # A restart (new Settings) signs with the same key, so issued tokens stay valid.
    assert make(secret_key=None).signing_key() == first


def test_an_explicit_secret_key_creates_no_file(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(core.config, "DATA_DIR", tmp_path / "data")
    assert make(secret_key=GOOD_KEY).signing_key() == GOOD_KEY
    assert not (tmp_path / "data").exists()


@pytest.mark.parametrize("content", ["", "\n", "short\n"])
def test_an_empty_or_short_key_file_is_refused(tmp_path: Path, content: str) -> None:
    path = tmp_path / "secret_key"
    path.write_text(content)
    with pytest.raises(SystemExit, match="secret_key"):
        load_or_create_secret_key(path)


# --- secrets from files (<NAME>_FILE) -------------------------------------------------------

# Fits any secret: 44 URL-safe characters, 32 bytes once decoded (an HMAC or a Fernet key).
SECRET_VALUE = "a3-Zl5Gq0vQe9sTn7yXc1uB4hJ2kW8mR6pD0fL3oN5i="


def test_the_known_secrets_are_secret_settings() -> None:
    # What the walk below covers: a secret typed `str` would escape it, and print in full.
    assert {"secret_key", "first_admin_password", "metrics_token", "database_password"} <= set(
        SECRET_SETTINGS
    )
    # Settings about secrets, not secrets themselves.
    not_secrets = {"password_hashing_concurrency", "refresh_token_days", "password_reset_url"}
    for name in Settings.model_fields.keys() - not_secrets:
        if re.search(r"password|secret|token|_key$", name):
            assert name in SECRET_SETTINGS, f"{name} looks like a secret but is not a SecretStr"


@pytest.mark.parametrize("name", SECRET_SETTINGS)
def test_every_secret_setting_can_be_read_from_its_file(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, name: str
) -> None:
    path = tmp_path / f"{name}.secret"
    path.write_text(SECRET_VALUE + "\n")
    monkeypatch.setenv(name.upper() + SECRET_FILE_SUFFIX, str(path))
    # The database passwords go with a URL; the others ignore them.
    monkeypatch.setenv("DATABASE_URL", "postgresql://crm@db/crm")
    monkeypatch.setenv("MIGRATION_DATABASE_URL", "postgresql://crm_owner@db/crm")
    if name == "smtp_password":
        monkeypatch.setenv("SMTP_USERNAME", "crm")  # a password without a username is refused
    value = getattr(make(), name)
    assert value is not None
    assert value.get_secret_value() == SECRET_VALUE


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ("s3cret-value", "s3cret-value"),
        ("s3cret-value\n", "s3cret-value"),
        ("s3cret-value\r\n", "s3cret-value"),
        # One newline, the one editors and `echo` add: the rest belongs to the secret.
        ("s3cret-value\n\n", "s3cret-value\n"),
        (" s3cret value ", " s3cret value "),
    ],
)
def test_a_secret_file_loses_one_trailing_newline(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, content: str, expected: str
) -> None:
    path = tmp_path / "token"
    path.write_bytes(content.encode())
    monkeypatch.setenv("METRICS_TOKEN_FILE", str(path))
    token = make().metrics_token
    assert token is not None and token.get_secret_value() == expected


def test_a_secret_file_named_in_dot_env_is_read(tmp_path: Path) -> None:
    (tmp_path / "key").write_text(GOOD_KEY + "\n")
    (tmp_path / ".env").write_text(f"SECRET_KEY_FILE={tmp_path / 'key'}\n")
    assert load_settings().signing_key() == GOOD_KEY


def secret_file_error(monkeypatch: pytest.MonkeyPatch, **variables: str) -> str:
    for variable, value in variables.items():
        monkeypatch.setenv(variable, value)
    with pytest.raises(SystemExit) as exc_info:
        load_settings()
    message = str(exc_info.value.code)
    assert message.startswith("Invalid configuration: ")
    assert "\n" not in message
    return message


def test_a_missing_secret_file_is_a_configuration_error(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    missing = tmp_path / "no-such-file"
    message = secret_file_error(monkeypatch, SECRET_KEY_FILE=str(missing))
    assert f"SECRET_KEY_FILE: cannot read {missing}" in message


def test_a_directory_is_not_a_secret_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    message = secret_file_error(monkeypatch, SECRET_KEY_FILE=str(tmp_path))
    assert "SECRET_KEY_FILE: cannot read" in message


@pytest.mark.parametrize("content", [b"", b"\n", b"   \n"])
def test_an_empty_secret_file_is_a_configuration_error(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, content: bytes
) -> None:
    # Not "unset": that would silently fall back to a generated key or password.
    (tmp_path / "empty").write_bytes(content)
    message = secret_file_error(monkeypatch, FIRST_ADMIN_PASSWORD_FILE=str(tmp_path / "empty"))
    assert "FIRST_ADMIN_PASSWORD_FILE" in message and "is empty" in message


def test_an_oversized_or_binary_secret_file_is_refused(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    (tmp_path / "big").write_bytes(b"k" * (MAX_SECRET_FILE_BYTES + 1))
    assert "larger than" in secret_file_error(monkeypatch, SECRET_KEY_FILE=str(tmp_path / "big"))
    (tmp_path / "binary").write_bytes(b"\xff" * 40)
    assert "not UTF-8" in secret_file_error(monkeypatch, SECRET_KEY_FILE=str(tmp_path / "binary"))


def test_a_secret_set_both_directly_and_from_a_file_is_refused(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    (tmp_path / "key").write_text(GOOD_KEY)
    message = secret_file_error(
        monkeypatch, SECRET_KEY=GOOD_KEY, SECRET_KEY_FILE=str(tmp_path / "key")
    )
    assert "SECRET_KEY and SECRET_KEY_FILE are both set" in message


def test_a_secret_in_dot_env_beside_its_file_in_the_environment_is_refused(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # The Compose case: SECRET_KEY_FILE from docker-compose.yml, an old SECRET_KEY left in .env.
    (tmp_path / "key").write_text(GOOD_KEY)
    (tmp_path / ".env").write_text(f"SECRET_KEY={GOOD_KEY}\n")
    message = secret_file_error(monkeypatch, SECRET_KEY_FILE=str(tmp_path / "key"))
    assert "are both set" in message


def test_the_secret_file_rules_hold_the_key_rules_too(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    (tmp_path / "key").write_text(EXAMPLE_SECRET_KEY + "\n")
    message = secret_file_error(monkeypatch, SECRET_KEY_FILE=str(tmp_path / "key"))
    assert "SECRET_KEY is the example value" in message


# --- the database password ------------------------------------------------------------------


def test_the_database_password_goes_into_the_url_quoted(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    (tmp_path / "pg").write_text("p@ss:w/rd?#%\n")
    monkeypatch.setenv("DATABASE_URL", "postgresql://crm@postgres:5432/crm")
    monkeypatch.setenv("DATABASE_PASSWORD_FILE", str(tmp_path / "pg"))
    url = make().database_url
    assert url == "postgresql+asyncpg://crm:p%40ss%3Aw%2Frd%3F%23%25@postgres:5432/crm"
    assert make_url(url).password == "p@ss:w/rd?#%"


def test_a_database_password_beside_a_url_that_has_one_is_refused() -> None:
    with pytest.raises(ValidationError, match="already holds a password"):
        make(database_url="postgresql://crm:old@db/crm", database_password="new")


def test_a_database_password_without_a_url_is_refused() -> None:
    with pytest.raises(ValidationError, match="DATABASE_PASSWORD is set but DATABASE_URL"):
        make(database_password="lonely")


def test_docs_enabled_can_be_turned_off(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DOCS_ENABLED", "false")
    assert make().docs_enabled is False
