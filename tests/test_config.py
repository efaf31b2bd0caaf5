"""Settings: safe production keys, URL and origin parsing, empty values, the generated key file."""

import stat
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

import core.config
from core.config import (
    EXAMPLE_SECRET_KEY,
    Settings,
    load_or_create_secret_key,
    load_settings,
    to_async_url,
)

GOOD_KEY = "k" * 32
SETTING_VARIABLES = [
    "DATABASE_URL",
    "DATABASE_ECHO",
    "DEBUG",
    "SECRET_KEY",
    "JWT_ALGORITHM",
    "JWT_EXPIRATION_HOURS",
    "ALLOWED_ORIGINS",
    "HOST",
    "PORT",
    "FIRST_ADMIN_EMAIL",
    "FIRST_ADMIN_PASSWORD",
    "LOGIN_MAX_FAILURES",
    "LOGIN_FAILURE_WINDOW_MINUTES",
    "MAX_BODY_BYTES",
    "LOG_FORMAT",
    "METRICS_TOKEN",
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


def test_every_setting_is_documented_in_env_example() -> None:
    example = (core.config.PROJECT_ROOT / ".env.example").read_text()
    documented = {
        line.split("=", 1)[0]
        for line in example.splitlines()
        if line and not line.startswith("#") and "=" in line
    }
    # Beside the API's settings, .env also feeds Docker Compose and the backup script.
    deployment_only = {
        *("POSTGRES_USER", "POSTGRES_PASSWORD", "POSTGRES_DB", "BACKUP_KEEP"),
        *("CRM_OWNER_PASSWORD", "CRM_APP_PASSWORD"),
    }
    assert documented - deployment_only == {name.upper() for name in Settings.model_fields}


# --- secret key safety ----------------------------------------------------------------------


@pytest.mark.parametrize("key", [EXAMPLE_SECRET_KEY, "short", "k" * 31, "é" * 15])
def test_production_refuses_an_unsafe_secret_key(key: str) -> None:
    with pytest.raises(ValidationError, match="SECRET_KEY"):
        make(debug=False, secret_key=key)


@pytest.mark.parametrize("key", [EXAMPLE_SECRET_KEY, "short"])
def test_debug_accepts_any_secret_key(key: str) -> None:
    assert make(debug=True, secret_key=key).signing_key() == key


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


def test_dot_env_with_the_example_key_refuses_to_start(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text(f"DEBUG=false\nSECRET_KEY={EXAMPLE_SECRET_KEY}\n")
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
